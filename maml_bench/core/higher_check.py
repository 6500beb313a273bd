"""`higher` as an independent cross-check of our meta-gradients (kept behind this one adapter).

`higher` differentiates through a real `torch.optim.SGD` inner loop on a monkey-patched copy of
the module: a different code path from ours, so agreement is evidence, not a tautology.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch, TaskLoss
from maml_bench.errors import install_command


def higher_meta_gradient(
    module: nn.Module,
    theta: Mapping[str, Tensor],
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    steps: int,
    lr: float | Sequence[float],
    first_order: bool = False,
) -> dict[str, Tensor]:
    """Gradient of the mean post-adaptation query loss with respect to theta, via `higher`."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(theta[name])
    module.zero_grad()
    lrs = [lr] * steps if isinstance(lr, float) else list(lr)
    opt = torch.optim.SGD(module.parameters(), lr=lrs[0])
    grads = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    names = list(grads)
    for i in range(batch.n_tasks):
        with _adapted(module, opt, batch, i, loss_fn, steps, lrs, first_order) as fmodel:
            pred = fmodel(batch.x_query[i])
            query = loss_fn(pred.unsqueeze(0), batch.y_query[i : i + 1]).sum() / batch.n_tasks
            # First order: higher detaches the fast weights, so the gradient is taken at the
            # adapted weights (the FOMAML approximation); second order reaches theta itself.
            wrt = list(fmodel.parameters()) if first_order else list(module.parameters())
            for name, g in zip(names, torch.autograd.grad(query, wrt), strict=True):
                grads[name] += g
    return grads


@contextmanager
def _adapted(module: nn.Module, opt: torch.optim.Optimizer, batch: SupervisedBatch, task: int,
             loss_fn: TaskLoss, steps: int, lrs: Sequence[float], first_order: bool
             ) -> Iterator[nn.Module]:
    """`higher`'s functional copy of `module` after `steps` SGD steps on task `task`'s support
    set (step size lrs[step]; a shorter list keeps its last entry)."""
    import higher  # optional dependency (extra "check")

    with higher.innerloop_ctx(
        module, opt, copy_initial_weights=False, track_higher_grads=not first_order
    ) as (fmodel, diffopt):
        for step in range(steps):
            pred = fmodel(batch.x_support[task])
            loss = loss_fn(pred.unsqueeze(0), batch.y_support[task : task + 1]).sum()
            diffopt.step(loss, override={"lr": [float(lrs[min(step, len(lrs) - 1)])]})
        yield fmodel


def higher_unsupported(lrs: object, adapted: Sequence[str] | None) -> str | None:
    """None if `higher_query_losses` computes this meta-loss; else the reason (one line)."""
    try:
        import higher  # noqa: F401  (optional dependency, extra "check")
    except ImportError:
        return f"the optional package `higher` is not installed ({install_command('check')})"
    if adapted is not None:
        return ("it adapts all of theta with one optimizer; this method adapts only "
                f"{', '.join(adapted)}")
    steps = lrs if isinstance(lrs, Sequence) and not isinstance(lrs, str) else [lrs]
    if not all(isinstance(lr, int | float) for lr in steps):
        return ("it takes plain float step sizes; this method's are tensors or per-parameter "
                "(learned step sizes, as Meta-SGD)")
    return None


def higher_query_losses(
    module: nn.Module,
    batch: SupervisedBatch,
    loss_fn: TaskLoss,
    steps: int,
    lrs: float | Sequence[float],
    first_order: bool = False,
) -> Tensor:
    """Per-task query losses [T] after `steps` SGD steps through `higher`, differentiable with
    respect to the module's own parameters (theta): the `higher` meta-gradient backend.

    Step sizes: one float, or one per step (a list shorter than `steps` keeps its last entry,
    as `functional.step_size`). First order: `higher` detaches the fast weights; the query
    loss is taken at theta + (fast - theta).detach(), whose gradient with respect to theta is
    the gradient at the adapted weights: the FOMAML approximation, as `meta_loss` computes it.
    """
    per_step = [lrs] if isinstance(lrs, int | float) else list(lrs)
    params = list(module.parameters())
    opt = torch.optim.SGD(params, lr=float(per_step[0]))
    losses = []
    for i in range(batch.n_tasks):
        with _adapted(module, opt, batch, i, loss_fn, steps, per_step, first_order) as fmodel:
            if first_order:
                fast = [p + (f - p).detach() for p, f in zip(params, fmodel.parameters(),
                                                               strict=True)]
                pred = fmodel(batch.x_query[i], params=fast)
            else:
                pred = fmodel(batch.x_query[i])
            losses.append(loss_fn(pred.unsqueeze(0), batch.y_query[i : i + 1]))
    return torch.cat(losses)
