"""The KL Hessian-vector product of MAML-TRPO at the old policy, without third derivatives.

TRPO needs (H + damping I) v with H the Hessian of the mean KL(pi_old || pi_{phi(theta)}) in
theta, where phi(theta) = theta - alpha grad L_inner(theta) are the adapted parameters. At the
current theta the new policy equals the old one, so the KL's first derivatives vanish and H is
exactly the Gauss-Newton form

    H = J_phi^T J_u^T F J_u J_phi,   J_phi = I - alpha H_inner (per task),

with u = (mean, log-std) of the adapted policy on the post-update observations and F the
Gaussian Fisher there (1 / sigma^2 for the mean, 2 for the log-std, weighted by the KL's mean
over valid steps). A product costs two inner-loss Hessian-vector products and one forward- and
one reverse-mode pass of the policy, all second order at most; differentiating the KL gradient
through the inner step (`trpo.make_hvp`) builds third-order terms. Same numbers, tested.
One inner step (the paper's training setting); `first_order` drops J_phi's Hessian term.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.func import jvp

from maml_bench.core.functional import StepSizes, step_size
from maml_bench.rl.episodes import Episodes
from maml_bench.rl.policy import GaussianMLPPolicy
from maml_bench.rl.trpo import flatten
from maml_bench.rl.vpg import vpg_loss


def gauss_newton_kl_product(
    policy: GaussianMLPPolicy,
    theta: Mapping[str, Tensor],
    inner: Episodes,
    outer: Episodes,
    step_sizes: StepSizes,
    damping: float = 0.0,
    first_order: bool = False,
    names: Sequence[str] | None = None,
) -> Callable[[Tensor], Tensor]:
    """v (flat, theta's order) -> (H + damping I) v at the current theta (see the module)."""
    inner, outer = inner.with_task_dim(), outer.with_task_dim()
    n = outer.n_tasks
    keys = list(theta)
    adapted = set(keys if names is None else names)
    with torch.enable_grad():
        p = {k: v.detach().unsqueeze(0).expand(n, *v.shape).clone().requires_grad_()
             for k, v in theta.items()}
        g = torch.autograd.grad(vpg_loss(policy, p, inner).sum(), [p[k] for k in keys],
                                create_graph=not first_order)
        lrs = {k: step_size(step_sizes, 0, k) for k in keys}
        phi = {k: (p[k] - lrs[k] * gk if k in adapted else p[k]).detach()
               for k, gk in zip(keys, g, strict=True)}
    obs, mask = outer.observations, outer.mask

    def u(params: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        dist = policy.distribution(params, obs)
        return dist.mean, dist.log_std

    with torch.no_grad():
        _, log_std = u(phi)
        weight = (mask / mask.sum().clamp_min(1.0)).unsqueeze(-1)  # the KL's mean over steps
        fisher_mean, fisher_log_std = weight * torch.exp(-2.0 * log_std), weight * 2.0
    with torch.enable_grad():
        phi_leaf = {k: v.clone().requires_grad_() for k, v in phi.items()}
        mean, log_std_out = u(phi_leaf)

    def inner_hessian(vectors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per task: H_inner,t applied to vectors[t] ([N, ...] per key)."""
        hv = torch.autograd.grad(g, [p[k] for k in keys], [vectors[k] for k in keys],
                                 retain_graph=True, allow_unused=True)
        return {k: torch.zeros_like(p[k]) if h is None else h for k, h in zip(keys, hv,
                                                                              strict=True)}

    def product(v: Tensor) -> Tensor:
        v = v.detach()
        sizes = [theta[k].numel() for k in keys]
        parts = dict(zip(keys, v.split(sizes), strict=True))
        tangent = {k: parts[k].view_as(theta[k]).unsqueeze(0).expand(n, *theta[k].shape)
                   for k in keys}
        if not first_order:  # J_phi v = v - alpha H v on the adapted parameters
            hv = inner_hessian(tangent)
            tangent = {k: tangent[k] - lrs[k] * hv[k] if k in adapted else tangent[k]
                       for k in keys}
        _, (d_mean, d_log_std) = jvp(u, (phi,), (tangent,))
        q = torch.autograd.grad((mean, log_std_out), [phi_leaf[k] for k in keys],
                                (fisher_mean * d_mean, fisher_log_std * d_log_std),
                                retain_graph=True, allow_unused=True)
        q = {k: torch.zeros_like(p[k]) if qk is None else qk for k, qk in zip(keys, q,
                                                                              strict=True)}
        if not first_order:  # J_phi^T q = q - alpha H q (H symmetric) on the adapted rows
            hq = inner_hessian({k: lrs[k] * q[k] if k in adapted else torch.zeros_like(q[k])
                                for k in keys})
            q = {k: q[k] - hq[k] for k in keys}
        return flatten([q[k].sum(0) for k in keys]) + damping * v

    return product
