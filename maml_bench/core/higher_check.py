"""`higher` as an independent cross-check of our meta-gradients (kept behind this one adapter).

`higher` differentiates through a real `torch.optim.SGD` inner loop on a monkey-patched copy of
the module: a different code path from ours, so agreement is evidence, not a tautology.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch, TaskLoss


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
    import higher  # optional dependency (extra "check")

    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(theta[name])
    module.zero_grad()
    opt = torch.optim.SGD(module.parameters(), lr=lr if isinstance(lr, float) else lr[0])
    lrs = [lr] * steps if isinstance(lr, float) else list(lr)
    grads = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    names = list(grads)
    for i in range(batch.n_tasks):
        with higher.innerloop_ctx(
            module, opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for step in range(steps):
                pred = fmodel(batch.x_support[i])
                loss = loss_fn(pred.unsqueeze(0), batch.y_support[i : i + 1]).sum()
                diffopt.step(loss, override={"lr": [lrs[step]]})
            pred = fmodel(batch.x_query[i])
            query = loss_fn(pred.unsqueeze(0), batch.y_query[i : i + 1]).sum() / batch.n_tasks
            # First order: higher detaches the fast weights, so the gradient is taken at the
            # adapted weights (the FOMAML approximation); second order reaches theta itself.
            wrt = list(fmodel.parameters()) if first_order else list(module.parameters())
            for name, g in zip(names, torch.autograd.grad(query, wrt), strict=True):
                grads[name] += g
    return grads
