"""The trajectory sampler (maml_bench/rl/sampler.py): layout and mask, reproducibility across
seeds and worker counts, per-task parameters, rewards against the env's own, early termination,
a dead worker's error, and MuJoCo."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")

from maml_bench.rl.envs import sample_tasks  # noqa: E402
from maml_bench.rl.policy import GaussianMLPPolicy  # noqa: E402
from maml_bench.rl.sampler import (  # noqa: E402
    Sampler,
    reset_seed,
    sample_episodes,
    scale_actions,
)

NAV = "maml_bench/Navigation2D-v0"
CHEETAH = "maml_bench/HalfCheetahVel-v0"
FIELDS = ("observations", "actions", "rewards", "mask")


@pytest.fixture(autouse=True)
def _mujoco_log_in_tmp(tmp_path, monkeypatch):
    # MuJoCo appends warnings to MUJOCO_LOG.TXT in the working directory (workers inherit it)
    monkeypatch.chdir(tmp_path)


def policy_for(obs_dim: int = 2, act_dim: int = 2, seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(16, 16))


def constant_params(policy: GaussianMLPPolicy, means: list[tuple[float, float]]) -> dict:
    """Per-task params whose mean action is ``means[i]`` everywhere (zero output weights)."""
    n = len(means)
    params = {k: v.detach().unsqueeze(0).repeat(n, *(1,) * v.dim())
              for k, v in policy.params().items()}
    last = len(policy.layers) - 1
    params[f"layers.{last}.weight"].zero_()
    params[f"layers.{last}.bias"].copy_(torch.tensor(means))
    return params


def assert_same(a, b) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def nav_tasks(n: int, seed: int = 0) -> list[dict]:
    return sample_tasks(NAV, n, np.random.default_rng(seed))


def test_shapes_mask_and_layout():
    policy = policy_for()
    tasks = nav_tasks(3)
    with Sampler(NAV, episodes_per_task=4, max_tasks=5, horizon=15,
                 env_kwargs={"oracle": False}) as sampler:
        episodes = sampler.sample(policy, policy.params(), tasks, seed=0)
    assert episodes.has_task_dim and episodes.n_tasks == 3
    assert episodes.observations.shape == (3, 15, 4, 2)
    assert episodes.actions.shape == (3, 15, 4, 2)
    assert episodes.rewards.shape == episodes.mask.shape == (3, 15, 4)
    for name in FIELDS:
        tensor = getattr(episodes, name)
        assert tensor.dtype == torch.float32 and not tensor.requires_grad
    # every episode starts at the origin; the mask is a prefix of ones
    assert torch.equal(episodes.observations[:, 0], torch.zeros(3, 4, 2))
    assert torch.all(episodes.mask[:, 1:] <= episodes.mask[:, :-1])
    assert episodes.mask[:, 0].eq(1).all()
    # the default horizon is the registered max_episode_steps
    with Sampler(NAV, 1, 1) as sampler:
        assert sampler.horizon == 100


def test_oracle_observation_carries_each_task():
    """env_kwargs reach every env and task i lands in the envs of row i."""
    policy = policy_for(obs_dim=4)
    tasks = nav_tasks(3, seed=1)
    episodes = sample_episodes(NAV, tasks, policy, policy.params(), episodes_per_task=2,
                               seed=3, horizon=5, env_kwargs={"oracle": True})
    for i, task in enumerate(tasks):
        goal = torch.tensor(task["goal"], dtype=torch.float32)
        assert torch.equal(episodes.observations[i, :, :, 2:],
                           goal.expand(5, 2, 2)), f"task {i}"


def test_reproducible_and_seed_dependent():
    policy = policy_for()
    tasks = nav_tasks(2)
    with Sampler(NAV, 3, 2, horizon=20) as sampler:
        first = sampler.sample(policy, policy.params(), tasks, seed=7)
        other = sampler.sample(policy, policy.params(), tasks, seed=8)
        again = sampler.sample(policy, policy.params(), tasks, seed=7)
    assert_same(first, again)  # the envs are reused, and reset fully
    assert not torch.equal(first.actions, other.actions)
    # a fresh sampler gives the same data too
    fresh = sample_episodes(NAV, tasks, policy, policy.params(), 3, seed=7, horizon=20)
    assert_same(first, fresh)


def test_per_task_params_act_per_task():
    policy = policy_for()
    means = [(0.5, 0.0), (-0.5, 0.25), (2.0, -3.0)]  # the last one is clipped to (1, -1)
    tasks = [{"goal": (0.45, 0.45)}] * 3  # never reached by these straight lines
    horizon = 6
    with Sampler(NAV, 2, 3, horizon=horizon) as sampler:
        params = constant_params(policy, means)
        episodes = sampler.sample(policy, params, tasks, seed=0, deterministic=True)
        for i, mean in enumerate(means):
            assert torch.equal(episodes.actions[i], torch.tensor(mean).expand(horizon, 2, 2))
            # after t steps of 0.1 * clip(mean): observations[t] is the position after t steps
            velocity = 0.1 * np.clip(np.array(mean), -1.0, 1.0)
            np.testing.assert_allclose(episodes.observations[i, -1].numpy(),
                                       np.tile((horizon - 1) * velocity, (2, 1)), atol=1e-6)
        # sampled: each task draws around its own mean with its own std (per-task log-std)
        params["log_std"] = torch.tensor([[-9.0, -9.0], [0.0, 0.0], [-9.0, -9.0]])
        noisy = sampler.sample(policy, params, tasks, seed=0)
        spread = (noisy.actions - episodes.actions).abs().amax((1, 2, 3))
        assert spread[0] < 1e-3 and spread[2] < 1e-3 and spread[1] > 0.1
        # shared params give every task the same (zero-bias) policy
        shared = sampler.sample(policy, policy.params(), tasks, seed=0, deterministic=True)
        assert torch.equal(shared.actions[0], shared.actions[1])


def replay(env_id: str, episodes, tasks, seed: int, env_kwargs=None) -> None:
    """Re-run every recorded episode in a fresh env (gym.make, wrappers on), feeding it the
    scaled recorded actions; rewards, observations and episode ends must match exactly."""
    env = gym.make(env_id, **(env_kwargs or {}))
    low, high = env.action_space.low, env.action_space.high
    n, horizon, k = episodes.rewards.shape
    for i in range(n):
        for b in range(k):
            env.unwrapped.set_task(tasks[i])
            obs, _ = env.reset(seed=reset_seed(seed, i, b))
            valid = int(episodes.mask[i, :, b].sum())
            for t in range(valid):
                assert np.array_equal(obs.astype(np.float32),
                                      episodes.observations[i, t, b].numpy()), (i, b, t)
                action = scale_actions(episodes.actions[i, t, b].numpy(), low, high)
                obs, reward, terminated, truncated, _ = env.step(action)
                assert np.float32(reward) == episodes.rewards[i, t, b].item(), (i, b, t)
                assert (terminated or truncated) == (t == valid - 1 and valid < horizon)
    env.close()


def test_rewards_equal_the_envs_own():
    policy = policy_for()
    tasks = nav_tasks(3, seed=4)
    with Sampler(NAV, 2, 3, horizon=30) as sampler:
        episodes = sampler.sample(policy, policy.params(), tasks, seed=11)
    replay(NAV, episodes, tasks, seed=11)


def test_scaling_is_rllab_normalize():
    raw = np.array([[-3.0, -1.0], [-0.5, 0.0], [0.25, 2.0]], dtype=np.float32)
    nav = gym.make(NAV).action_space
    np.testing.assert_allclose(scale_actions(raw, nav.low, nav.high),
                               0.1 * np.clip(raw, -1, 1), atol=1e-8)
    unit = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    np.testing.assert_array_equal(scale_actions(raw, *unit), np.clip(raw, -1, 1))


def test_early_termination_masks_and_stops_stepping():
    """Steps of 0.05 along x: the goal (0.2, 0) is reached on step 4 (index 3), (0.05, 0) on
    the first; the terminating step is valid, everything after it is zero with mask 0."""
    policy = policy_for()
    tasks = [{"goal": (0.2, 0.0)}, {"goal": (0.05, 0.0)}, {"goal": (-0.4, 0.3)}]
    with Sampler(NAV, 2, 3, horizon=10) as sampler:
        params = constant_params(policy, [(0.5, 0.0)] * 3)
        episodes = sampler.sample(policy, params, tasks, seed=0, deterministic=True)
        lengths = episodes.mask.sum(1)  # [tasks, episodes]
        assert lengths.tolist() == [[4, 4], [1, 1], [10, 10]]
        for i, length in enumerate([4, 1, 10]):
            valid, padded = slice(0, length), slice(length, None)
            assert episodes.mask[i, valid].eq(1).all()
            for name in FIELDS:
                assert getattr(episodes, name)[i, padded].eq(0).all(), (i, name)
            if length < 10:  # the terminating step's reward (-distance, < 0.01 * sqrt 2)
                assert -0.015 < episodes.rewards[i, length - 1, 0].item() <= 0.0
        # finished envs were not stepped again (the nav env records its path: start + steps)
        paths = [len(env._path) - 1 for env in sampler._group.envs]
        assert paths == [4, 4, 1, 1, 10, 10]
    replay(NAV, episodes, tasks, seed=0)


def test_workers_give_identical_episodes():
    """2 workers (9 envs split 5 / 4, fewer tasks than max_tasks, early ends, per-task params;
    oracle observations, so a task routed to the wrong env shows) against the in-process
    sampler: bit-identical."""
    policy = policy_for(obs_dim=4)
    tasks = [{"goal": (0.1, 0.0)}, *nav_tasks(2, seed=5)]
    params = constant_params(policy, [(0.5, 0.0), (0.1, 0.2), (-0.3, 0.0)])
    for p in params.values():
        p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    oracle = {"oracle": True}
    with Sampler(NAV, 3, 4, horizon=25, env_kwargs=oracle) as local, \
            Sampler(NAV, 3, 4, horizon=25, env_kwargs=oracle, workers=2) as spread:
        assert len(spread.worker_pids) == 2
        for seed in (0, 1):
            assert_same(local.sample(policy, params, tasks, seed),
                        spread.sample(policy, params, tasks, seed))
        assert_same(local.sample(policy, policy.params(), tasks[:1], 2),
                    spread.sample(policy, policy.params(), tasks[:1], 2))


def test_dead_worker_raises_quickly_and_keeps_returned_data():
    policy = policy_for()
    zero = constant_params(policy, [(0.0, 0.0)])  # stays at the origin
    # horizon long enough that the second call is still running when the worker is killed
    with Sampler(NAV, 2, 1, horizon=500_000, workers=2) as sampler:
        done_at_once = sampler.sample(policy, zero, [{"goal": (0.0, 0.0)}], seed=0,
                                      deterministic=True)  # terminates on the first step
        kept = {name: getattr(done_at_once, name).clone() for name in FIELDS}
        victim = sampler.worker_pids[1]
        killed_at: list[float] = []

        def kill() -> None:
            killed_at.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)

        timer = threading.Timer(0.5, kill)
        timer.start()
        try:
            with pytest.raises(RuntimeError, match=r"worker 1 .*Navigation2D-v0.* died"):
                sampler.sample(policy, zero, [{"goal": (0.4, 0.4)}], seed=0,
                               deterministic=True)
        finally:
            timer.cancel()
        assert killed_at and time.monotonic() - killed_at[0] < 5.0
        with pytest.raises(RuntimeError, match="unusable"):
            sampler.sample(policy, zero, [{"goal": (0.4, 0.4)}], seed=0)
        pids = sampler.worker_pids
    for name in FIELDS:
        assert torch.equal(getattr(done_at_once, name), kept[name])
    assert done_at_once.mask[0, :, 0].sum() == 1
    for pid in pids:  # the surviving worker was shut down too
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_hung_worker_times_out():
    policy = policy_for()
    with Sampler(NAV, 1, 2, horizon=5, workers=2) as sampler:
        sampler.timeout = 1.0
        pids = sampler.worker_pids
        os.kill(pids[0], signal.SIGSTOP)  # alive but silent
        start = time.monotonic()
        with pytest.raises(RuntimeError, match=r"worker 0 .* did not answer within 1 s"):
            sampler.sample(policy, policy.params(), nav_tasks(2), seed=0)
        assert time.monotonic() - start < 5.0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_failure_is_one_line():
    with pytest.raises(RuntimeError, match=r"^sampler worker 0 .*Navigation2D-v0 failed: "
                                           r"TypeError.*bogus[^\n]*$"):
        Sampler(NAV, 1, 2, env_kwargs={"bogus": 1}, workers=2)


def test_workers_refused_inside_a_daemonic_process(monkeypatch):
    """A pool worker (a run with --jobs > 1) cannot have children: a clear error, not
    multiprocessing's bare assertion."""
    import maml_bench.rl.sampler as sampler_module

    monkeypatch.setattr(sampler_module.mp, "current_process",
                        lambda: type("Daemon", (), {"daemon": True})())
    with pytest.raises(RuntimeError, match="daemonic process.*use workers=1"):
        Sampler(NAV, 1, 2, workers=2)


def test_bad_arguments():
    policy = policy_for()
    tasks = nav_tasks(2)
    with Sampler(NAV, 2, 2, horizon=5) as sampler:
        with pytest.raises(ValueError, match="1 to 2"):
            sampler.sample(policy, policy.params(), nav_tasks(3), seed=0)
        with pytest.raises(ValueError, match="leading dimension"):
            sampler.sample(policy, constant_params(policy, [(0, 0)] * 3), tasks, seed=0)
        with pytest.raises(ValueError, match="seed"):
            sampler.sample(policy, policy.params(), tasks, seed=-1)
        with pytest.raises(ValueError, match="policy maps"):
            sampler.sample(policy_for(obs_dim=3), policy_for(obs_dim=3).params(), tasks, 0)
        with pytest.raises(ValueError, match="goal"):
            sampler.sample(policy, policy.params(), [{"velocity": 1.0}] * 2, seed=0)
    with pytest.raises(RuntimeError, match="closed"):
        sampler.sample(policy, policy.params(), tasks, seed=0)
    with pytest.raises(ValueError, match="episodes_per_task"):
        Sampler(NAV, 0, 2)


def test_params_with_grad_leave_no_graph():
    policy = policy_for()
    episodes = sample_episodes(NAV, nav_tasks(1), policy, policy.params(), 2, seed=0, horizon=3)
    assert not episodes.actions.requires_grad


def test_half_cheetah():
    pytest.importorskip("mujoco")
    policy = policy_for(obs_dim=17, act_dim=6)
    tasks = sample_tasks(CHEETAH, 2, np.random.default_rng(0))
    with Sampler(CHEETAH, 2, 2, horizon=10) as sampler:
        episodes = sampler.sample(policy, policy.params(), tasks, seed=5)
        assert_same(episodes, sampler.sample(policy, policy.params(), tasks, seed=5))
    with Sampler(CHEETAH, 2, 2, horizon=10, workers=2) as sampler:
        assert_same(episodes, sampler.sample(policy, policy.params(), tasks, seed=5))
    assert episodes.observations.shape == (2, 10, 2, 17)
    assert episodes.actions.shape == (2, 10, 2, 6)
    assert episodes.mask.eq(1).all()
    # reset noise differs per episode (seeded per (task, episode))
    assert not torch.equal(episodes.observations[0, 0, 0], episodes.observations[0, 0, 1])
    assert not torch.equal(episodes.observations[0, 0, 0], episodes.observations[1, 0, 0])
    replay(CHEETAH, episodes, tasks, seed=5)
