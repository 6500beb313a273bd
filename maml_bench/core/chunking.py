"""Tasks per meta-gradient pass (`task_chunk`): the meta-batch's gradient as a sum over chunks
of tasks, one graph per chunk, freed before the next; the same gradient up to rounding.

`task_chunk=auto` (-1, the default) picks the chunk from the size of one task's activations.
On the CPU a pass whose activations stay in cache is faster than one that streams the whole
meta-batch from memory through batch norm's passes, and the bigger a task, the fewer tasks
belong in a pass (measured at every paper configuration: `benchmarks/task_chunks.py`,
results/benchmarks/task-chunks-cpu.md). On a GPU the whole batch is one pass, as before
`auto` existed (chunks are unmeasured there; its steps are launch-bound, docs/speed.md "On a GPU").

`task_threads`: the meta-batch's tasks split into that many contiguous shares, each
differentiated (in its own chunks) by a thread of its own on one intra-op thread, the shares'
gradients summed in order: the same gradient up to rounding, deterministic for a given count.
On the CPU a chunk's small convolutions and batch-norm passes gain less from torch's own threads
than independent tasks side by side (Omniglot: results/benchmarks/task-threads-cpu.md,
docs/speed.md "Using every CPU"). `auto` uses the CPUs the run was given (`set_run_cpus`) where
tasks are large enough for a thread hand-off not to matter and small enough not to contend for
memory; only backends whose forwards leave the module alone (`backends.THREAD_SAFE`) run on
task threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch

AUTO = -1  # task_chunk's "choose for me"
WHOLE = 0  # task_chunk's "the whole meta-batch in one pass"

#: on the CPU, `auto` puts as many tasks in a pass as keep its first layer's activations
#: (support and query images) within this many MiB: the whole batch where it fits, else a
#: power of two and at most CPU_MAX_TASKS. Fitted to the fastest chunk measured at the six
#: paper conv configurations (results/benchmarks/task-chunks-cpu.md, docs/speed.md): 8 tasks for
#: Omniglot 5-way 1-shot, 4 for 5-shot and 20-way 1-shot, 1 for 20-way 5-shot and MiniImagenet
CPU_PASS_MIB = 10.0
#: more tasks per pass were slower at every configuration in the first measurement, even where
#: their activations fit the budget (docs/speed.md)
CPU_MAX_TASKS = 8
#: a whole batch whose first-layer activations fit this many MiB is one pass: the fully
#: connected nets' tiny tasks (sinusoid 0.08 MiB for 25 tasks, no-conv Omniglot 0.3-1.6 MiB
#: for 32), where batching every task is what their fast backends are measured at
CPU_WHOLE_MIB = 2.0
#: task threads (`task_threads=auto`) only for tasks whose first-layer activations reach this
#: many MiB: the convolutional ones (Omniglot 5-way 1-shot 0.48 MiB), each of whose steps is
#: milliseconds of native work; the fully connected nets' tasks (at most 0.05 MiB) are
#: Python-bound steps that would wait on each other for Python's lock
CPU_THREAD_TASK_MIB = 0.1


def auto_rule() -> str:
    """`auto`'s rule on the CPU, in words (stored with profile parts: a changed rule re-times)."""
    return (f"whole batch if its first-layer activations fit {CPU_WHOLE_MIB:g} MiB, else a "
            f"power of two of tasks that fits {CPU_PASS_MIB:g} MiB, at most {CPU_MAX_TASKS}")


def task_activation_mib(model: nn.Module, batch: SupervisedBatch) -> float:
    """MiB of one task's first-layer output for its support and query examples: the
    activation size every later layer's (and batch norm's) passes scale with."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)), None)
    if first is None:
        return 0.0
    sizes: list[int] = []
    handle = first.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
    try:
        with torch.no_grad():
            model(batch.x_support[0])
            model(batch.x_query[0])
    finally:
        handle.remove()
    itemsize = next(model.parameters()).element_size()
    return sum(sizes) * itemsize / 2**20


def auto_task_chunk(model: nn.Module, batch: SupervisedBatch) -> int:
    """The tasks per pass `auto` takes for `model` on batches shaped like `batch`."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        return batch.n_tasks
    return cpu_auto_tasks(task_activation_mib(model, batch), batch.n_tasks)


def cpu_auto_tasks(per_task_mib: float, n_tasks: int) -> int:
    """`auto`'s tasks per pass on the CPU for `n_tasks` tasks of `per_task_mib` first-layer
    activations each (`auto_rule`)."""
    if per_task_mib * n_tasks <= CPU_WHOLE_MIB:  # tiny tasks (the MLPs)
        return n_tasks
    fits = min(int(CPU_PASS_MIB // per_task_mib), CPU_MAX_TASKS)
    if fits >= n_tasks:
        return n_tasks
    return 1 << (fits.bit_length() - 1) if fits > 1 else 1  # a power of two, as measured


def tasks_per_pass(task_chunk: int, model: nn.Module, batch: SupervisedBatch) -> int:
    """`task_chunk` resolved for `batch`: auto's choice, or the whole batch for 0."""
    if task_chunk == AUTO:
        return auto_task_chunk(model, batch)
    if task_chunk == WHOLE or task_chunk >= batch.n_tasks:
        return batch.n_tasks
    return task_chunk


class PassSizes:
    """`tasks_per_pass` and `task_threads` for an algorithm, resolved once per (setting, batch
    shape): auto runs a small forward to measure a task, not to be repeated every iteration."""

    def __init__(self) -> None:
        self.cache: dict[tuple, Any] = {}

    def __call__(self, task_chunk: int, model: nn.Module, batch: SupervisedBatch) -> int:
        return self._resolved("chunk", tasks_per_pass, task_chunk, model, batch)

    def threads(self, setting: int, model: nn.Module, batch: SupervisedBatch) -> int:
        return self._resolved("threads", task_threads, setting, model, batch)

    def torch_threads(self, setting: int, model: nn.Module, batch: SupervisedBatch
                      ) -> int | None:
        return self._resolved("torch", torch_threads, setting, model, batch)

    def _resolved(self, what: str, resolve: Callable[[int, nn.Module, SupervisedBatch], Any],
                  setting: int, model: nn.Module, batch: SupervisedBatch) -> Any:
        key = (what, setting, tuple(batch.x_support.shape), tuple(batch.x_query.shape))
        if key not in self.cache:
            self.cache[key] = resolve(setting, model, batch)
        return self.cache[key]


def summed_meta_gradient(query_losses: Callable[[SupervisedBatch], Tensor],
                         batch: SupervisedBatch, params: list[Tensor], chunk: int,
                         n_tasks: int | None = None, threads: int = 1
                         ) -> tuple[Tensor, list[Tensor]]:
    """The summed query losses of `batch` / n_tasks (default: its own task count) and their
    gradient with respect to `params`, one graph per `chunk` tasks. n_tasks > batch.n_tasks:
    `batch` is one process's share of a larger meta-batch (torchrun). threads > 1: the tasks
    in that many contiguous shares, one thread each (`task_threads`), summed in share order."""
    n_tasks = n_tasks or batch.n_tasks
    if threads > 1 and batch.n_tasks > 1:
        shares = split_tasks(batch, threads)
        parts = list(task_pool(len(shares)).map(
            lambda share: _summed(query_losses, share, params, chunk, n_tasks), shares))
        total, grads = parts[0]
        for loss, share_grads in parts[1:]:
            total = total + loss
            grads = [g.add_(d) for g, d in zip(grads, share_grads, strict=True)]
        return total, grads
    return _summed(query_losses, batch, params, chunk, n_tasks)


def _summed(query_losses: Callable[[SupervisedBatch], Tensor], batch: SupervisedBatch,
            params: list[Tensor], chunk: int, n_tasks: int) -> tuple[Tensor, list[Tensor]]:
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    grads = [torch.zeros_like(p) for p in params]
    for part in batch.chunks(chunk):
        loss = query_losses(part).sum() / n_tasks
        for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g.add_(d)
        total += loss.detach()
    return total, grads


def split_tasks(batch: SupervisedBatch, shares: int) -> list[SupervisedBatch]:
    """`batch` in at most `shares` contiguous parts whose sizes differ by at most one task."""
    n = batch.n_tasks
    shares = min(shares, n)
    bounds = [n * i // shares for i in range(shares + 1)]
    return [batch.select(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


# --- task threads -------------------------------------------------------------------------

_run_cpus: int | None = None  # set_run_cpus
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # "QUOTA PERIOD" or "max PERIOD"
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (its threads, the pool)


def set_run_cpus(cpus: int | None) -> None:
    """The CPUs the run in this process may use (the runner, per run): its share under
    --jobs, --cpus-per-run on Ray and SLURM; None: every CPU this process may run on, shared
    with the other processes of a torchrun launch on this node."""
    global _run_cpus
    _run_cpus = cpus


def machine_cpus() -> int:
    """The CPUs this process may run on: its affinity, capped by a cgroup v2 CPU quota (a
    container started with --cpus sees every core of its host in its affinity)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    return cpus


def run_cpus() -> int:
    """The CPUs `task_threads=auto` may use (`set_run_cpus`). Without a value set: the
    machine's, shared by torchrun's processes on this node (LOCAL_WORLD_SIZE); a launcher that
    sets WORLD_SIZE but not LOCAL_WORLD_SIZE gets one per process (its layout is unknown)."""
    if _run_cpus is not None:
        return max(1, _run_cpus)
    try:
        local = os.environ.get("LOCAL_WORLD_SIZE")
        processes = int(local) if local else int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        processes = 1
    if not local and processes > 1:
        return 1
    return max(1, machine_cpus() // max(1, processes))


def task_threads(setting: int, model: nn.Module, batch: SupervisedBatch) -> int:
    """`task_threads` resolved for `batch`: 1 on a GPU (its kernels are asynchronous already);
    auto: the run's CPUs for tasks from `CPU_THREAD_TASK_MIB` to `CPU_PASS_MIB`, else 1 (tiny
    tasks; tasks too big for the cache get the CPUs as torch's own threads, `torch_threads`)."""
    device = next(model.parameters()).device
    if device.type != "cpu" or batch.n_tasks < 2:
        return 1
    if setting == AUTO:
        if not CPU_THREAD_TASK_MIB <= task_activation_mib(model, batch) <= CPU_PASS_MIB:
            return 1
        setting = run_cpus()
    return max(1, min(setting, batch.n_tasks))


def torch_threads(setting: int, model: nn.Module, batch: SupervisedBatch) -> int | None:
    """The torch (intra-op) threads `task_threads=auto` gives a run whose tasks are too big for
    the cache (MiniImagenet, 69-86 MiB each): the run's CPUs. Their convolutions are large
    enough to split, while two such tasks side by side contend for memory (docs/speed.md
    "Using every CPU"). None: leave torch's threads as set."""
    if setting != AUTO or next(model.parameters()).device.type != "cpu":
        return None
    return run_cpus() if task_activation_mib(model, batch) > CPU_PASS_MIB else None


def task_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of `threads` task threads, kept between steps (their glibc arenas
    stay warm). Each runs torch ops on one intra-op thread of its own (`_one_torch_thread`):
    n task threads on n CPUs, not n times torch's own; the calling thread keeps its count."""
    global _pool
    if _pool is None or _pool[0] != threads:
        if _pool is not None:
            _pool[1].shutdown()
        _pool = (threads, ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maml-tasks",
                                             initializer=_one_torch_thread))
    return _pool[1]


def _one_torch_thread() -> None:
    # OpenMP's thread count is per thread, but torch reads it from a process-wide value the
    # first time a thread asks (get_num_threads initialises it): set, then fix it for this one.
    torch.set_num_threads(1)
    torch.get_num_threads()
