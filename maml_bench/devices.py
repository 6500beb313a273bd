"""Where a run trains: `maml-bench run --device auto|cpu|cuda|cuda:N`, its refusals, and the
benchmark view that puts a run's data on its device.

* cpu is the default: CPU numbers are bitwise reproducible (the committed runs and baselines
  are CPU numbers) and the paper's small networks gain little from a GPU. auto is CUDA where
  the run's process sees a GPU. `--gpus-per-run N` (Ray, SLURM) without --device means cuda:
  the run uses the GPU its engine assigned (CUDA_VISIBLE_DEVICES); with --device cpu it is
  refused, as is cuda on a cluster engine that reserves no GPU for the run.
* A benchmark or algorithm with a `cpu_only` reason (RL: its sampler steps gymnasium on the
  CPU) runs on the CPU under auto; an explicit cuda for it is refused with that reason.
* Everything random is still drawn on the CPU (the run's generator is a CPU generator), so a
  seed gives the same tasks on every device; `OnDevice` moves the drawn batches and the
  seeded model to the device. Records and checkpoints are written from CPU tensors, and the
  device is not part of the config hash: a run resumes on another device and continues.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.tasks.base import SupervisedBenchmark

if TYPE_CHECKING:
    from maml_bench.engines.options import EngineOptions
    from maml_bench.run_spec import RunSpec

DEFAULT = "cpu"
#: engines whose runs see only the GPUs the engine reserves for them (--gpus-per-run)
RESERVING_ENGINES = ("ray", "slurm", "submitit-local")


def command_device(device: str | None, options: EngineOptions, launched: bool = False) -> str:
    """The device every run of a command asks for, from --device (None: not given) and the
    engine options; contradictions are refused before any work."""
    gpus = options.gpus_per_run
    if gpus and device == "cpu":
        raise UserError(f"--device cpu with --gpus-per-run {gpus:g}: the runs would leave the "
                        "GPUs reserved for them idle; leave out --gpus-per-run, or use --device "
                        "cuda")
    if gpus and device is not None and device.startswith("cuda:"):
        raise UserError(f"--device {device} with --gpus-per-run: the engine gives each run its "
                        "own GPU, seen as cuda; use --device cuda (or leave it out)")
    if launched and device is not None and device.startswith("cuda:"):
        raise UserError(f"--device {device} under torchrun: each process takes cuda:LOCAL_RANK;"
                        " use --device cuda")
    if gpus:
        return device or "cuda"
    device = device or DEFAULT
    if options.engine in RESERVING_ENGINES and device != "cpu":
        if device == "auto":
            return "cpu"  # no GPU reserved: none is the run's to take
        raise UserError(f"--device {device} with --engine {options.engine}: a run sees only the "
                        "GPUs the engine reserves for it; add --gpus-per-run 1")
    return device


def cpu_only(run: RunSpec) -> str | None:
    """Why the run's benchmark or algorithm trains on the CPU only, or None."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.tasks import BENCHMARKS

    benchmark = BENCHMARKS.get(EXPERIMENTS.get(run.experiment).benchmark)
    return (getattr(benchmark, "cpu_only", None)
            or getattr(ALGORITHMS.get(run.method), "cpu_only", None))


def assign(runs: list[RunSpec], device: str, gpus_per_run: float = 0.0) -> list[RunSpec]:
    """The runs with their device: `device`, or cpu under auto for a CPU-only run; a CPU-only
    run asked onto a GPU (explicitly, or by --gpus-per-run) is refused with the reason."""
    out = []
    for run in runs:
        reason = cpu_only(run) if device != "cpu" else None
        if reason is not None and (gpus_per_run or device != "auto"):
            fix = ("leave out --gpus-per-run" if gpus_per_run else
                   "use --device cpu, or auto (which runs it on the CPU)")
            raise UserError(f"{run.method} on {run.experiment} trains on the CPU only ({reason});"
                            f" {fix}")
        out.append(replace(run, device="cpu" if reason is not None else device))
    return out


def check_here(device: str) -> None:
    """Refuse a CUDA device this process cannot use, with the fix, in one line."""
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: torch {torch.__version__} sees no CUDA device here "
                        "(no GPU, driver or CUDA build of torch); use --device cpu, or auto to "
                        "take a GPU only where there is one")
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise UserError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                        f"cuda:{count - 1}; choose one of them")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > count:
        raise UserError(f"--device {device} under torchrun: {local} processes on this node but "
                        f"{count} CUDA device(s); --nproc-per-node {count}, or --device cpu")


def here(device: str) -> str:
    """`device` for runs in this process's machine: auto made concrete, CUDA checked."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        device = "cuda"  # checked as if asked for: enough GPUs for torchrun's processes
    check_here(device)
    return device


def torch_device(device: str) -> torch.device:
    """The torch device of a run asking for `device`, in the process that trains it: auto is
    CUDA where this process sees a GPU; cuda is cuda:LOCAL_RANK under torchrun, else cuda:0
    (on Ray or SLURM the GPU the engine made visible)."""
    from maml_bench import distributed

    device = here(device)
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        return torch.device("cuda", distributed.local_rank() if distributed.launched() else 0)
    return torch.device(device)


def describe(device: torch.device) -> str:
    """The device as records and run.json name it: cpu, or e.g. 'cuda:0 (NVIDIA H200)'."""
    if device.type != "cuda":
        return str(device)
    return f"{device} ({torch.cuda.get_device_name(device)})"


def use(device: torch.device) -> None:
    """Make `device` this process's: current CUDA device, and full float32 (no TF32) in
    matmuls and convolutions, so GPU numbers match CPU ones within float32 rounding."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def to_cpu(obj: Any) -> Any:
    """`obj` (nested dicts, lists, tuples of tensors) with every tensor on the CPU: the form
    checkpoints are written in, so they load on any device."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, to_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module's state_dict: versions for load_state_dict
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


class OnDevice(SupervisedBenchmark):
    """A benchmark whose batches and models live on `device`. The wrapped benchmark draws
    everything on the CPU from the run's generator, so a seed gives the same tasks anywhere;
    what it does not offer here (config, pools, sample_tasks...) is the wrapped one's."""

    def __init__(self, benchmark: SupervisedBenchmark, device: torch.device) -> None:
        super().__init__(benchmark.config)
        self.benchmark = benchmark
        self.device = device
        self._eval: dict[str, dict[int, SupervisedBatch]] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "benchmark":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.benchmark, name)

    def make_model(self, extra_inputs: int = 0) -> nn.Module:
        # initialised on the CPU (under the caller's seed), so the same init on every device
        return self.benchmark.make_model(extra_inputs).to(self.device)

    def train_batch(self, gen: torch.Generator, n_tasks: int, shots: int, query: int
                    ) -> SupervisedBatch:
        return self.benchmark.train_batch(gen, n_tasks, shots, query).to_device(self.device)

    def eval_sets(self, split: str) -> dict[int, SupervisedBatch]:
        if split not in self._eval:  # fixed tasks: moved once per run
            self._eval[split] = {k: b.to_device(self.device)
                                 for k, b in self.benchmark.eval_sets(split).items()}
        return self._eval[split]

    def fit_sets(self) -> dict[int, SupervisedBatch] | None:
        sets = self.benchmark.fit_sets()
        return None if sets is None else {k: b.to_device(self.device) for k, b in sets.items()}

    def classification_batch(self, gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        x, y = self.benchmark.classification_batch(gen, n)
        return x.to(self.device), y.to(self.device)

    def sample_points(self, gen: torch.Generator, tasks: Tensor, n: int
                      ) -> tuple[Tensor, Tensor]:
        x, y = self.benchmark.sample_points(gen, tasks.cpu(), n)
        return x.to(self.device), y.to(self.device)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.benchmark.loss(pred, target)

    def metric(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.benchmark.metric(pred, target)

    def with_task_info(self, x: Tensor, task_info: Tensor) -> Tensor:
        return self.benchmark.with_task_info(x, task_info)
