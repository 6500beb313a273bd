"""Where a command's runs execute: this machine (`local`: in process or a process pool), a Ray
cluster (`ray`), a SLURM queue through submitit (`slurm`), or submitit's local executor
(`submitit-local`). Every engine runs the same pure function of (spec, seed), `runner.execute`,
into the shared output directory, so the records are the same whichever engine ran them, and a
stopped command resumes: done runs are skipped, the others continue from their checkpoints."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from maml_bench.engines.options import ENGINE_NAMES, EngineOptions, require_module
from maml_bench.errors import UserError

if TYPE_CHECKING:  # the runner imports torch: not needed for `--help` or option checks
    from maml_bench.run_spec import RunSpec

__all__ = ["ENGINE_NAMES", "EngineOptions", "check_options", "run_with_engine"]

#: options that only some engines read: using one with another engine is a mistake
ENGINE_ONLY = {"address": ("ray",), "partition": ("slurm",), "mem_gb": ("slurm",),
               "logs": ("slurm", "submitit-local"), "time_min": ("slurm", "submitit-local"),
               "retries": ("ray", "slurm", "submitit-local"),
               "cpus_per_run": ("ray", "slurm", "submitit-local"),
               "gpus_per_run": ("ray", "slurm", "submitit-local")}


def check_options(options: EngineOptions, given: set[str]) -> None:
    """Refuse an option the chosen engine would ignore, and a missing engine library, before
    any work starts."""
    for name in sorted(given):
        engines = ENGINE_ONLY.get(name)
        if engines and options.engine not in engines:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} is an option of --engine {' or '.join(engines)}, not of "
                            f"--engine {options.engine}")
    if options.engine == "ray":
        require_module("ray", "ray")
    elif options.engine in ("slurm", "submitit-local"):
        require_module("submitit", "submitit")
    if options.engine == "slurm":
        missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
        if missing:  # submitit submits with sbatch, needs srun, and watches jobs with sacct
            raise UserError(f"--engine slurm needs SLURM's {', '.join(missing)} on PATH (run "
                            "the command on the cluster's login node); --engine "
                            "submitit-local runs the same jobs here")
    if options.engine in ("slurm", "submitit-local") and options.gpus_per_run % 1:
        raise UserError(f"--gpus-per-run {options.gpus_per_run:g}: SLURM and submitit give "
                        "whole GPUs; fractions are a Ray option")


def run_with_engine(runs: list[RunSpec], options: EngineOptions, out: Path) -> list[Path]:
    """Execute every run not done yet on the chosen engine; raises UserError naming the failed
    runs (the others' records are written, and rerunning the command retries only those)."""
    from maml_bench.engines.summary import Summary
    from maml_bench.executors import run_all, warn_nonfinite
    from maml_bench.runner import is_done

    if options.engine == "local":
        return run_all(runs, jobs=options.jobs or 1)
    # absolute: workers elsewhere (other nodes, other working directories) write the same files
    todo = [replace(run, out=run.out.absolute()) for run in runs if not is_done(run)]
    if not todo:
        warn_nonfinite(runs)
        return [run.directory for run in runs]
    summary = Summary(todo, options.engine)
    summary.show(force=True)
    if options.engine == "ray":
        from maml_bench.engines.ray_engine import run_on_ray

        run_on_ray(todo, options, summary)
    else:
        from maml_bench.engines.slurm import run_on_submitit

        logs = (options.logs or out / "logs" / options.engine).absolute()
        run_on_submitit(todo, options, summary, logs)
    summary.show()  # the final counts, unless the last line already said them
    warn_nonfinite(runs)
    failed = summary.failures()
    if failed:
        first, reason = next(iter(failed.items()))
        raise UserError(f"{len(failed)} of {len(todo)} runs failed (first: {first}: {reason}); "
                        "the others' records are written; fix it and run the same command "
                        "again: finished runs are skipped")
    return [run.directory for run in runs]

