"""The meta-RL task-distribution environments (maml_bench/rl/envs): definitions against the
original MAML rllab envs, task distributions and fixed test tasks, seeding, vector envs,
gymnasium's env checker, and offscreen rendering."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from gymnasium.utils.env_checker import check_env  # noqa: E402

import maml_bench.rl.envs as envs  # noqa: E402
from maml_bench.rl.envs.locomotion import (  # noqa: E402
    AntDirEnv,
    AntVelEnv,
    HalfCheetahDirEnv,
    HalfCheetahVelEnv,
    mujoco_warning,
)
from maml_bench.rl.envs.navigation import Navigation2DEnv  # noqa: E402

NAV = "maml_bench/Navigation2D-v0"
MUJOCO_IDS = [i for i in envs.ENV_IDS if i != NAV]
CONTINUOUS = [Navigation2DEnv, HalfCheetahVelEnv, AntVelEnv]
DIRECTION = [HalfCheetahDirEnv, AntDirEnv]

# id -> (obs dim, action dim, dt, horizon, task dim)
DEFINITIONS = {
    NAV: (2, 2, None, 100, 2),
    "maml_bench/HalfCheetahVel-v0": (17, 6, 0.05, 200, 1),
    "maml_bench/HalfCheetahDir-v0": (17, 6, 0.05, 200, 1),
    "maml_bench/HalfCheetahVelRllabDt-v0": (17, 6, 0.01, 200, 1),
    "maml_bench/HalfCheetahDirRllabDt-v0": (17, 6, 0.01, 200, 1),
    "maml_bench/HalfCheetahVelRllab-v0": (20, 6, 0.01, 200, 1),
    "maml_bench/HalfCheetahDirRllab-v0": (20, 6, 0.01, 200, 1),
    "maml_bench/AntVel-v0": (105, 8, 0.05, 200, 1),
    "maml_bench/AntDir-v0": (105, 8, 0.05, 200, 1),
    "maml_bench/AntVelRllab-v0": (125, 8, 0.02, 200, 1),
    "maml_bench/AntDirRllab-v0": (125, 8, 0.02, 200, 1),
}


@pytest.fixture(autouse=True)
def _mujoco_log_in_tmp(tmp_path, monkeypatch):
    # MuJoCo appends its warnings (the cheetah model's deprecated settotalmass) to
    # MUJOCO_LOG.TXT in the working directory: keep that out of the checkout
    monkeypatch.chdir(tmp_path)


def make(env_id, **kwargs):
    return gym.make(env_id, **kwargs)


def rollout(env, actions, seed):
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            break
    return np.array(observations), np.array(rewards)


# -- definitions ----------------------------------------------------------------------------


def test_registered_ids():
    assert set(envs.ENV_IDS) == set(DEFINITIONS)
    for env_id in envs.ENV_IDS:
        assert gym.spec(env_id).max_episode_steps == DEFINITIONS[env_id][3]


@pytest.mark.parametrize("env_id", list(DEFINITIONS))
def test_spaces_dt_horizon_and_oracle(env_id):
    obs_dim, act_dim, dt, horizon, task_dim = DEFINITIONS[env_id]
    env = make(env_id)
    assert env.observation_space.shape == (obs_dim,)
    assert env.action_space.shape == (act_dim,)
    if dt is not None:
        assert env.unwrapped.dt == pytest.approx(dt)
    assert env.spec.max_episode_steps == horizon
    task = env.unwrapped.test_tasks()[0]
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_dim,)

    oracle = make(env_id, oracle=True)
    assert oracle.observation_space.shape == (obs_dim + task_dim,)
    oracle.unwrapped.set_task(task)
    obs, _ = oracle.reset(seed=0)
    np.testing.assert_array_equal(obs[obs_dim:], oracle.unwrapped.task_array(task))
    obs, *_ = oracle.step(oracle.action_space.sample())
    np.testing.assert_array_equal(obs[obs_dim:], oracle.unwrapped.task_array(task))
    assert oracle.observation_space.contains(obs)


@pytest.mark.parametrize("env_id", list(DEFINITIONS))
def test_observation_does_not_reveal_the_task(env_id):
    """Same seed and actions, different tasks: identical observations (only rewards differ)."""
    cls = envs.env_class(env_id)
    a, b = make(env_id), make(env_id)
    tasks = cls.test_tasks()
    a.unwrapped.set_task(tasks[0])
    b.unwrapped.set_task(next(t for t in tasks if t != tasks[0]))
    actions = np.random.default_rng(0).uniform(-1, 1, (10, a.action_space.shape[0]))
    actions *= a.action_space.high
    obs_a, rew_a = rollout(a, actions, seed=3)
    obs_b, rew_b = rollout(b, actions, seed=3)
    n = min(len(obs_a), len(obs_b))
    np.testing.assert_array_equal(obs_a[:n], obs_b[:n])
    assert not np.array_equal(rew_a[:n - 1], rew_b[:n - 1])


def original_point_env_step(state, goal, action):
    """maml_examples/point_env_randgoal.py, PointEnvRandGoal.step, verbatim but for the clip
    (rllab's normalize() clipped the action before the env saw it)."""
    action = np.clip(action, -0.1, 0.1)
    state = state + action
    x, y = state
    x -= goal[0]
    y -= goal[1]
    reward = - (x ** 2 + y ** 2) ** 0.5
    done = abs(x) < 0.01 and abs(y) < 0.01
    return state, reward, done


def test_navigation_matches_the_original_step():
    env = Navigation2DEnv()
    rng = np.random.default_rng(1)
    for task in Navigation2DEnv.test_tasks()[:5]:
        env.set_task(task)
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(obs, [0.0, 0.0])
        state, goal = (0, 0), np.array(task["goal"])
        for _ in range(30):
            action = rng.uniform(-0.3, 0.3, 2)  # some outside the bounds, to be clipped
            state, reward, done = original_point_env_step(state, goal, action)
            obs, r, terminated, truncated, info = env.step(action)
            np.testing.assert_array_equal(obs, state)
            assert r == reward and terminated == done and not truncated
            assert info["distance"] == -reward


def test_navigation_reward_after_the_move_and_goal_tolerance():
    env = Navigation2DEnv(task={"goal": (0.05, 0.0)})
    env.reset(seed=0)
    obs, reward, terminated, *_ = env.step(np.array([0.05, 0.0]))
    assert reward == 0.0 and terminated  # measured at the new position, which is the goal
    env.reset(seed=0)
    _, reward, terminated, *_ = env.step(np.array([0.0, 0.0]))
    assert reward == pytest.approx(-0.05) and not terminated
    env.set_task({"goal": (0.2, -0.2)})
    env.reset()
    obs, *_ = env.step(np.array([5.0, -5.0]))  # clipped to the maximum speed
    np.testing.assert_allclose(obs, [0.1, -0.1])
    _, _, terminated, *_ = env.step(np.array([0.0905, -0.0905]))  # |dx| = 0.0095 < 0.01
    assert terminated
    squared = Navigation2DEnv(task={"goal": (0.3, 0.4)}, squared_distance=True)
    squared.reset(seed=0)
    assert squared.step(np.zeros(2))[1] == pytest.approx(-0.25)


def test_navigation_horizon_is_100():
    env = make(NAV)
    env.unwrapped.set_task({"goal": (0.4, 0.4)})
    env.reset(seed=0)
    for t in range(1, 101):
        _, _, terminated, truncated, _ = env.step(np.zeros(2))
        assert not terminated and truncated == (t == 100)


@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_locomotion_reward_terms(env_id):
    env = make(env_id)
    inner = env.unwrapped
    task = inner.test_tasks()[1]
    inner.set_task(task)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    ant = isinstance(inner, AntVelEnv | AntDirEnv)
    contact_seen = False
    for _ in range(15):
        action = rng.uniform(-1.5, 1.5, env.action_space.shape)  # beyond the bounds too
        x_before = float(inner.data.qpos[0])
        xy_before = inner.data.body("torso").xpos[:2].copy()
        _, reward, terminated, _, info = env.step(action)
        clipped = np.clip(action, -1.0, 1.0)
        if ant:
            v = (inner.data.body("torso").xpos[0] - xy_before[0]) / inner.dt
            if inner.velocity_mode == "rllab":  # the centre of mass's, at the step's end
                from maml_bench.rl.envs.locomotion import subtree_com_velocity

                v = subtree_com_velocity(inner.model, inner.data, inner._torso)[0]
            contact = 5e-4 * np.sum(np.square(np.clip(inner.data.cfrc_ext, -1, 1)))
            assert info["reward_ctrl"] == pytest.approx(-0.005 * np.sum(clipped ** 2))
            assert info["reward_contact"] == pytest.approx(-contact)
            assert info["reward_survive"] == (1.05 if isinstance(inner, AntVelEnv) else 0.05)
            contact_seen |= contact > 0
            terms = ("reward_forward", "reward_ctrl", "reward_contact", "reward_survive")
        else:
            v = (inner.data.qpos[0] - x_before) / inner.dt
            if inner.velocity_mode == "rllab":  # the centre of mass's, at the step's end
                from maml_bench.rl.envs.locomotion import subtree_com_velocity

                v = subtree_com_velocity(inner.model, inner.data, inner._torso)[0]
            assert info["reward_ctrl"] == pytest.approx(-0.05 * np.sum(clipped ** 2))
            assert not terminated
            terms = ("reward_forward", "reward_ctrl")
        assert info["x_velocity"] == pytest.approx(v)
        if "goal_velocity" in task:
            assert info["reward_forward"] == pytest.approx(-abs(v - task["goal_velocity"]))
            assert info["goal_velocity"] == task["goal_velocity"]
        else:
            assert info["reward_forward"] == pytest.approx(task["direction"] * v)
            assert info["direction"] == task["direction"]
        assert reward == pytest.approx(sum(info[k] for k in terms), abs=1e-12)
    if ant:
        assert contact_seen  # the contact term is live (cfrc_ext is computed each step)


def rllab_body_comvel(model, qpos, qvel, body):
    """rllab's MjModel.body_comvels[body] (rllab/mujoco_py/mujoco.py): forward, then each
    body's COM velocity (mj_objectVelocity, mjOBJ_BODY, global) weighted by mass, summed up
    the tree."""
    import mujoco

    data = mujoco.MjData(model)
    data.qpos[:], data.qvel[:] = qpos, qvel
    mujoco.mj_forward(model, data)
    velocity = np.zeros((model.nbody, 6))
    for i in range(model.nbody):
        mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, i, velocity[i], 0)
    mass = model.body_mass.copy()
    momentum = velocity[:, 3:] * mass[:, None]
    for i in range(model.nbody - 1, 0, -1):
        momentum[model.body_parentid[i]] += momentum[i]
        mass[model.body_parentid[i]] += mass[i]
    return momentum[body] / mass[body]


@pytest.mark.parametrize("cls", [HalfCheetahVelEnv, AntDirEnv])
def test_rllab_velocity_is_the_torso_subtree_com_velocity(cls):
    env = cls(task=cls.test_tasks()[0], velocity="rllab", frame_skip=1)
    plain = cls(task=cls.test_tasks()[0], frame_skip=1)
    env.reset(seed=0)
    plain.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, env.action_space.shape)
        obs, _, _, _, info = env.step(action)
        expected = rllab_body_comvel(env.model, env.data.qpos, env.data.qvel, env._torso)
        assert info["x_velocity"] == pytest.approx(expected[0], abs=1e-9)
        if "y_velocity" in info:
            assert info["y_velocity"] == pytest.approx(expected[1], abs=1e-9)
        # measuring it leaves the simulation alone
        np.testing.assert_array_equal(obs, plain.step(action)[0])
    with pytest.raises(ValueError, match="velocity"):
        cls(velocity="com")


def test_ant_terminates_when_unhealthy():
    env = AntVelEnv(task={"goal_velocity": 1.0})
    env.reset(seed=0)
    qpos = env.data.qpos.copy()
    qpos[2] = 1.5  # torso above the healthy range [0.2, 1.0]
    env.set_state(qpos, np.zeros_like(env.data.qvel))
    _, reward, terminated, _, info = env.step(np.zeros(8))
    assert terminated and info["reward_survive"] == 1.05  # the original paid it on that step too


# -- task distributions -------------------------------------------------------------------


@pytest.mark.parametrize("cls", CONTINUOUS + DIRECTION)
def test_sample_tasks(cls):
    tasks = cls.sample_tasks(400, np.random.default_rng(7))
    assert len(tasks) == 400 and all(set(t) == set(cls.TASK_KEYS) for t in tasks)
    assert tasks == cls.sample_tasks(400, np.random.default_rng(7))
    assert tasks != cls.sample_tasks(400, np.random.default_rng(8))
    values = np.array([cls.task_array(t) for t in tasks])
    if cls is Navigation2DEnv:
        assert values.min() >= -0.5 and values.max() <= 0.5
    elif cls in DIRECTION:
        assert set(values.ravel()) == {-1.0, 1.0}
        assert 0.4 < np.mean(values == 1.0) < 0.6  # probability 1/2 each
    else:
        assert values.min() >= 0.0 and values.max() <= cls.DRAW_HIGH
        assert values.max() > 0.9 * cls.DRAW_HIGH
    assert cls.sample_tasks(0, np.random.default_rng(0)) == []
    with pytest.raises(ValueError):
        cls.sample_tasks(-1, np.random.default_rng(0))


def test_test_tasks_are_the_original_scripts_draws():
    # maml_examples/test_maml_{point,cheetah,cheetah_direc,ant,ant_direc}.py
    goals = np.random.RandomState(1).uniform(-0.5, 0.5, size=(40, 2))
    assert [t["goal"] for t in Navigation2DEnv.test_tasks()] == [tuple(g) for g in goals]
    assert Navigation2DEnv.test_tasks()[0]["goal"] == pytest.approx((-0.082978, 0.22032449))
    vel = np.random.RandomState(1).uniform(0.0, 2.0, 40)
    assert [t["goal_velocity"] for t in HalfCheetahVelEnv.test_tasks()] == list(vel)
    assert [t["direction"] for t in HalfCheetahDirEnv.test_tasks()] == [
        -1.0 if v < 1.0 else 1.0 for v in vel]
    vel = np.random.RandomState(1).uniform(0.0, 3.0, 40)
    assert [t["goal_velocity"] for t in AntVelEnv.test_tasks()] == list(vel)
    direc = np.random.RandomState(2).uniform(0.0, 3.0, 40)
    assert [t["direction"] for t in AntDirEnv.test_tasks()] == [
        -1.0 if v < 1.5 else 1.0 for v in direc]
    for env_id in envs.ENV_IDS:
        tasks = envs.get_test_tasks(env_id)
        assert len(tasks) == 40 == envs.N_TEST_TASKS
        assert tasks == envs.env_class(env_id).test_tasks()  # fixed


@pytest.mark.parametrize("cls", CONTINUOUS)
def test_test_tasks_disjoint_from_training_streams(cls):
    test = {tuple(cls.task_array(t)) for t in cls.test_tasks()}
    assert len(test) == 40
    for seed in range(8):
        train = cls.sample_tasks(2000, np.random.default_rng(seed))
        assert test.isdisjoint(tuple(cls.task_array(t)) for t in train)


@pytest.mark.parametrize("cls", DIRECTION)
def test_direction_test_tasks_cover_both_directions(cls):
    # two tasks only: disjointness from training is impossible (and not needed)
    assert {t["direction"] for t in cls.test_tasks()} == {-1.0, 1.0}


@pytest.mark.parametrize("env_id", [NAV, "maml_bench/HalfCheetahDir-v0"])
def test_set_get_task(env_id):
    env = make(env_id)
    inner = env.unwrapped
    assert inner.task is None
    with pytest.raises(RuntimeError, match="no task"):
        inner.get_task()
    task = inner.test_tasks()[3]
    inner.set_task(task)
    assert inner.get_task() == task and inner.task == task
    inner.get_task()[inner.TASK_KEYS[0]] = 123.0  # a copy
    assert inner.get_task() == task
    bad = [{}, {"other": 1.0}, {inner.TASK_KEYS[0]: float("nan")}]
    if env_id != NAV:
        bad.append({"direction": 0.5})
    for wrong in bad:
        with pytest.raises(ValueError):
            inner.set_task(wrong)
    other = inner.test_tasks()[4] if env_id == NAV else {"direction": -task["direction"]}
    env.reset(seed=0, options={"task": other})
    assert inner.get_task() == other
    env.reset(seed=1)
    assert inner.get_task() == other  # persists across resets


# -- seeding and vector envs --------------------------------------------------------------


@pytest.mark.parametrize("env_id", list(DEFINITIONS))
def test_seeded_reset_reproduces_trajectories(env_id):
    a, b = make(env_id), make(env_id)
    task = a.unwrapped.test_tasks()[5]
    a.unwrapped.set_task(task)
    b.unwrapped.set_task(task)
    actions = np.random.default_rng(2).uniform(-1, 1, (25, a.action_space.shape[0]))
    obs_a, rew_a = rollout(a, actions, seed=11)
    rollout(b, actions[:3], seed=99)  # b's history differs before the seeded reset
    obs_b, rew_b = rollout(b, actions, seed=11)
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rew_a, rew_b)
    if env_id != NAV:  # the start state is random, seeded
        assert not np.array_equal(rollout(a, actions[:1], seed=12)[0][0], obs_a[0])
    # without a task, the first reset draws one from the seeded generator
    drawn = []
    for seed in (4, 4, 5, 6, 7, 8):
        fresh = make(env_id)
        fresh.reset(seed=seed)
        drawn.append(fresh.unwrapped.get_task())
    assert drawn[0] == drawn[1] and len({str(t) for t in drawn}) > 1

def test_sync_vector_env_sets_a_task_per_sub_env():
    tasks = Navigation2DEnv.test_tasks()[:3]
    vec = gym.vector.SyncVectorEnv([lambda: make(NAV) for _ in tasks])
    vec.set_attr("task", tasks)
    assert list(vec.call("get_task")) == tasks
    actions = np.random.default_rng(0).uniform(-0.1, 0.1, (20, 3, 2))
    vec.reset(seed=[0, 1, 2])
    rewards = np.array([vec.step(a)[1] for a in actions])
    for i, task in enumerate(tasks):
        single = make(NAV)
        single.unwrapped.set_task(task)
        _, expected = rollout(single, actions[:, i], seed=i)
        np.testing.assert_array_equal(rewards[:, i], expected)
    vec.call("set_task", tasks[0])  # the same task everywhere
    assert list(vec.call("get_task")) == [tasks[0]] * 3
    vec.close()


def test_async_vector_env_locomotion():
    env_id = "maml_bench.rl.envs:maml_bench/HalfCheetahVel-v0"  # importable in sub-processes
    tasks = HalfCheetahVelEnv.test_tasks()[:2]
    vec = gym.vector.AsyncVectorEnv([lambda: gym.make(env_id) for _ in tasks])
    try:
        vec.set_attr("task", tasks)
        assert list(vec.call("get_task")) == tasks
        actions = np.random.default_rng(0).uniform(-1, 1, (5, 2, 6))
        obs, _ = vec.reset(seed=[3, 4])
        rewards, infos = [], []
        for a in actions:
            _, r, _, _, info = vec.step(a)
            rewards.append(r)
            infos.append(info["goal_velocity"])
        np.testing.assert_array_equal(infos[-1], [t["goal_velocity"] for t in tasks])
        for i, task in enumerate(tasks):
            single = make(env_id)
            single.unwrapped.set_task(task)
            obs_i, expected = rollout(single, actions[:, i], seed=3 + i)
            np.testing.assert_array_equal(obs[i], obs_i[0])
            np.testing.assert_array_equal(np.array(rewards)[:, i], expected)
    finally:
        vec.close()


def test_pickle_and_deepcopy_keep_options_and_task():
    env = HalfCheetahDirEnv(task={"direction": -1.0}, oracle=True, frame_skip=1)
    env.set_task({"direction": 1.0})
    for clone in (pickle.loads(pickle.dumps(env)), copy.deepcopy(env)):
        assert clone.get_task() == {"direction": 1.0}
        assert clone.observation_space.shape == (18,) and clone.dt == pytest.approx(0.01)


# -- gymnasium's checker and rendering ----------------------------------------------------


@pytest.mark.parametrize("oracle", [False, True])
@pytest.mark.parametrize("env_id", list(DEFINITIONS))
def test_check_env(env_id, oracle):
    env = make(env_id, oracle=oracle)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # the MuJoCo envs' render check would open every declared mode, "human" included
        # (a window); rgb_array is checked offscreen below
        check_env(env.unwrapped, skip_render_check=env_id != NAV)
    unexpected = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert not unexpected  # only the unbounded observation space's notes


def test_navigation_renders_rgb_array():
    env = make(NAV, render_mode="rgb_array")
    env.unwrapped.set_task({"goal": (0.25, 0.25)})
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([0.1, 0.0]))
    frame = env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8
    row, col = (127 - round(1.25 / 2 * 127)), round(1.25 / 2 * 127)
    assert tuple(frame[row, col]) == (220, 30, 30)  # the goal
    assert (frame == (60, 90, 220)).all(axis=-1).any()  # the path


RENDER_SCRIPT = textwrap.dedent("""
    import gymnasium as gym, numpy as np
    import maml_bench.rl.envs
    env = gym.make("maml_bench/HalfCheetahVel-v0", render_mode="rgb_array", width=64, height=48)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.std() > 0, frame.shape
    env.close()
    print("RENDERED")
""")


def test_mujoco_renders_offscreen(tmp_path):
    # each GL backend in a fresh process: MUJOCO_GL is read once, and a broken backend may abort
    backends = list(dict.fromkeys([os.environ.get("MUJOCO_GL", "egl"), "egl", "osmesa"]))
    errors = {}
    for backend in backends:
        result = subprocess.run([sys.executable, "-c", RENDER_SCRIPT], cwd=tmp_path,
                                env={**os.environ, "MUJOCO_GL": backend,
                                     "PYTHONPATH": os.pathsep.join(sys.path)},
                                capture_output=True, text=True, timeout=120)
        if "RENDERED" in result.stdout:
            return
        errors[backend] = (result.stderr.strip().splitlines() or ["no output"])[-1]
    pytest.skip(f"no offscreen OpenGL backend works here: {errors}")


def test_gymnasium_model_deprecation_is_not_printed_other_warnings_pass(capfd):
    """gymnasium's half_cheetah.xml uses an attribute MuJoCo deprecates: that one line per
    environment built is dropped; any other MuJoCo warning reaches the user as a Python one."""
    import mujoco

    assert mujoco.get_mju_user_warning() is mujoco_warning
    seen = []
    mujoco.set_mju_user_warning(seen.append)  # first: building the env does emit the line
    try:
        gym.make("maml_bench/HalfCheetahVel-v0").close()
    finally:
        mujoco.set_mju_user_warning(mujoco_warning)
    if not any("settotalmass" in m for m in seen):
        pytest.skip("this MuJoCo/gymnasium pair no longer emits the deprecation")
    gym.make("maml_bench/HalfCheetahVel-v0").close()
    assert "settotalmass" not in capfd.readouterr().err
    with pytest.warns(RuntimeWarning, match="MuJoCo: something else"):
        mujoco_warning("something else")
