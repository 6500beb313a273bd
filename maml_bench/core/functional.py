"""Functional inner-loop adaptation and MAML meta-losses.

Two paths compute the same meta-loss:

* `reference_meta_loss`: a plain per-task loop on `torch.func.functional_call` with
  `torch.autograd.grad(create_graph=True)`; obviously right, slow.
* `meta_loss`: all tasks at once. Parameters get a leading task dimension (an `expand` of theta,
  so no copy) and a *batched forward* maps `params[T, ...]`, `x[T, N, ...]` to `y[T, N, ...]`.
  Because tasks do not interact, the gradient of the summed per-task losses with respect to the
  batched parameters is exactly the stack of per-task gradients, so one `autograd.grad` call does
  the inner step of every task and the outer backward differentiates through it (second order).

The batched forward is either a model's own `batched_forward` (fast: bmm) or `vmap` over
`functional_call`. Tests check every batched path against the reference, finite differences and
`higher` before it may be used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from maml_bench import distributed

Params = dict[str, Tensor]
#: params with a leading task dim [T, ...] and inputs [T, N, ...] -> predictions [T, N, ...]
BatchedForward = Callable[[Mapping[str, Tensor], Tensor], Tensor]
#: predictions [T, N, ...] and targets [T, N, ...] -> one loss per task [T]
TaskLoss = Callable[[Tensor, Tensor], Tensor]
#: one step size for every step and parameter; one per step; or per parameter (Meta-SGD),
#: optionally one such dict per step.
StepSizes = float | Tensor | Sequence[float] | Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]]


@dataclass
class SupervisedBatch:
    """A batch of T tasks: support (x, y) for adaptation and query (x, y) for the meta-loss."""

    x_support: Tensor  # [T, Ks, ...]
    y_support: Tensor
    x_query: Tensor  # [T, Kq, ...]
    y_query: Tensor
    task_info: Tensor | None = None  # [T, d]: task parameters, for oracles only

    @property
    def n_tasks(self) -> int:
        return self.x_support.shape[0]

    def fields(self) -> tuple[Tensor | None, ...]:
        """Every field in order (task_info None where there is none)."""
        return (self.x_support, self.y_support, self.x_query, self.y_query, self.task_info)

    def chunks(self, size: int) -> list[SupervisedBatch]:
        """Consecutive batches of at most `size` tasks."""
        parts = [t.split(size) if t is not None else None for t in self.fields()]
        return [SupervisedBatch(*(p[i] if p is not None else None for p in parts))
                for i in range(len(parts[0]))]

    def map(self, fn: Callable[[Tensor], Tensor]) -> SupervisedBatch:
        """`fn` applied to every tensor (task_info too, where there is one)."""
        return SupervisedBatch(*(fn(t) if t is not None else None for t in self.fields()))

    def select(self, start: int, stop: int) -> SupervisedBatch:
        """Tasks start..stop-1 (views, no copy): one process's share under torchrun."""
        return self.map(lambda t: t[start:stop])

    def to(self, dtype: torch.dtype) -> SupervisedBatch:
        return self.map(lambda t: t.to(dtype) if t.is_floating_point() else t)

    def to_device(self, device: torch.device | str) -> SupervisedBatch:
        """Every tensor (labels too) on `device`; the same batch where they already are."""
        return self.map(lambda t: t.to(device))


def task_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-task mean squared error: [T, N, ...] -> [T] (the sinusoid benchmark's loss)."""
    return (pred - target).pow(2).flatten(1).mean(1)


def task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-task mean cross-entropy: logits [T, N, C], labels [T, N] -> [T]."""
    t, n, classes = logits.shape
    return nn.functional.cross_entropy(logits.reshape(t * n, classes), labels.reshape(t * n),
                                       reduction="none").view(t, n).mean(1)


def step_size(lrs: StepSizes, step: int, name: str) -> float | Tensor:
    """The step size of parameter `name` at inner step `step`; a per-step list shorter than the
    number of steps keeps its last entry (meta-test often runs more steps than training)."""
    if isinstance(lrs, Mapping):
        return lrs[name]
    if isinstance(lrs, Sequence):
        return step_size(lrs[min(step, len(lrs) - 1)], step, name)
    return lrs


def gradient_step(params: Mapping[str, Tensor], grads: Sequence[Tensor], lrs: StepSizes,
                  step: int) -> Params:
    """One plain gradient-descent step (differentiable: the graph of `grads` is kept)."""
    return {name: p - step_size(lrs, step, name) * g
            for (name, p), g in zip(params.items(), grads, strict=True)}


def expand_params(params: Mapping[str, Tensor], n_tasks: int) -> Params:
    """Give every parameter a leading task dimension without copying (an expand view)."""
    return {k: v.unsqueeze(0).expand(n_tasks, *v.shape) for k, v in params.items()}


def restrict(forward: BatchedForward, theta: Mapping[str, Tensor], names: Sequence[str],
             detach_rest: bool = False) -> tuple[BatchedForward, Params]:
    """Adapt only `names`: a batched forward over those parameters alone, the rest of theta
    (shared by every task) closed over, so the outer gradient still reaches it; and the
    sub-dict of theta to adapt. ANIL adapts the head, the context vector its inputs z."""
    rest = {k: v.detach() if detach_rest else v for k, v in theta.items() if k not in names}

    def partial(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return forward({**expand_params(rest, x.shape[0]), **params}, x)

    return partial, {k: theta[k] for k in names}


def inner_adapt(
    forward: BatchedForward,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: TaskLoss,
    steps: int,
    lrs: StepSizes,
    first_order: bool = False,
) -> Params:
    """`steps` gradient steps on every task at once; params carry a leading task dimension.

    Second order (the default) keeps the graph of each inner gradient so the outer backward
    differentiates through it; `first_order=True` treats inner gradients as constants (FOMAML).
    """
    adapted = dict(params)
    create_graph = not first_order and torch.is_grad_enabled()
    for step in range(steps):
        # Summed, not averaged, over tasks: d(sum)/d(params[t]) is exactly task t's gradient.
        loss = loss_fn(forward(adapted, x), y).sum()
        grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=create_graph)
        adapted = gradient_step(adapted, grads, lrs, step)
    return adapted


def meta_loss(
    forward: BatchedForward,
    theta: Mapping[str, Tensor],
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    steps: int,
    lrs: StepSizes,
    first_order: bool = False,
) -> Tensor:
    """Per-task query loss after adaptation, shape [T] (batched path)."""
    params = expand_params(theta, batch.n_tasks)
    adapted = inner_adapt(
        forward, params, batch.x_support, batch.y_support, loss_fn, steps, lrs, first_order
    )
    return loss_fn(forward(adapted, batch.x_query), batch.y_query)


def reference_meta_loss(
    module: nn.Module,
    theta: Mapping[str, Tensor],
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    steps: int,
    lrs: StepSizes,
    first_order: bool = False,
    adapted: Sequence[str] | None = None,
) -> Tensor:
    """The same per-task query losses as `meta_loss`, by a plain loop over tasks. `adapted`:
    adapt only these parameters (as `restrict`); the rest of theta is used unchanged."""
    fixed = {} if adapted is None else {k: v for k, v in theta.items() if k not in adapted}
    losses = []
    for i in range(batch.n_tasks):
        params = dict(theta) if adapted is None else {k: theta[k] for k in adapted}
        for step in range(steps):
            pred = functional_call(module, {**fixed, **params}, (batch.x_support[i],))
            loss = loss_fn(pred.unsqueeze(0), batch.y_support[i : i + 1]).sum()
            grads = torch.autograd.grad(
                loss, list(params.values()), create_graph=not first_order
            )
            params = gradient_step(params, grads, lrs, step)
        pred = functional_call(module, {**fixed, **params}, (batch.x_query[i],))
        losses.append(loss_fn(pred.unsqueeze(0), batch.y_query[i : i + 1]))
    return torch.cat(losses)


def vmap_supported(module: nn.Module) -> str | None:
    """None if `vmap(functional_call)` handles `module`; else the reason it cannot."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.track_running_stats:
            return (
                f"{type(sub).__name__} tracks running statistics (in-place buffer updates); "
                "use track_running_stats=False (per-batch statistics, as the paper's code)"
            )
    return None


def make_batched_forward(module: nn.Module, prefer_fast: bool = True) -> BatchedForward:
    """A batched forward for `module`: its own `batched_forward` if it has one, else vmap."""
    fast = getattr(module, "batched_forward", None)
    if prefer_fast and fast is not None:
        return fast
    reason = vmap_supported(module)
    if reason is not None:
        raise ValueError(f"no batched path for {type(module).__name__}: {reason}")

    def single(params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(module, params, (x,))

    return vmap(single)


def evaluate_adaptation(
    forward: BatchedForward,
    theta: Mapping[str, Tensor],
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    metric_fn: TaskLoss,
    steps: int,
    lrs: StepSizes,
    chunk: int = 200,
) -> Tensor:
    """Meta-test: adapt each task with plain gradient steps and return the query metric of every
    task after 0..steps steps, shape [T, steps + 1]. Tasks are processed `chunk` at a time.

    Under torchrun (a process group of N > 1) each process adapts its contiguous share of the
    tasks and every process returns all of them: a collective, so every rank must call it.
    Fewer tasks than processes: every process adapts them all (an empty share would not know
    the shape of its part of the result)."""
    if distributed.active() and batch.n_tasks >= distributed.world_size():
        part = _adaptation_curves(forward, theta, distributed.shard(batch), loss_fn, metric_fn,
                                  steps, lrs, chunk)
        return distributed.gather_tasks(part, batch.n_tasks)
    return _adaptation_curves(forward, theta, batch, loss_fn, metric_fn, steps, lrs, chunk)


def _adaptation_curves(
    forward: BatchedForward,
    theta: Mapping[str, Tensor],
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    metric_fn: TaskLoss,
    steps: int,
    lrs: StepSizes,
    chunk: int,
) -> Tensor:
    out = []
    for start in range(0, batch.n_tasks, chunk):
        sl = slice(start, start + chunk)
        n = batch.x_support[sl].shape[0]
        params = {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone().requires_grad_()
                  for k, v in theta.items()}
        lrs_eval = _detach_lrs(lrs)
        per_step = []
        for step in range(steps + 1):
            with torch.no_grad():
                per_step.append(metric_fn(forward(params, batch.x_query[sl]), batch.y_query[sl]))
            if step == steps:
                break
            with torch.enable_grad():
                loss = loss_fn(forward(params, batch.x_support[sl]), batch.y_support[sl]).sum()
                grads = torch.autograd.grad(loss, list(params.values()))
            params = {name: p.detach().requires_grad_()
                      for name, p in gradient_step(params, grads, lrs_eval, step).items()}
        out.append(torch.stack(per_step, dim=1))
    return torch.cat(out)


def _detach_lrs(lrs: StepSizes) -> StepSizes:
    if isinstance(lrs, Tensor):
        return lrs.detach()
    if isinstance(lrs, Mapping):
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in lrs.items()}
    if isinstance(lrs, Sequence):
        return [_detach_lrs(v) for v in lrs]  # type: ignore[misc]
    return lrs
