"""navigation2d-v2 follows the reference code (cbfinn/maml_rl, docs/rl.md "Protocol"): each
method's training and fine-tuning settings are the reference's values; the pretrained policy's
Adam update and every method's fine-tuning step are the policy-gradient steps they claim to be
(float64, against autograd and finite differences); one shared baseline is the per-task one on
the tasks' episodes taken together."""

from __future__ import annotations

import copy

import pytest

pytest.importorskip("gymnasium")

import torch  # noqa: E402

from maml_bench.algorithms import ALGORITHMS  # noqa: E402
from maml_bench.rl.episodes import Episodes  # noqa: E402
from maml_bench.rl.returns import process_episodes  # noqa: E402
from maml_bench.rl.vpg import vpg_loss  # noqa: E402
from maml_bench.runner import plan_runs  # noqa: E402
from maml_bench.tasks.rl import MetaRL, average_return  # noqa: E402

V2 = "navigation2d-v2"


def paper_config(method: str, tmp_path):
    (run,) = plan_runs(V2, "paper", [], [method], 1, tmp_path)
    return run.config


#: (method, settings) as the reference's scripts set them: maml_trpo_point.py (MAML, and the
#: pretrained policy with use_maml=False), trpo_point.py (oracle), test_maml_point.py (test)
REFERENCE = {
    "maml-trpo": {"inner_lr": 0.5, "meta_batch": 20, "train_shots": 20, "iterations": 100,
                  "max_kl": 0.01, "hidden": (100, 100), "nonlinearity": "relu",
                  "evaluate_checkpoint": "last"},
    "rl-pretrained": {"pretrain_update": "adam", "pretrain_lr": 1e-3, "meta_batch": 20,
                      "train_shots": 20, "iterations": 100, "evaluate_checkpoint": "last"},
    "rl-random": {"nonlinearity": "tanh", "hidden": (100, 100)},
    "rl-oracle": {"pretrain_update": "trpo", "meta_batch": 10, "train_shots": 1,
                  "baseline": "shared", "max_kl": 0.01, "iterations": 100,
                  "evaluate_checkpoint": "last"},
}


@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_each_method_has_the_reference_settings(method, tmp_path):
    config = paper_config(method, tmp_path)
    for key, value in REFERENCE[method].items():
        assert getattr(config, key) == value, (method, key)
    # test_maml_point.py: 40 goals, 4,000 steps (40 paths of 100) per fine-tuning step
    assert config.test_tasks == 40 and config.eval_shots == (40,) and config.eval_steps == 3
    assert config.gamma == 0.99 and config.gae_lambda == 1.0


@pytest.mark.parametrize("method", ["maml-trpo", "rl-pretrained", "rl-random",
                                    "rl-context-vector"])
def test_every_method_fine_tunes_with_half_then_a_quarter(method, tmp_path):
    config = paper_config(method, tmp_path)
    algo = ALGORITHMS.get(method)(MetaRL(config), config, 0)
    assert algo.test_step_sizes(3) == [0.5, 0.25, 0.25]


def tiny_algo(method: str, tmp_path, *sets: str):
    (run,) = plan_runs(V2, "tiny", list(sets), [method], 1, tmp_path)
    return ALGORITHMS.get(method)(MetaRL(run.config), run.config, 0)


def test_the_random_policy_has_tanh_units(tmp_path):
    algo = tiny_algo("rl-random", tmp_path)
    obs = torch.randn(5, algo.benchmark.obs_dim)
    h = obs
    for layer in algo.policy.layers[:-1]:
        h = torch.tanh(layer(h))
    assert torch.allclose(algo.policy(obs), algo.policy.layers[-1](h))


def test_the_pretrained_update_is_one_adam_step_on_the_policy_gradient_loss(tmp_path):
    algo = tiny_algo("rl-pretrained", tmp_path)
    manual = copy.deepcopy(algo.policy)
    optimizer = torch.optim.Adam(manual.parameters(), lr=algo.config.pretrain_lr)
    # the episodes the step will draw, drawn here from a copy of its generator state
    gen = torch.Generator()
    gen.set_state(algo.gen.get_state())
    tasks = algo.benchmark.sample_tasks(gen, algo.config.meta_batch)
    episodes = algo.benchmark.sample(manual, {k: v.detach() for k, v in manual.params().items()},
                                     tasks, algo.config.train_shots, gen)
    vpg_loss(manual, manual.params(), episodes).mean().backward()
    optimizer.step()
    algo.train_step(0)
    for name, value in algo.policy.named_parameters():
        assert torch.equal(value, dict(manual.named_parameters())[name]), name


def test_a_fine_tuning_step_is_the_vanilla_policy_gradient_step(tmp_path):
    """float64: the adapted policy equals theta - alpha grad L_VPG, the gradient checked against
    central finite differences of L_VPG itself."""
    algo = tiny_algo("rl-pretrained", tmp_path)
    algo.policy.double()
    with torch.no_grad():  # zero biases and the start at (0, 0) put every unit on ReLU's kink
        for value in algo.policy.parameters():
            value.add_(0.1 * torch.randn(value.shape, generator=torch.Generator().manual_seed(2),
                                         dtype=value.dtype))
    theta = {k: v.detach() for k, v in algo.policy.named_parameters()}
    tasks = algo.benchmark.test_tasks()[:1]
    episodes = algo.sample(theta, tasks, 3, torch.Generator().manual_seed(1))
    episodes = Episodes(**{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                           for k, v in vars(episodes).items()})
    (alpha,) = algo.test_step_sizes(1)
    adapted = algo.adapted([episodes], [alpha], 1, theta)

    leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
    grads = torch.autograd.grad(vpg_loss(algo.policy, leaves, episodes).sum(),
                                list(leaves.values()))
    for (name, value), grad in zip(theta.items(), grads, strict=True):
        assert torch.allclose(adapted[name][0], value - alpha * grad, rtol=1e-12, atol=1e-12)

    def loss_at(name: str, index: int, shift: float) -> float:
        moved = {k: v.clone() for k, v in theta.items()}
        moved[name].view(-1)[index] += shift
        return vpg_loss(algo.policy, moved, episodes).sum().item()

    eps = 1e-6
    for (name, value), grad in zip(theta.items(), grads, strict=True):
        for index in torch.randperm(value.numel(), generator=torch.Generator().manual_seed(0))[:3]:
            index = int(index)
            fd = (loss_at(name, index, eps) - loss_at(name, index, -eps)) / (2 * eps)
            assert abs(fd - grad.view(-1)[index].item()) <= 1e-6 * (1 + abs(fd)), name


def test_a_shared_baseline_is_the_per_task_one_on_all_episodes_together():
    gen = torch.Generator().manual_seed(0)
    n, t, b, d = 3, 7, 2, 2
    mask = torch.ones(n, t, b)
    mask[0, 5:, 1] = 0  # one episode ends early
    episodes = Episodes(observations=torch.randn(n, t, b, d, generator=gen, dtype=torch.float64),
                        actions=torch.randn(n, t, b, 2, generator=gen, dtype=torch.float64),
                        rewards=torch.randn(n, t, b, generator=gen, dtype=torch.float64),
                        mask=mask.double())
    shared = process_episodes(episodes, shared=True)

    def merged(x):  # [N, T, B, ...] -> one task [1, T, N * B, ...]
        return x.transpose(0, 1).reshape(t, n * b, *x.shape[3:]).unsqueeze(0)

    together = process_episodes(Episodes(observations=merged(episodes.observations),
                                         actions=merged(episodes.actions),
                                         rewards=merged(episodes.rewards),
                                         mask=merged(episodes.mask)))
    for field in ("returns", "baselines", "advantages"):
        back = getattr(together, field)[0].reshape(t, n, b).transpose(0, 1)
        assert torch.allclose(getattr(shared, field), back, atol=1e-10), field
    per_task = process_episodes(episodes)
    assert not torch.allclose(shared.advantages, per_task.advantages)


def test_meta_test_samples_whole_episodes_until_the_minimum_steps(tmp_path):
    """Each task gets whole episodes until at least test_min_steps environment steps, and no
    episode more than it needed; the average return counts the kept episodes alone."""
    algo = tiny_algo("rl-random", tmp_path, "horizon=10", "eval_shots=2", "test_tasks=3")
    theta = {k: v.detach() for k, v in algo.policy.named_parameters()}
    tasks = algo.benchmark.test_tasks()
    episodes = algo.sample(theta, tasks, 2, torch.Generator().manual_seed(0), 45)
    assert episodes.rewards.shape[-1] > 2  # extra episodes were drawn
    kept = episodes.mask[:, 0, :] > 0  # [N, B]
    lengths = episodes.mask.sum(-2)
    for task in range(len(tasks)):
        used = lengths[task][kept[task]]
        assert used.sum() >= 45 and used.sum() - used[-1] < 45
        assert kept[task][: len(used)].all()  # the kept ones come first
    returns = (episodes.rewards * episodes.mask).sum(-2)
    expected = torch.stack([returns[t][kept[t]].mean() for t in range(len(tasks))])
    assert torch.allclose(average_return(episodes), expected)


#: test_maml_cheetah.py / test_maml_cheetah_direc.py and the snapshots they load
CHEETAH = {
    "cheetah-vel-v2": {"maml-trpo": {"test_lr": 0.1, "train_shots": 10, "max_kl": 0.01,
                                     "iterations": 475, "inner_lr": 0.1, "meta_batch": 40},
                       "rl-pretrained": {"test_lr": 0.02, "iterations": 475},
                       "rl-random": {"test_lr": 0.1, "nonlinearity": "relu"},
                       "rl-oracle": {"iterations": 975}},
    "cheetah-dir-v2": {"maml-trpo": {"test_lr": 0.1, "train_shots": 20, "max_kl": 0.02,
                                     "iterations": 100, "inner_lr": 0.1, "meta_batch": 40},
                       "rl-pretrained": {"test_lr": 0.2, "iterations": 1000},
                       "rl-random": {"test_lr": 1.0, "nonlinearity": "relu"},
                       "rl-oracle": {"iterations": 1000}},
    # test_maml_ant.py / test_maml_ant_direc.py
    "ant-vel-v2": {"maml-trpo": {"test_lr": 0.1, "train_shots": 20, "max_kl": 0.01,
                                 "iterations": 375, "inner_lr": 0.1, "meta_batch": 40},
                   "rl-pretrained": {"test_lr": 0.2, "iterations": 575},
                   "rl-random": {"test_lr": 1.0, "nonlinearity": "relu"},
                   "rl-oracle": {"iterations": 550}},
    "ant-dir-v2": {"maml-trpo": {"test_lr": 0.1, "train_shots": 40, "max_kl": 0.01,
                                 "iterations": 575, "inner_lr": 0.1, "meta_batch": 40},
                   "rl-pretrained": {"test_lr": 0.2, "iterations": 2000},
                   "rl-random": {"test_lr": 1.0, "nonlinearity": "relu"},
                   "rl-oracle": {"iterations": 1975}},
}
#: episodes per test task, steps per fine-tuning step at least, later steps' multiplier
TEST_BATCH = {"cheetah-vel-v2": (20, 4_000, 0.5), "cheetah-dir-v2": (20, 4_000, 0.5),
              "ant-vel-v2": (20, 4_000, 0.5), "ant-dir-v2": (40, 8_000, 0.01)}


@pytest.mark.parametrize(("experiment", "method"),
                         [(e, m) for e, methods in CHEETAH.items() for m in methods])
def test_the_locomotion_methods_have_the_reference_settings(experiment, method, tmp_path):
    (run,) = plan_runs(experiment, "paper", [], [method], 1, tmp_path)
    c = run.config
    for key, value in CHEETAH[experiment][method].items():
        assert getattr(c, key) == value, (experiment, method, key)
    episodes, min_steps, later = TEST_BATCH[experiment]
    assert "Rllab-v0" in c.env and c.horizon == 0 and c.eval_shots == (episodes,)
    assert c.test_min_steps == min_steps and c.test_lr_later == later and c.test_tasks == 40
    assert c.evaluate_checkpoint == "last"
    if method in ("rl-pretrained", "rl-oracle"):  # plain TRPO on 100 trajectories
        assert c.meta_batch * c.train_shots == 100 and c.baseline == "shared"


@pytest.mark.parametrize("oracle", [False, True])
def test_the_rllab_cheetah_observes_and_steps_as_rllab(oracle):
    """dt 0.01 s, velocity of the centre of mass, observation qpos[1:], qvel and the torso
    subtree's centre of mass (20-d, the original's get_current_obs)."""
    import gymnasium
    import numpy as np

    import maml_bench.rl.envs  # noqa: F401

    env = gymnasium.make("maml_bench/HalfCheetahVelRllab-v0", oracle=oracle)
    try:
        env.unwrapped.set_task({"goal_velocity": 1.0})
        obs, _ = env.reset(seed=0)
        u = env.unwrapped
        assert obs.shape == env.observation_space.shape == (20 + oracle,)
        assert u.dt == pytest.approx(0.01) and u.velocity_mode == "rllab"
        obs, *_ = env.step(np.ones(env.action_space.shape))
        assert np.allclose(obs[:8], u.data.qpos[1:]) and np.allclose(obs[8:17], u.data.qvel)
        assert np.allclose(obs[17:20], u.data.subtree_com[u._torso])
    finally:
        env.close()


@pytest.mark.parametrize("env_id", ["maml_bench/AntVelRllab-v0", "maml_bench/AntDirRllab-v0"])
def test_the_rllab_ant_observes_and_steps_as_rllab(env_id):
    """dt 0.02 s, velocity of the centre of mass, and the original's 125-d observation: qpos,
    qvel, every body's contact force clipped to [-1, 1], the torso's orientation and its
    subtree's centre of mass; ended when the torso leaves heights [0.2, 1.0]."""
    import gymnasium
    import numpy as np

    import maml_bench.rl.envs  # noqa: F401

    env = gymnasium.make(env_id)
    try:
        obs, _ = env.reset(seed=0)
        u = env.unwrapped
        assert obs.shape == env.observation_space.shape == (125,)
        assert u.dt == pytest.approx(0.02) and u.velocity_mode == "rllab"
        obs, _, terminated, _, _ = env.step(np.ones(env.action_space.shape))
        nq, nv, nb = u.model.nq, u.model.nv, u.model.nbody
        assert (nq, nv, nb) == (15, 14, 14)
        assert np.allclose(obs[:nq], u.data.qpos) and np.allclose(obs[nq:nq + nv], u.data.qvel)
        contact = obs[nq + nv:nq + nv + 6 * nb]
        assert np.allclose(contact, np.clip(u.data.cfrc_ext, -1, 1).ravel())
        assert np.allclose(obs[-12:-3], u.data.xmat[u._torso])
        assert np.allclose(obs[-3:], u.data.subtree_com[u._torso])
        assert terminated == (not 0.2 <= u.data.qpos[2] <= 1.0)
        assert gymnasium.make(env_id, oracle=True).observation_space.shape == (126,)
    finally:
        env.close()
