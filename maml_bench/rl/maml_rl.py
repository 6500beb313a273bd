"""MAML for reinforcement learning: vanilla policy gradient inner steps and a TRPO meta-update
(Finn et al. 2017, section 5.3 and App. A.2; the paper's code, cbfinn/maml_rl
`sandbox/rocky/tf/algos/maml_npo.py` and `maml_minimal_gauss_mlp_policy.py`).

For each task i of a meta-batch:

* inner step k (episodes sampled with the policy after k steps, advantages per
  `maml_bench.rl.returns`): theta_{k+1} = theta_k - alpha_k grad L_VPG(theta_k) with
  L_VPG = -mean over valid steps of log pi(a|s) A, every parameter (log-std too) adapted;
* outer objective on the post-update episodes, sampled with theta_K at the current theta:
  L(theta) = -mean over tasks of mean_steps [pi_{theta_K(theta)}(a|s) / pi_old(a|s) A], and the
  constraint KL(theta) = mean over all valid steps of all tasks of KL(pi_old || pi_{theta_K(theta)})
  (the original concatenates the tasks' steps before the mean), pi_old the post-update policy at
  the current theta, held fixed;
* `trpo_step` on (L, KL) as functions of theta, differentiating through the inner steps
  (second order; `first_order=True` treats the inner gradients as constants, FOMAML-TRPO).

All tasks run at once: theta is expanded to a leading task dimension
(`maml_bench.core.functional.expand_params`) and the summed per-task inner losses give every
task's gradient in one `autograd.grad` (tasks do not interact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from maml_bench.core.functional import Params, StepSizes, expand_params, gradient_step
from maml_bench.rl.episodes import Episodes, masked_mean
from maml_bench.rl.fisher import gauss_newton_kl_product
from maml_bench.rl.policy import Gaussian, GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from maml_bench.rl.trpo import TRPOConfig, TRPOResult, trpo_step
from maml_bench.rl.vpg import advantages_of, vpg_loss


def inner_step_sizes(alpha: float, steps: int, later: float = 0.5) -> list[float]:
    """alpha for the first inner step and alpha x `later` after (the paper's evaluation
    protocol: alpha / 2).

    Training with one step uses alpha alone; a list passes straight to `adapt` (the core's
    step-size rule keeps the last entry for later steps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [alpha] + [alpha * later] * (steps - 1)


def adapt(
    policy: GaussianMLPPolicy,
    theta: Mapping[str, Tensor],
    inner: Sequence[Episodes],
    step_sizes: StepSizes,
    first_order: bool = False,
    n_tasks: int | None = None,
    names: Sequence[str] | None = None,
) -> Params:
    """len(inner) VPG steps on every task at once -> adapted params [N, ...].

    `names`: only these parameters take the inner steps (the context vector adapts z alone);
    None: all of them.

    `inner[k]` holds the episodes of step k ([N, T, B, ...]; sampled with the policy after k
    steps). `theta` is shared ([...], expanded here) or already per task ([N, ...]). Second
    order keeps each inner gradient's graph; `first_order` treats it as a constant. Without
    autograd (torch.no_grad(), or theta not requiring grad) the values are computed on detached
    copies and returned detached: the line search and meta-test evaluation use this."""
    inner = [e.with_task_dim() for e in inner]
    if n_tasks is None:
        if not inner:
            raise ValueError("n_tasks is needed when there are no inner steps")
        n_tasks = inner[0].n_tasks
    if not torch.is_grad_enabled() or not any(v.requires_grad for v in theta.values()):
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in theta.items()}
            # first and second order give the same values; only the derivative differs
            adapted = adapt(policy, leaves, inner, step_sizes, True, n_tasks, names)
        return {k: v.detach() for k, v in adapted.items()}

    params = dict(theta) if policy.is_batched(theta) else expand_params(theta, n_tasks)
    keys = list(params) if names is None else list(names)
    for step, episodes in enumerate(inner):
        # Summed over tasks: d(sum)/d(params[t]) is exactly task t's gradient.
        loss = vpg_loss(policy, params, episodes).sum()
        grads = torch.autograd.grad(loss, [params[k] for k in keys],
                                    create_graph=not first_order)
        params = {**params, **gradient_step({k: params[k] for k in keys}, grads, step_sizes,
                                            step)}
    return params


def surrogate_loss(new: Gaussian, old: Gaussian, episodes: Episodes) -> Tensor:
    """TRPO's importance-weighted surrogate -mean(pi_new / pi_old A) per task -> [N]."""
    ratio = torch.exp(gaussian_log_prob(new, episodes.actions)
                      - gaussian_log_prob(old.detach(), episodes.actions))
    return -masked_mean(ratio * advantages_of(episodes), episodes.mask)


def mean_kl(new: Gaussian, old: Gaussian, mask: Tensor) -> Tensor:
    """KL(old || new) averaged over every valid step of every task (a scalar)."""
    kl = gaussian_kl(old.detach(), new)
    return (kl * mask).sum() / mask.sum().clamp_min(1.0)


def post_update_distribution(
    policy: GaussianMLPPolicy,
    theta: Mapping[str, Tensor],
    inner: Sequence[Episodes],
    outer: Episodes,
    step_sizes: StepSizes,
    names: Sequence[str] | None = None,
) -> Gaussian:
    """pi_old: the adapted policy at the current theta on the post-update observations, as
    constants [N, T, B, act_dim]. The original stores the sampler's `agent_infos` instead: the
    same numbers, since those episodes were sampled with exactly this adapted policy."""
    outer = outer.with_task_dim()
    with torch.no_grad():
        adapted = adapt(policy, theta, inner, step_sizes, n_tasks=outer.n_tasks, names=names)
        return policy.distribution(adapted, outer.observations).detach()


def meta_objective(
    policy: GaussianMLPPolicy,
    theta: Mapping[str, Tensor],
    inner: Sequence[Episodes],
    outer: Episodes,
    step_sizes: StepSizes,
    old: Gaussian,
    first_order: bool = False,
    names: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """(post-update surrogate averaged over tasks, mean KL) as functions of theta, through the
    inner steps (graph kept unless under torch.no_grad())."""
    outer = outer.with_task_dim()
    adapted = adapt(policy, theta, inner, step_sizes, first_order, n_tasks=outer.n_tasks,
                    names=names)
    new = policy.distribution(adapted, outer.observations)
    return surrogate_loss(new, old, outer).mean(), mean_kl(new, old, outer.mask)


def maml_trpo_step(
    policy: GaussianMLPPolicy,
    theta: Mapping[str, Tensor],
    inner: Sequence[Episodes],
    outer: Episodes,
    step_sizes: StepSizes,
    config: TRPOConfig | None = None,
    first_order: bool = False,
    names: Sequence[str] | None = None,
    gauss_newton: bool = True,
) -> TRPOResult:
    """One MAML-TRPO meta-update of `theta` (leaf tensors, e.g. `policy.params()`, changed in
    place): TRPO on the post-update surrogate with the post-update mean KL as constraint, both
    differentiated through the inner VPG steps. The KL's Hessian-vector products are exact: with
    one inner step in the Gauss-Newton form (`rl.fisher`, equal at the old policy, cheaper),
    else by differentiating the KL's gradient."""
    config = config or TRPOConfig()
    old = post_update_distribution(policy, theta, inner, outer, step_sizes, names)

    def objective() -> tuple[Tensor, Tensor]:
        return meta_objective(policy, theta, inner, outer, step_sizes, old, first_order, names)

    product = None
    if gauss_newton and len(inner) == 1:  # the same product without third derivatives

        product = gauss_newton_kl_product(policy, theta, inner[0], outer, step_sizes,
                                          config.damping, first_order, names)
    return trpo_step(objective, list(theta.values()), config, product)
