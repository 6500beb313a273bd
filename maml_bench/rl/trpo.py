"""Trust region policy optimisation step (Schulman et al. 2015), as rllab's
`ConjugateGradientOptimizer` that the paper's MAML-TRPO used (cbfinn/maml_rl
`sandbox/rocky/tf/optimizers/conjugate_gradient_optimizer.py`, `rllab/misc/krylov.py`).

Minimise a surrogate loss L(theta) subject to a mean KL constraint KL(theta) <= max_kl:

1. g = grad L; H = Hessian of KL, applied exactly by double backward (Pearlmutter); the
   damping convention is rllab's: every product is (H + damping I) v;
2. x ~= (H + damping I)^{-1} g by conjugate gradient (`cg_iters`, stopping once r.r < tol);
3. full step s = sqrt(2 max_kl / (x.(H + damping I)x + 1e-8)) x (1 if that is NaN);
4. backtracking: theta - ratio^k s for k = 0 .. max_backtracks-1, accepting the first point
   with L < L(theta) and KL <= max_kl; if none, theta is restored bit for bit.

The functions work on any list of leaf tensors and a closure that evaluates (loss, kl) at their
current values, so the same step serves plain TRPO and MAML-TRPO (`maml_bench.rl.maml_rl`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: evaluates (surrogate loss, mean KL) at the parameters' current values, both scalars; called
#: with autograd on for the gradient and HVPs and under torch.no_grad() in the line search.
Objective = Callable[[], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class TRPOConfig:
    """The paper's TRPO constants (App. A.2; rllab's defaults)."""

    max_kl: float = 0.01
    """Trust region: mean KL(old || new) allowed after the step."""
    cg_iters: int = 10
    """Conjugate gradient iterations."""
    cg_residual_tol: float = 1e-10
    """CG stops once the squared residual norm r.r falls below this (rllab's `residual_tol`)."""
    damping: float = 1e-5
    """Products are (H + damping I) v (rllab's `reg_coeff`)."""
    backtrack_ratio: float = 0.8
    """Each line-search try shrinks the step by this factor."""
    max_backtracks: int = 15
    """Line-search tries, the full step included."""


@dataclass(frozen=True)
class TRPOResult:
    """What one TRPO step did (Python floats: read once per meta-iteration)."""

    accepted: bool
    loss_before: float
    loss_after: float  # equals loss_before when the step was rejected
    kl_before: float  # 0 when the old policy is the current one (MAML-TRPO)
    kl_after: float  # equals kl_before when the step was rejected
    backtracks: int  # line-search tries made, 1 = the full step
    step_size: float  # the scale s / x of the full step
    grad_norm: float


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def assign_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    """Write the flat vector `flat` into `params` in place (no graph)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset: offset + n].view_as(p))
            offset += n


def _grads(output: Tensor, params: Sequence[Tensor], **kwargs: bool) -> list[Tensor]:
    grads = torch.autograd.grad(output, list(params), allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def make_hvp(f: Tensor, params: Sequence[Tensor], damping: float = 0.0
             ) -> Callable[[Tensor], Tensor]:
    """v -> (H + damping I) v with H the exact Hessian of the scalar `f` wrt `params`.

    `f` must carry its graph to `params`; the gradient is built once with create_graph=True and
    each product is one more backward through it (Pearlmutter), so for MAML the product goes
    through the inner gradient step (third-order terms included)."""
    grad = flatten(_grads(f, params, create_graph=True))
    if not grad.requires_grad:  # f is at most linear in params: H = 0
        return lambda v: damping * v

    def hvp(v: Tensor) -> Tensor:
        hv = flatten(_grads(grad @ v.detach(), params, retain_graph=True))
        return hv + damping * v

    return hvp


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> Tensor:
    """Approximately solve A x = b for symmetric positive definite A given only x -> A x
    (rllab's `krylov.cg`: start at 0, stop after `iters` or once r.r < residual_tol)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = r @ r
    for _ in range(iters):
        if rdotr < residual_tol:  # also covers b = 0, where p.Ap would be 0/0
            break
        z = matvec(p)
        v = rdotr / (p @ z)
        x = x + v * p
        r = r - v * z
        new_rdotr = r @ r
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def trpo_step(objective: Objective, params: Sequence[Tensor], config: TRPOConfig,
              product: Callable[[Tensor], Tensor] | None = None) -> TRPOResult:
    """One TRPO update of `params` (leaf tensors, changed in place); see the module docstring.

    `objective()` must be a pure function of the parameters' values (fixed data, fixed old
    policy), so that the line search compares like with like. `product`: v -> (H + damping I) v
    computed another way (e.g. `rl.fisher`); by default the exact one from the KL's graph."""
    params = list(params)
    loss, kl = objective()
    grad = flatten(_grads(loss, params, retain_graph=product is None)).detach()
    hvp = product if product is not None else make_hvp(kl, params, config.damping)
    direction = conjugate_gradient(hvp, grad, config.cg_iters, config.cg_residual_tol).detach()
    shs = (direction @ hvp(direction)).item()
    step_size = math.sqrt(2.0 * config.max_kl / (shs + 1e-8)) if shs + 1e-8 > 0 else math.nan
    if math.isnan(step_size):
        step_size = 1.0
    full_step = step_size * direction
    loss_before, kl_before = loss.item(), kl.item()
    del loss, kl, hvp  # free the graph before the line search

    prev = flatten([p.detach() for p in params]).clone()
    tries = 0
    new_loss = new_kl = math.nan
    accepted = False
    with torch.no_grad():
        for k in range(config.max_backtracks):
            tries = k + 1
            assign_flat(params, prev - config.backtrack_ratio ** k * full_step)
            new_loss_t, new_kl_t = objective()
            new_loss, new_kl = new_loss_t.item(), new_kl_t.item()
            # NaN compares False: a NaN point is never accepted
            if new_loss < loss_before and new_kl <= config.max_kl:
                accepted = True
                break
    if not accepted:
        assign_flat(params, prev)
        new_loss, new_kl = loss_before, kl_before
    return TRPOResult(accepted, loss_before, new_loss, kl_before, new_kl, tries, step_size,
                      grad.norm().item())
