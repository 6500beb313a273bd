"""The learning pieces of MAML-TRPO (maml_bench/rl): policy, baseline, returns, meta-gradients
and TRPO, each against an independent computation; gradient checks in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maml_bench.rl.baseline import (
    baseline_features,
    fit_linear_baseline,
    linear_feature_baseline,
)
from maml_bench.rl.episodes import Episodes, masked_mean, stack_tasks
from maml_bench.rl.maml_rl import (
    adapt,
    inner_step_sizes,
    maml_trpo_step,
    meta_objective,
    post_update_distribution,
    surrogate_loss,
)
from maml_bench.rl.policy import GaussianMLPPolicy
from maml_bench.rl.returns import (
    discounted_returns,
    gae_advantages,
    process_episodes,
    standardize_advantages,
)
from maml_bench.rl.trpo import TRPOConfig, conjugate_gradient, flatten, make_hvp, trpo_step

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers


def tiny_policy(seed: int = 0) -> GaussianMLPPolicy:
    """obs 2, hidden (4, 4), act 2, float64, with a non-trivial log-std and biases (a generic
    point, not the symmetric initialisation)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, (4, 4)).double()
    with torch.no_grad():
        policy.log_std.uniform_(-0.4, 0.4)
        for name, p in policy.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.3, 0.3)
    return policy


def synthetic_episodes(policy: GaussianMLPPolicy, seed: int, n_tasks: int = 2, horizon: int = 6,
                       width: int = 3) -> Episodes:
    """Episodes of n_tasks tasks sampled from `policy`, some ending before the horizon, with
    per-task rewards (distance to a task goal) and processed advantages."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n_tasks, horizon, width, 2, generator=g, dtype=F64)
    actions = policy.sample(policy.params(), obs, g)
    goals = torch.rand(n_tasks, 1, 1, 2, generator=g, dtype=F64) - 0.5
    rewards = -(obs + 0.1 * actions - goals).norm(dim=-1)
    lengths = torch.randint(2, horizon + 1, (n_tasks, 1, width), generator=g)
    mask = (torch.arange(horizon).view(1, horizon, 1) < lengths).to(F64)
    mask[:, :, 0] = 1.0  # at least one full-length episode per task
    return process_episodes(Episodes(obs * mask[..., None], actions * mask[..., None],
                                     rewards * mask, mask))


def maml_setup(seed: int = 0, steps: int = 1):
    policy = tiny_policy(seed)
    theta = policy.params()
    inner = [synthetic_episodes(policy, 100 + seed * 10 + k) for k in range(steps)]
    outer = synthetic_episodes(policy, 200 + seed)
    lrs = inner_step_sizes(0.3, steps)
    return policy, theta, inner, outer, lrs


def perturbed(theta: dict[str, torch.Tensor], scale: float = 0.05) -> dict[str, torch.Tensor]:
    """New leaf parameters near theta (a seeded random offset)."""
    g = torch.Generator().manual_seed(42)
    return {k: (v.detach() + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
                ).requires_grad_() for k, v in theta.items()}


def unflatten_like(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for k, v in like.items():
        out[k] = flat[offset: offset + v.numel()].view_as(v)
        offset += v.numel()
    return out


def central_fd_gradient(f, theta: dict[str, torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of the scalar f(params dict) over every coordinate."""
    x0 = flatten([v.detach() for v in theta.values()])
    grad = torch.zeros_like(x0)
    with torch.no_grad():
        for i in range(x0.numel()):
            e = torch.zeros_like(x0)
            e[i] = eps
            grad[i] = (f(unflatten_like(x0 + e, theta)) - f(unflatten_like(x0 - e, theta))) / (
                2 * eps)
    return grad


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# ----------------------------------------------------------------------------- policy


def test_policy_log_prob_matches_torch_normal_unbatched_and_batched():
    policy = tiny_policy()
    theta = policy.params()
    obs = torch.randn(5, 3, 2, dtype=F64)
    actions = torch.randn(5, 3, 2, dtype=F64)
    dist = policy.distribution(theta, obs)
    ref = torch.distributions.Normal(dist.mean, dist.log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(policy.log_prob(theta, obs, actions), ref, rtol=1e-12, atol=1e-12)
    assert policy.log_prob(theta, obs, actions).shape == (5, 3)

    # batched params (a different theta per task) == each task on its own
    per_task = [{k: v.detach() + 0.1 * i * torch.randn_like(v) for k, v in theta.items()}
                for i in range(3)]
    batched = {k: torch.stack([p[k] for p in per_task]) for k in theta}
    obs_b, act_b = torch.randn(3, 5, 4, 2, dtype=F64), torch.randn(3, 5, 4, 2, dtype=F64)
    lp = policy.log_prob(batched, obs_b, act_b)
    for i in range(3):
        d = policy.distribution(per_task[i], obs_b[i])
        ref = torch.distributions.Normal(d.mean, d.log_std.exp()).log_prob(act_b[i]).sum(-1)
        torch.testing.assert_close(lp[i], ref, rtol=1e-12, atol=1e-12)


def test_policy_init_and_min_std():
    policy = GaussianMLPPolicy(3, 2)
    shapes = [tuple(layer.weight.shape) for layer in policy.layers]
    assert shapes == [(100, 3), (100, 100), (2, 100)]
    assert torch.equal(policy.log_std, torch.zeros(2))  # std 1, as rllab
    assert all(torch.equal(layer.bias, torch.zeros_like(layer.bias)) for layer in policy.layers)
    params = {**policy.params(), "log_std": torch.full((2,), -50.0)}
    assert torch.allclose(policy.distribution(params, torch.zeros(3)).log_std,
                          torch.full((2,), math.log(1e-6)))


def test_policy_sampling_seeded_and_reproducible():
    policy = tiny_policy()
    theta = policy.params()
    obs = torch.randn(4000, 2, dtype=F64)
    a1 = policy.sample(theta, obs, torch.Generator().manual_seed(7))
    a2 = policy.sample(theta, obs, torch.Generator().manual_seed(7))
    a3 = policy.sample(theta, obs, torch.Generator().manual_seed(8))
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    assert not a1.requires_grad
    dist = policy.distribution(theta, obs)
    z = (a1 - dist.mean) / dist.log_std.exp()  # standard normal if sampling is right
    assert z.mean(0).abs().max() < 0.08 and (z.std(0) - 1).abs().max() < 0.08


# ----------------------------------------------------------------------------- episodes


def test_stack_tasks_pads_with_mask_zero():
    a = Episodes(torch.ones(3, 2, 2), torch.ones(3, 2, 1), torch.ones(3, 2), torch.ones(3, 2))
    b = Episodes(torch.ones(5, 1, 2), torch.ones(5, 1, 1), torch.ones(5, 1), torch.ones(5, 1))
    s = stack_tasks([a, b])
    assert s.observations.shape == (2, 5, 2, 2) and s.n_tasks == 2
    assert s.mask.sum((-2, -1)).tolist() == [6.0, 5.0]
    assert torch.equal(s.task(0).rewards[:3, :2], a.rewards)
    assert a.with_task_dim().observations.shape == (1, 3, 2, 2)
    assert torch.equal(masked_mean(s.rewards, s.mask), torch.ones(2))


# ----------------------------------------------------------------------------- baseline


def rllab_fit_predict(obs: np.ndarray, returns: np.ndarray, lengths: list[int],
                      reg: float = 1e-5) -> list[np.ndarray]:
    """rllab's LinearFeatureBaseline, transcribed: paths as lists, fit then predict."""
    def features(o):
        o = np.clip(o, -10, 10)
        n = len(o)
        al = np.arange(n).reshape(-1, 1) / 100.0
        return np.concatenate([o, o ** 2, al, al ** 2, al ** 3, np.ones((n, 1))], axis=1)

    paths = [(obs[: n, b], returns[: n, b]) for b, n in enumerate(lengths)]
    featmat = np.concatenate([features(o) for o, _ in paths])
    rets = np.concatenate([r for _, r in paths])
    coeffs = np.linalg.lstsq(featmat.T @ featmat + reg * np.identity(featmat.shape[1]),
                             featmat.T @ rets, rcond=None)[0]
    return [features(o) @ coeffs for o, _ in paths]


def test_baseline_matches_rllab_with_variable_lengths_and_junk_padding():
    rng = np.random.default_rng(0)
    horizon, lengths = 30, [30, 12, 25, 3]
    obs = rng.normal(size=(horizon, 4, 3)) * 4  # some beyond the clip at 10
    obs[0, 0, 0] = 25.0
    rets = rng.normal(size=(horizon, 4))
    mask = np.zeros((horizon, 4))
    for b, n in enumerate(lengths):
        mask[:n, b] = 1
        obs[n:, b] = 1e6  # finite junk in padded steps must not matter
        rets[n:, b] = -1e6
    expected = rllab_fit_predict(obs, rets, lengths)
    got = linear_feature_baseline(torch.tensor(obs), torch.tensor(rets), torch.tensor(mask))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(got[:n, b].numpy(), expected[b], rtol=1e-7, atol=1e-9)
        assert torch.all(got[n:, b] == 0)
    feats = baseline_features(torch.tensor(obs[:, :1]))
    assert feats.shape == (horizon, 1, 10) and feats[0, 0, 0] == 10.0 and feats[0, 0, 3] == 100.0
    torch.testing.assert_close(feats[7, 0, 6:], torch.tensor([0.07, 0.07**2, 0.07**3, 1.0],
                                                             dtype=F64))


def test_baseline_recovers_exactly_linear_target_per_task():
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(2, 60, 5, 2, generator=g, dtype=F64) * 4 - 2  # two tasks
    mask = torch.ones(2, 60, 5, dtype=F64)
    w = torch.randn(2, 8, generator=g, dtype=F64)  # a different target per task
    target = (baseline_features(obs) * w[:, None, None, :]).sum(-1)
    coeffs = fit_linear_baseline(obs, target, mask, reg_coeff=1e-12)
    torch.testing.assert_close(coeffs, w, rtol=0, atol=1e-5)
    # with the paper's ridge 1e-5 the fit is slightly shrunk, but the values still match
    pred = linear_feature_baseline(obs, target, mask)
    assert (pred - target).abs().max() < 1e-3 * target.abs().max()


def test_baseline_singular_features_and_zero_rewards_are_finite():
    horizon, width = 20, 4
    obs = torch.zeros(horizon, width, 3)
    obs[..., 1] = 0.5  # a constant dim: duplicates the bias column
    obs[..., 2] = torch.randn(horizon, width)
    obs = torch.cat([obs, obs[..., 2:]], dim=-1)  # a duplicated dim
    mask = torch.ones(horizon, width)
    zero = linear_feature_baseline(obs, torch.zeros(horizon, width), mask)
    assert torch.equal(zero, torch.zeros_like(zero))
    returns = torch.randn(horizon, width)
    values = linear_feature_baseline(obs, returns, mask)
    assert values.dtype == torch.float32 and torch.isfinite(values).all()
    coeffs = fit_linear_baseline(obs, returns, mask)
    assert coeffs.dtype == torch.float64 and torch.isfinite(coeffs).all()
    # a single one-step episode: 1 equation, 12 unknowns
    one = torch.zeros(horizon, width)
    one[0, 0] = 1
    assert torch.isfinite(linear_feature_baseline(obs, returns, one)).all()


def test_baseline_retries_with_larger_ridge_only_for_failed_tasks(monkeypatch):
    calls = []
    real = torch.linalg.lstsq

    def flaky(a, b, **kwargs):
        calls.append((a.shape[0], a[0, 0, 0].item()))
        out = real(a, b, **kwargs)
        if len(calls) == 1:  # the first solve fails for task 1
            out.solution[1] = float("nan")
        return out

    monkeypatch.setattr(torch.linalg, "lstsq", flaky)
    obs = torch.randn(3, 10, 2, 1, dtype=F64)
    coeffs = fit_linear_baseline(obs, torch.randn(3, 10, 2, dtype=F64), torch.ones(3, 10, 2))
    assert [c[0] for c in calls] == [3, 1]  # resolved task 1 alone
    assert torch.isfinite(coeffs).all()
    gram11 = (baseline_features(obs[1]).flatten(0, 1)[:, 0] ** 2).sum().item()
    assert calls[1][1] == pytest.approx(gram11 + 1e-4, rel=1e-12)  # reg x 10


# ----------------------------------------------------------------------------- returns


def test_returns_and_gae_by_hand_with_an_early_end():
    gamma = 0.9
    # [T=4, B=2]: episode 0 runs 4 steps, episode 1 ends after 2 (junk after)
    rewards = torch.tensor([[1.0, 5.0], [2.0, 6.0], [3.0, 99.0], [4.0, 99.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]], dtype=F64)
    values = torch.tensor([[0.5, 1.0], [-1.0, 2.0], [0.25, 7.0], [2.0, 7.0]], dtype=F64)
    r0 = [4.0]
    for r in (3.0, 2.0, 1.0):
        r0.insert(0, r + gamma * r0[0])
    expected_returns = torch.tensor([[r0[0], 5 + gamma * 6], [r0[1], 6], [r0[2], 0], [r0[3], 0]],
                                    dtype=F64)
    returns = discounted_returns(rewards, mask, gamma)
    torch.testing.assert_close(returns, expected_returns, rtol=1e-14, atol=1e-14)
    adv = gae_advantages(rewards, values, mask, gamma, 1.0)
    torch.testing.assert_close(adv, (expected_returns - values) * mask, rtol=1e-14, atol=1e-14)

    lam = 0.5  # the general recursion, by hand: deltas with V = 0 after the last step
    d1 = [5 + gamma * 2.0 - 1.0, 6 + gamma * 0 - 2.0]
    d0 = [1 + gamma * -1.0 - 0.5, 2 + gamma * 0.25 + 1.0, 3 + gamma * 2.0 - 0.25, 4 - 2.0]
    a0 = [d0[3]]
    for d in reversed(d0[:3]):
        a0.insert(0, d + gamma * lam * a0[0])
    a1 = [d1[0] + gamma * lam * d1[1], d1[1]]
    expected = torch.tensor([[a0[0], a1[0]], [a0[1], a1[1]], [a0[2], 0], [a0[3], 0]], dtype=F64)
    torch.testing.assert_close(gae_advantages(rewards, values, mask, gamma, lam), expected,
                               rtol=1e-14, atol=1e-14)


def test_standardized_advantages_per_task_over_valid_steps():
    g = torch.Generator().manual_seed(3)
    adv = torch.randn(3, 7, 4, generator=g, dtype=F64) * 5 + 2
    mask = (torch.rand(3, 7, 4, generator=g) < 0.7).to(F64)
    mask[:, 0] = 1
    out = standardize_advantages(adv, mask)
    for i in range(3):
        valid = out[i][mask[i] > 0]
        assert abs(valid.mean().item()) < 1e-12
        assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
        assert torch.all(out[i][mask[i] == 0] == 0)
    constant = standardize_advantages(torch.full((5, 2), 3.0), torch.ones(5, 2))
    assert torch.equal(constant, torch.zeros(5, 2))  # epsilon guard: no 0/0


def test_process_episodes_gae_lambda_one_is_returns_minus_baseline():
    policy = tiny_policy()
    eps = synthetic_episodes(policy, 5)
    raw = process_episodes(eps, gamma=0.99, standardize=False)
    torch.testing.assert_close(raw.advantages, (raw.returns - raw.baselines) * eps.mask,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        raw.baselines, linear_feature_baseline(eps.observations, raw.returns, eps.mask))
    # per task: fitting task 1 alone gives the same baseline
    alone = linear_feature_baseline(eps.observations[1], raw.returns[1], eps.mask[1])
    torch.testing.assert_close(raw.baselines[1], alone)


# ----------------------------------------------------------------------------- meta-gradients


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_meta_gradient_matches_central_finite_differences(steps):
    policy, theta, inner, outer, lrs = maml_setup(seed=steps, steps=steps)
    old = post_update_distribution(policy, theta, inner, outer, lrs)
    theta = perturbed(theta)  # away from the old policy: the ratio is not 1 everywhere
    loss, _ = meta_objective(policy, theta, inner, outer, lrs, old)
    grad = flatten(torch.autograd.grad(loss, list(theta.values())))

    def f(params):
        return meta_objective(policy, params, inner, outer, lrs, old)[0]

    fd = central_fd_gradient(f, theta)
    assert rel_err(grad, fd) < 1e-7, rel_err(grad, fd)

    # first order must differ here (inner curvature), and equal the post-update gradient
    fo_loss, _ = meta_objective(policy, theta, inner, outer, lrs, old, first_order=True)
    fo = flatten(torch.autograd.grad(fo_loss, list(theta.values())))
    assert rel_err(fo, fd) > 1e-2
    adapted = {k: v.detach().requires_grad_()
               for k, v in adapt(policy, theta, inner, lrs, n_tasks=2).items()}
    new = policy.distribution(adapted, outer.observations)
    post = torch.autograd.grad(surrogate_loss(new, old, outer).mean(), list(adapted.values()))
    torch.testing.assert_close(fo, flatten([g.sum(0) for g in post]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("at_old", [True, False])
def test_post_adaptation_kl_hvp_matches_finite_differences_of_its_gradient(at_old):
    policy, theta, inner, outer, lrs = maml_setup(seed=3, steps=1)
    old = post_update_distribution(policy, theta, inner, outer, lrs)
    if not at_old:  # a point where the KL and its gradient are not zero
        theta = perturbed(theta)
    params = list(theta.values())

    def kl_grad(values):
        p = {k: v.detach().requires_grad_() for k, v in unflatten_like(values, theta).items()}
        kl = meta_objective(policy, p, inner, outer, lrs, old)[1]
        return flatten(torch.autograd.grad(kl, list(p.values())))

    kl = meta_objective(policy, theta, inner, outer, lrs, old)[1]
    hvp = make_hvp(kl, params)
    x0 = flatten([p.detach() for p in params])
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):
        v = torch.randn(x0.shape, generator=g, dtype=F64)
        fd = (kl_grad(x0 + eps * v) - kl_grad(x0 - eps * v)) / (2 * eps)
        hv = hvp(v)
        assert rel_err(hv, fd) < 1e-6, rel_err(hv, fd)
        if at_old:
            assert (v @ hv).item() > 0  # J^T F J: positive semi-definite at the old policy
    damped = make_hvp(meta_objective(policy, theta, inner, outer, lrs, old)[1], params, 1e-5)
    torch.testing.assert_close(damped(v), hv + 1e-5 * v)


# ----------------------------------------------------------------------------- CG and TRPO


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(8, 8, generator=g, dtype=F64)
    a = q @ q.T + 0.5 * torch.eye(8, dtype=F64)
    b = torch.randn(8, generator=g, dtype=F64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=10, residual_tol=1e-10)
    r = b - a @ x
    assert (r @ r).item() < 1e-10
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)
    calls = []
    x = conjugate_gradient(lambda v: calls.append(1) or 2 * v, b, iters=10)
    assert len(calls) == 1 and torch.allclose(x, b / 2)  # stops once r.r < tol
    assert torch.equal(conjugate_gradient(lambda v: a @ v, torch.zeros(8, dtype=F64)),
                       torch.zeros(8, dtype=F64))  # b = 0: no 0/0


def test_maml_trpo_step_respects_kl_and_improves_surrogate():
    policy, theta, inner, outer, lrs = maml_setup(seed=5, steps=1)
    old = post_update_distribution(policy, theta, inner, outer, lrs)
    before = {k: v.detach().clone() for k, v in theta.items()}
    with torch.no_grad():
        loss0, kl0 = meta_objective(policy, theta, inner, outer, lrs, old)
    config = TRPOConfig()
    result = maml_trpo_step(policy, theta, inner, outer, lrs, config)
    assert result.accepted and kl0.item() == 0.0
    assert not all(torch.equal(before[k], v) for k, v in theta.items())
    with torch.no_grad():  # measured afresh against the pre-step post-update policy
        loss1, kl1 = meta_objective(policy, theta, inner, outer, lrs, old)
    assert 0 < kl1.item() <= config.max_kl * (1 + 1e-9)
    assert loss1.item() < loss0.item()
    assert result.loss_after == pytest.approx(loss1.item(), rel=1e-9)
    assert result.kl_after == pytest.approx(kl1.item(), rel=1e-9)


def quadratic_objective(x: torch.Tensor, x0: torch.Tensor, curvature: float, quartic: float):
    """loss = 1.(x - x0) + curvature |x - x0|^2 / 2; KL = |x - x0|^2 / 2 + quartic |x - x0|^4."""
    def objective():
        d = x - x0
        return d.sum() + 0.5 * curvature * d @ d, 0.5 * d @ d + quartic * (d @ d) ** 2

    return objective


def test_trpo_line_search_failure_restores_parameters_exactly():
    x = torch.tensor([0.3, -1.7, 2.2, 0.1], dtype=F64, requires_grad=True)
    x0 = x.detach().clone()
    before = x.detach().clone()
    # The model step moves |d| = sqrt(2 max_kl) = 0.14 along -1; the loss's curvature is so
    # large that every backtracked point (down to 0.8^14 of it) is worse than the start.
    result = trpo_step(quadratic_objective(x, x0, 1e4, 0.0), [x], TRPOConfig())
    assert not result.accepted and result.backtracks == 15
    assert torch.equal(x.detach(), before)  # bit for bit
    assert result.loss_after == result.loss_before


def test_trpo_line_search_backtracks_until_kl_holds():
    x = torch.zeros(4, dtype=F64, requires_grad=True)
    x0 = x.detach().clone()
    config = TRPOConfig()
    # the quartic KL term is invisible to the quadratic model: the full step overshoots
    result = trpo_step(quadratic_objective(x, x0, 0.0, 50.0), [x], config)
    assert result.accepted and result.backtracks > 1
    d = x.detach() - x0
    kl = 0.5 * d @ d + 50.0 * (d @ d) ** 2
    assert kl.item() <= config.max_kl
    assert result.kl_after == pytest.approx(kl.item())
    assert result.loss_after < result.loss_before


@pytest.mark.parametrize("steps", [1, 2])
def test_context_vector_meta_gradient_adapts_z_only_and_matches_finite_differences(steps):
    """The RL context vector (paper App. C.2): only z takes the inner steps; the meta-gradient
    reaches every parameter through them, checked coordinate-wise in float64."""
    from maml_bench.rl.policy import ContextPolicy

    torch.manual_seed(steps)
    policy = ContextPolicy(2, 2, 3, (4, 4)).double()
    with torch.no_grad():
        policy.context.uniform_(-0.5, 0.5)
    theta = policy.params()
    inner = [synthetic_episodes(policy, 300 + k) for k in range(steps)]
    outer = synthetic_episodes(policy, 400)
    lrs = inner_step_sizes(0.3, steps)
    names = ["context"]
    adapted = adapt(policy, theta, inner, lrs, n_tasks=2, names=names)
    for k, v in adapted.items():  # the network is shared, z moved per task
        same = torch.equal(v[0], theta[k].detach()) and torch.equal(v[1], theta[k].detach())
        assert same == (k != "context"), k
    old = post_update_distribution(policy, theta, inner, outer, lrs, names)
    theta = perturbed(theta)
    loss, _ = meta_objective(policy, theta, inner, outer, lrs, old, names=names)
    grad = flatten(torch.autograd.grad(loss, list(theta.values())))

    def f(params):
        return meta_objective(policy, params, inner, outer, lrs, old, names=names)[0]

    fd = central_fd_gradient(f, theta)
    assert rel_err(grad, fd) < 1e-7, rel_err(grad, fd)


@pytest.mark.parametrize("case", ["second-order", "first-order", "context-vector"])
def test_gauss_newton_product_equals_the_exact_kl_hvp_at_the_old_policy(case):
    """At the current theta the KL's first derivatives vanish, so the Gauss-Newton product
    (rl/fisher.py, no third derivatives) must equal the exact Hessian-vector product."""
    from maml_bench.rl.fisher import gauss_newton_kl_product
    from maml_bench.rl.policy import ContextPolicy
    from maml_bench.rl.trpo import make_hvp

    first_order = case == "first-order"
    names = ["context"] if case == "context-vector" else None
    if names:
        torch.manual_seed(5)
        policy = ContextPolicy(2, 2, 3, (4, 4)).double()
        with torch.no_grad():
            policy.context.uniform_(-0.5, 0.5)
        theta = policy.params()
        inner = [synthetic_episodes(policy, 500)]
        outer = synthetic_episodes(policy, 501)
        lrs = inner_step_sizes(0.3, 1)
    else:
        policy, theta, inner, outer, lrs = maml_setup(seed=4, steps=1)
    old = post_update_distribution(policy, theta, inner, outer, lrs, names)
    _, kl = meta_objective(policy, theta, inner, outer, lrs, old, first_order, names)
    exact = make_hvp(kl, list(theta.values()), damping=1e-5)
    fast = gauss_newton_kl_product(policy, theta, inner[0], outer, lrs, damping=1e-5,
                                   first_order=first_order, names=names)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = torch.randn(sum(p.numel() for p in theta.values()), generator=gen, dtype=F64)
        assert rel_err(fast(v), exact(v)) < 1e-9, rel_err(fast(v), exact(v))
