"""Goal-velocity and goal-direction locomotion of the MAML paper, section 5.3 (Table 5, Figure 5).

Sources, the original MAML code's rllab envs: ``rllab/envs/mujoco/half_cheetah_env_rand.py``
(goal velocity), ``half_cheetah_env_rand_direc.py`` (goal direction), ``ant_env_rand.py``,
``ant_env_rand_direc.py``, and the test-task draws of ``maml_examples/test_maml_*.py``.
Built on gymnasium's maintained MuJoCo v5 models (``HalfCheetahEnv``, ``AntEnv``): their
observations (17-d cheetah, 105-d ant), reset noise, dt (0.05 s: timestep 0.01 x frame_skip 5)
and termination; only the reward is the original's. Rewards, with a the action clipped to the
action space (as rllab's ``normalize()`` did before the env saw it):

* HalfCheetahVel: -|v_x - v_goal| - 0.05 |a|^2, v_goal ~ U[0, 2]
* HalfCheetahDir: d * v_x - 0.05 |a|^2, d = -1 if u < 1 else +1, u ~ U[0, 2] (P = 1/2 each)
* AntVel: -|v_x - v_goal| + 1.0 - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2 + 0.05,
  v_goal ~ U[0, 3] (the +1.0 is the original's "make it happy, not suicidal" bonus)
* AntDir: d * v_x - 0.005 |a|^2 - 0.0005 |clip(cfrc_ext, -1, 1)|^2 + 0.05,
  d = -1 if u < 1.5 else +1, u ~ U[0, 3]

The ant's action space is [-1, 1] with gear 150, the original's was [-150, 150] with gear 1
and a control cost on ``action / 150``: the same torques and cost. The ant terminates when
unhealthy (torso height outside [0.2, 1.0] or a non-finite state), as the original did
(``done = not notdone``); the survival bonus is the original's constant, also paid on the
terminating step. The cheetah never terminates.

``v_x``: by default gymnasium's, the root's x displacement over the step / dt (cheetah) or the
torso frame's (ant). ``velocity="rllab"`` uses the original's ``get_body_comvel("torso")``: the
instantaneous velocity of the torso subtree's centre of mass (the whole robot) at the end of the
step. The rllab simulators stepped 0.01 s (cheetah) and 0.02 s (ant) per action, so the same
200-step horizon covered 2 s or 4 s instead of 10 s: ``frame_skip=1`` gives the cheetah the
original dt (registered as ``HalfCheetah{Vel,Dir}RllabDt-v0``); ``frame_skip=2`` gives the ant
dt 0.02 s (its integrator substeps stay 0.01 s, Euler, where rllab's ant.xml stepped 0.02 s
with RK4). ``observation="rllab"`` gives the original's observations: the cheetah's 20-d
(qpos[1:], qvel, the torso subtree's centre of mass), the ant's 125-d (qpos, qvel, every body's
clipped contact force, the torso's orientation matrix and subtree centre of mass); registered,
with both rllab options and the original dt, as ``HalfCheetah{Vel,Dir}Rllab-v0`` and
``Ant{Vel,Dir}Rllab-v0``.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces, utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from .base import Task, TaskMixin

VELOCITY_MODES = ("gymnasium", "rllab")

#: MuJoCo 3.3+ deprecates an attribute that gymnasium's own half_cheetah.xml still uses; the C
#: library printed it to stderr and MUJOCO_LOG.TXT for every environment built (hundreds of
#: lines per run, burying the progress lines). Every other MuJoCo warning becomes a Python one.
GYMNASIUM_MODEL_DEPRECATION = "compiler attribute 'settotalmass' is deprecated"


def mujoco_warning(message: str) -> None:
    """MuJoCo's warning handler while this module is loaded (unless one was set before)."""
    if GYMNASIUM_MODEL_DEPRECATION in message:
        return
    try:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)
    except Exception:  # noqa: BLE001 - raised inside MuJoCo's C callback it would be mju_error
        print(f"MuJoCo warning: {message}", file=sys.stderr)


if mujoco.get_mju_user_warning() is None:
    mujoco.set_mju_user_warning(mujoco_warning)


def subtree_com_velocity(model: mujoco.MjModel, data: mujoco.MjData, body: int) -> np.ndarray:
    """Linear velocity of ``body``'s subtree centre of mass in the current state: rllab's
    ``body_comvels`` (momentum of the subtree's bodies / its mass). rllab called
    ``model.forward()`` after stepping, so positions and velocities are first brought up to
    date; these calls do not touch the state or the solver's warm start."""
    mujoco.mj_kinematics(model, data)
    mujoco.mj_comPos(model, data)
    mujoco.mj_comVel(model, data)
    mujoco.mj_subtreeVel(model, data)
    return data.subtree_linvel[body].copy()


# -- tasks --------------------------------------------------------------------------------


class _LocomotionTask(TaskMixin):
    """A task from one uniform draw u ~ U[DRAW_LOW, DRAW_HIGH], as the original drew it."""

    TASK_DIM = 1
    DRAW_LOW: ClassVar[float] = 0.0
    DRAW_HIGH: ClassVar[float]
    #: the env's constant per-step bonus (survival, and the ant goal velocity's +1.0)
    SURVIVE_BONUS: ClassVar[float] = 0.0

    @classmethod
    def _from_draw(cls, u: float) -> Task:
        raise NotImplementedError

    @classmethod
    def _draw(cls, n: int, rng: np.random.Generator | np.random.RandomState) -> list[Task]:
        return [cls._from_draw(float(u)) for u in rng.uniform(cls.DRAW_LOW, cls.DRAW_HIGH, n)]

    def forward_reward(self, x_velocity: float) -> float:
        raise NotImplementedError


class _VelocityTask(_LocomotionTask):
    TASK_KEYS = ("goal_velocity",)

    @classmethod
    def _from_draw(cls, u: float) -> Task:
        return {"goal_velocity": u}

    def forward_reward(self, x_velocity: float) -> float:
        return -abs(float(x_velocity) - self._ensure_task()["goal_velocity"])


class _DirectionTask(_LocomotionTask):
    TASK_KEYS = ("direction",)

    @classmethod
    def _from_draw(cls, u: float) -> Task:
        # the original: goal_direction = -1.0 if goal_vel < threshold else 1.0
        return {"direction": -1.0 if u < (cls.DRAW_LOW + cls.DRAW_HIGH) / 2 else 1.0}

    @classmethod
    def check_task(cls, task: Mapping[str, Any]) -> Task:
        out = super().check_task(task)
        if out["direction"] not in (-1.0, 1.0):
            raise ValueError(f"{cls.__name__} direction must be -1 or +1, got {task!r}")
        return out

    def forward_reward(self, x_velocity: float) -> float:
        return self._ensure_task()["direction"] * float(x_velocity)


# -- simulators ---------------------------------------------------------------------------


class _TaskMujocoMixin(_LocomotionTask):
    """What the cheetah and ant share: task options, oracle observation, pickling."""

    #: the models' own "track" camera (mode trackcom): it follows the body's centre of mass,
    #: where gymnasium's default free camera stays put and the runner leaves the frame
    RENDER_KWARGS: ClassVar[dict[str, Any]] = {"camera_name": "track", "width": 320,
                                               "height": 320}

    def _setup_task(self, task: Mapping[str, Any] | None, oracle: bool, velocity: str) -> None:
        if velocity not in VELOCITY_MODES:
            raise ValueError(f"velocity must be one of {VELOCITY_MODES}, got {velocity!r}")
        self.velocity_mode = velocity
        self._oracle = bool(oracle)
        self._torso = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
        if self._oracle:
            self.observation_space = self._oracle_space(self.observation_space)
        self._task = None if task is None else self.check_task(task)

    def _get_obs(self) -> np.ndarray:
        return self._observe(super()._get_obs())

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._apply_reset_options(options)
        return super().reset(seed=seed, options=options)

    def reset_model(self) -> np.ndarray:
        self._ensure_task()  # after seeding, before the first observation
        return super().reset_model()

    def _get_reset_info(self) -> dict[str, Any]:
        return {**super()._get_reset_info(), **self._ensure_task()}

    def _clip(self, action: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(action, dtype=np.float64), self.action_space.low,
                       self.action_space.high)

    # EzPickle rebuilds the env from its constructor arguments; keep the current task too
    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_task": self._task}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._task = state.get("_task")


class _TaskHalfCheetah(_TaskMujocoMixin, HalfCheetahEnv):
    """Half-cheetah with a task reward. Args: task, oracle, velocity ("gymnasium" | "rllab"),
    observation ("gymnasium": qpos[1:] and qvel, 17-d | "rllab": then the torso subtree's
    centre of mass, 20-d, as the original's ``get_current_obs``), ctrl_cost_weight (0.05, the
    original's 0.5 * 0.1), frame_skip (5; 1 for the rllab dt), and gymnasium's
    ``HalfCheetahEnv`` keyword arguments."""

    def __init__(self, task: Mapping[str, Any] | None = None, oracle: bool = False,
                 velocity: str = "gymnasium", observation: str = "gymnasium",
                 ctrl_cost_weight: float = 0.05, frame_skip: int = 5, **kwargs: Any) -> None:
        if observation not in VELOCITY_MODES:
            raise ValueError(f"observation must be one of {VELOCITY_MODES}, got {observation!r}")
        self.observation_mode = observation
        HalfCheetahEnv.__init__(self, frame_skip=frame_skip, ctrl_cost_weight=ctrl_cost_weight,
                                **kwargs)
        utils.EzPickle.__init__(self, task=task, oracle=oracle, velocity=velocity,
                                observation=observation, ctrl_cost_weight=ctrl_cost_weight,
                                frame_skip=frame_skip, **kwargs)
        if observation == "rllab":
            size = self.observation_space.shape[0] + 3
            self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float64)
        self._setup_task(task, oracle, velocity)

    def _get_obs(self) -> np.ndarray:
        obs = HalfCheetahEnv._get_obs(self)
        if getattr(self, "observation_mode", "gymnasium") == "rllab":
            mujoco.mj_kinematics(self.model, self.data)  # rllab's forward() before reading it
            mujoco.mj_comPos(self.model, self.data)
            obs = np.concatenate([obs, self.data.subtree_com[self._torso]])
        return self._observe(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        task = self._ensure_task()
        action = self._clip(action)
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_after = float(self.data.qpos[0])
        if self.velocity_mode == "rllab":
            x_velocity = float(subtree_com_velocity(self.model, self.data, self._torso)[0])
        else:
            x_velocity = (x_after - x_before) / self.dt
        observation = self._get_obs()
        reward_forward = self.forward_reward(x_velocity)
        reward_ctrl = -self._ctrl_cost_weight * float(np.sum(np.square(action)))
        reward = reward_forward + reward_ctrl
        info = {"x_position": x_after, "x_velocity": x_velocity,
                "reward_forward": reward_forward, "reward_ctrl": reward_ctrl, **task}
        if self.render_mode == "human":
            self.render()
        return observation, reward, False, False, info


class _TaskAnt(_TaskMujocoMixin, AntEnv):
    """Ant with a task reward. Args: task, oracle, velocity ("gymnasium" | "rllab"),
    ctrl_cost_weight (0.005, the original's 0.5 * 1e-2), contact_cost_weight (5e-4),
    frame_skip (5; 2 for the rllab dt), and gymnasium's ``AntEnv`` keyword arguments
    (``terminate_when_unhealthy``, ``healthy_z_range``, ...). ``healthy_reward`` is unused:
    the bonus is the original's constant ``SURVIVE_BONUS``."""

    def __init__(self, task: Mapping[str, Any] | None = None, oracle: bool = False,
                 velocity: str = "gymnasium", observation: str = "gymnasium",
                 ctrl_cost_weight: float = 0.005, contact_cost_weight: float = 5e-4,
                 frame_skip: int = 5, **kwargs: Any) -> None:
        if observation not in VELOCITY_MODES:
            raise ValueError(f"observation must be one of {VELOCITY_MODES}, got {observation!r}")
        self.observation_mode = observation
        AntEnv.__init__(self, frame_skip=frame_skip, ctrl_cost_weight=ctrl_cost_weight,
                        contact_cost_weight=contact_cost_weight, **kwargs)
        utils.EzPickle.__init__(self, task=task, oracle=oracle, velocity=velocity,
                                observation=observation, ctrl_cost_weight=ctrl_cost_weight,
                                contact_cost_weight=contact_cost_weight, frame_skip=frame_skip,
                                **kwargs)
        if observation == "rllab":
            size = self.model.nq + self.model.nv + 6 * self.model.nbody + 9 + 3
            self.observation_space = spaces.Box(-np.inf, np.inf, (size,), np.float64)
        self._setup_task(task, oracle, velocity)

    def _get_obs(self) -> np.ndarray:
        if getattr(self, "observation_mode", "gymnasium") != "rllab":
            return self._observe(AntEnv._get_obs(self))
        # rllab's ant_env_rand.get_current_obs, read after its forward(): qpos, qvel, every
        # body's external contact force clipped to [-1, 1], the torso's orientation matrix and
        # its subtree's centre of mass (125-d for this model)
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        obs = np.concatenate([self.data.qpos.flat, self.data.qvel.flat,
                              np.clip(self.data.cfrc_ext, -1, 1).flat,
                              self.data.xmat[self._torso].flat,
                              self.data.subtree_com[self._torso].flat])
        return self._observe(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        task = self._ensure_task()
        action = self._clip(action)
        xy_before = self.data.body(self._main_body).xpos[:2].copy()
        self.do_simulation(action, self.frame_skip)
        xy_after = self.data.body(self._main_body).xpos[:2].copy()
        x_velocity, y_velocity = ((xy_after - xy_before) / self.dt).tolist()
        if self.velocity_mode == "rllab":
            com_velocity = subtree_com_velocity(self.model, self.data, self._torso)
            x_velocity, y_velocity = float(com_velocity[0]), float(com_velocity[1])
        observation = self._get_obs()
        reward_forward = self.forward_reward(x_velocity)
        reward_ctrl = -self._ctrl_cost_weight * float(np.sum(np.square(action)))
        reward_contact = -float(self.contact_cost)
        reward_survive = self.SURVIVE_BONUS
        reward = reward_forward + reward_ctrl + reward_contact + reward_survive
        # the original ended the episode when unhealthy (done = not notdone)
        terminated = (not self.is_healthy) and self._terminate_when_unhealthy
        info = {"x_position": float(self.data.qpos[0]), "y_position": float(self.data.qpos[1]),
                "x_velocity": x_velocity, "y_velocity": y_velocity,
                "reward_forward": reward_forward, "reward_ctrl": reward_ctrl,
                "reward_contact": reward_contact, "reward_survive": reward_survive, **task}
        if self.render_mode == "human":
            self.render()
        return observation, reward, terminated, False, info


# -- the registered environments ----------------------------------------------------------


class HalfCheetahVelEnv(_VelocityTask, _TaskHalfCheetah):
    """Half-cheetah goal velocity; task ``{"goal_velocity": v}``, v ~ U[0, 2]."""

    DRAW_HIGH = 2.0
    TEST_TASK_SEED = 1  # test_maml_cheetah.py: np.random.seed(1); uniform(0.0, 2.0, 40)


class HalfCheetahDirEnv(_DirectionTask, _TaskHalfCheetah):
    """Half-cheetah goal direction; task ``{"direction": d}``, d = +-1 with probability 1/2."""

    DRAW_HIGH = 2.0
    TEST_TASK_SEED = 1  # test_maml_cheetah_direc.py: np.random.seed(1); uniform(0.0, 2.0, 40)


class AntVelEnv(_VelocityTask, _TaskAnt):
    """Ant goal velocity; task ``{"goal_velocity": v}``, v ~ U[0, 3]."""

    DRAW_HIGH = 3.0
    SURVIVE_BONUS = 1.0 + 0.05  # ant_env_rand.py: +1.0 in forward_reward, survive_reward 0.05
    TEST_TASK_SEED = 1  # test_maml_ant.py: np.random.seed(1); uniform(0.0, 3.0, 40)


class AntDirEnv(_DirectionTask, _TaskAnt):
    """Ant goal direction; task ``{"direction": d}``, d = +-1 with probability 1/2."""

    DRAW_HIGH = 3.0
    SURVIVE_BONUS = 0.05  # ant_env_rand_direc.py: survive_reward
    TEST_TASK_SEED = 2  # test_maml_ant_direc.py: np.random.seed(2); uniform(0.0, 3.0, 40)
