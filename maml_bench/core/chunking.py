"""Tasks per meta-gradient pass (`task_chunk`): the meta-batch's gradient as a sum over chunks
of tasks, one graph per chunk, freed before the next; the same gradient up to rounding.

`task_chunk=auto` (-1, the default) picks the chunk from the size of one task's activations.
On the CPU a pass whose activations stay in cache is faster than one that streams the whole
meta-batch from memory through batch norm's passes, and the bigger a task, the fewer tasks
belong in a pass (measured at every paper configuration: `benchmarks/task_chunks.py`,
results/benchmarks/task-chunks-cpu.md). On a GPU the whole batch is one pass, as before
`auto` existed (chunks are unmeasured there; its steps are launch-bound, README "On a GPU").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch

AUTO = -1  # task_chunk's "choose for me"
WHOLE = 0  # task_chunk's "the whole meta-batch in one pass"

#: on the CPU, `auto` puts as many tasks in a pass as keep its first layer's activations
#: (support and query images) within this many MiB: the whole batch where it fits, else a
#: power of two and at most CPU_MAX_TASKS. Fitted to the fastest chunk measured at the six
#: paper conv configurations, within 1.5% of it at each (results/benchmarks/task-chunks-cpu.md):
#: 8 tasks for Omniglot 5-way 1-shot, 4 for 5-shot and 20-way 1-shot, 1 for 20-way 5-shot and
#: MiniImagenet
CPU_PASS_MIB = 10.0
#: more tasks per pass were slower at every configuration measured (16 for 5-way 1-shot: 1.3x
#: the time of 8, though its activations fit the budget)
CPU_MAX_TASKS = 8
#: a whole batch whose first-layer activations fit this many MiB is one pass: the fully
#: connected nets' tiny tasks (sinusoid 0.08 MiB for 25 tasks, no-conv Omniglot 0.3-1.6 MiB
#: for 32), where batching every task is what their fast backends are measured at
CPU_WHOLE_MIB = 2.0


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
    per_task = task_activation_mib(model, batch)
    if per_task * batch.n_tasks <= CPU_WHOLE_MIB:  # tiny tasks (the MLPs)
        return batch.n_tasks
    fits = min(int(CPU_PASS_MIB // per_task), CPU_MAX_TASKS)
    if fits >= batch.n_tasks:
        return batch.n_tasks
    return 1 << (fits.bit_length() - 1) if fits > 1 else 1  # a power of two, as measured


def tasks_per_pass(task_chunk: int, model: nn.Module, batch: SupervisedBatch) -> int:
    """`task_chunk` resolved for `batch`: auto's choice, or the whole batch for 0."""
    if task_chunk == AUTO:
        return auto_task_chunk(model, batch)
    if task_chunk == WHOLE or task_chunk >= batch.n_tasks:
        return batch.n_tasks
    return task_chunk


class PassSizes:
    """`tasks_per_pass` for an algorithm, resolved once per (task_chunk, batch shape): auto
    runs a small forward to measure a task, not to be repeated every iteration."""

    def __init__(self) -> None:
        self.cache: dict[tuple, int] = {}

    def __call__(self, task_chunk: int, model: nn.Module, batch: SupervisedBatch) -> int:
        key = (task_chunk, tuple(batch.x_support.shape), tuple(batch.x_query.shape))
        if key not in self.cache:
            self.cache[key] = tasks_per_pass(task_chunk, model, batch)
        return self.cache[key]


def summed_meta_gradient(query_losses: Callable[[SupervisedBatch], Tensor],
                         batch: SupervisedBatch, params: list[Tensor], chunk: int,
                         n_tasks: int | None = None) -> tuple[Tensor, list[Tensor]]:
    """The summed query losses of `batch` / n_tasks (default: its own task count) and their
    gradient with respect to `params`, one graph per `chunk` tasks. n_tasks > batch.n_tasks:
    `batch` is one process's share of a larger meta-batch (torchrun)."""
    total = torch.zeros((), dtype=params[0].dtype, device=params[0].device)
    grads = [torch.zeros_like(p) for p in params]
    for part in batch.chunks(chunk):
        loss = query_losses(part).sum() / (n_tasks or batch.n_tasks)
        for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g.add_(d)
        total += loss.detach()
    return total, grads
