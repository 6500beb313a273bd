"""Engine options, each with its declared valid domain (checked before any work, like --set)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from maml_bench.domains import Number, OneOf
from maml_bench.errors import UserError, install_command

ENGINE_NAMES = ("local", "ray", "slurm", "submitit-local")
ENGINE = OneOf(ENGINE_NAMES)
CPUS_PER_RUN = Number(int, 1, 1_024)
GPUS_PER_RUN = Number(float, 0.0, 64.0)  # fractions: Ray only (checked with the engine)
RETRIES = Number(int, 0, 100)
TIME_MIN = Number(int, 1, 525_600)
MEM_GB = Number(float, 0.001, 65_536.0)  # SLURM counts MB: under 1 MB would be --mem=0, all


@dataclass(frozen=True)
class EngineOptions:
    engine: str = "local"
    #: runs at once: the local pool's processes, the local Ray cluster's CPUs / cpus_per_run,
    #: SLURM's array parallelism; None: the engine's own (1 locally, all of a cluster)
    jobs: int | None = None
    address: str | None = None  # Ray cluster (`auto`, `ray://host:10001`); None: start one
    #: also the run's torch threads, and its task threads under task_threads=auto: the count
    #: a local run has (1 under --jobs N on N CPUs) gives bitwise its records; another count
    #: may reorder float sums (numbers equal within rounding)
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    retries: int = 3  # a run's restarts after a lost worker or killed job
    partition: str | None = None
    time_min: int = 24 * 60  # a job's wall-clock limit; a run past it requeues and resumes
    mem_gb: float | None = None
    logs: Path | None = None  # per-run job logs (SLURM, submitit-local)


def require_module(name: str, extra: str) -> ModuleType:
    """The engine's library, or one line saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"--engine needs the {name} package: {install_command('cluster')} "
                        f"(or pip install {extra})") from None
