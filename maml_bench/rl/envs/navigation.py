"""2D navigation (point robot) of the MAML paper, section 5.3 and Figure 4.

Source: the original MAML code, ``maml_examples/point_env_randgoal.py`` (``PointEnvRandGoal``,
rllab), with its test goals from ``maml_examples/test_maml_point.py``. Its ``step`` is, in this
order::

    self._state = self._state + action          # move first
    x, y = self._state
    x -= self._goal[0]; y -= self._goal[1]      # offset of the NEW position from the goal
    reward = -(x ** 2 + y ** 2) ** 0.5          # so the reward is measured after the move
    done = abs(x) < 0.01 and abs(y) < 0.01

and this environment does exactly that. The start is (0, 0); the observation is the position
(float64); the goal ~ U[-0.5, 0.5]^2 and is not observed (unless ``oracle=True``, which appends
it, as ``PointEnvRandGoalOracle`` did). Episodes last 100 steps (the registered TimeLimit) or end
(``terminated``) at the goal.

Actions are velocities clipped to [-0.1, 0.1] per axis here. The original env added the action
unclipped; the clip came from rllab's ``normalize()``, which also mapped the policy's output
from [-1, 1] to [-0.1, 0.1]. A policy that outputs in those normalised units, as the original's
did, should scale its action by 0.1 (or wrap the env in
``gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)``) before this env clips it.

The code's reward is the negative Euclidean distance; the paper's text says squared distance
(``squared_distance=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .base import Task, TaskMixin

MAX_SPEED = 0.1
GOAL_LOW, GOAL_HIGH = -0.5, 0.5
GOAL_TOLERANCE = 0.01


class Navigation2DEnv(TaskMixin, gym.Env):
    """Point robot moving to a goal in the plane; task ``{"goal": (x, y)}``.

    Args:
        task: the initial task (else one is drawn at the first reset).
        squared_distance: reward = -squared distance (the paper text) instead of -distance.
        oracle: append the goal to the observation (the oracle baseline's input).
        render_mode: None or "rgb_array" (a top-down view of the path, for GIFs).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    TASK_KEYS = ("goal",)
    TASK_DIM = 2
    TEST_TASK_SEED = 1  # test_maml_point.py: np.random.seed(1); uniform(-0.5, 0.5, (40, 2))

    def __init__(self, task: Mapping[str, Any] | None = None, squared_distance: bool = False,
                 oracle: bool = False, render_mode: str | None = None,
                 render_size: int = 128) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of "
                             f"{self.metadata['render_modes']}, got {render_mode!r}")
        self.squared_distance = bool(squared_distance)
        self._oracle = bool(oracle)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
        position_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self.observation_space = (self._oracle_space(position_space) if self._oracle
                                  else position_space)
        self._task = None if task is None else self.check_task(task)
        self._state: np.ndarray | None = None
        self._path: list[np.ndarray] = []

    @classmethod
    def _draw(cls, n: int, rng: np.random.Generator | np.random.RandomState) -> list[Task]:
        goals = rng.uniform(GOAL_LOW, GOAL_HIGH, size=(n, 2))
        return [{"goal": (float(g[0]), float(g[1]))} for g in goals]

    def _goal(self) -> np.ndarray:
        return np.asarray(self._ensure_task()["goal"], dtype=np.float64)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._apply_reset_options(options)
        goal = self._goal()
        self._state = np.zeros(2, dtype=np.float64)
        self._path = [self._state.copy()]
        distance = float(np.linalg.norm(self._state - goal))
        return self._observe(self._state.copy()), {"goal": goal, "distance": distance}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        goal = self._goal()
        velocity = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -MAX_SPEED, MAX_SPEED)
        # the original's order: move, then measure the new position's offset from the goal
        self._state = self._state + velocity
        x, y = self._state
        x -= goal[0]
        y -= goal[1]
        squared = x ** 2 + y ** 2
        reward = float(-squared if self.squared_distance else -(squared ** 0.5))
        terminated = bool(abs(x) < GOAL_TOLERANCE and abs(y) < GOAL_TOLERANCE)
        self._path.append(self._state.copy())
        info = {"goal": goal, "distance": float(squared ** 0.5)}
        return self._observe(self._state.copy()), reward, terminated, False, info

    RENDER_LEGEND = "red: goal, blue: path, grey: goal region"

    def render(self) -> np.ndarray | None:
        """A top-down RGB image of [-1, 1]^2: the goal square (red), the path so far (blue)."""
        if self.render_mode != "rgb_array":
            return None
        size = self.render_size
        image = np.full((size, size, 3), 255, dtype=np.uint8)

        def pixel(point: np.ndarray) -> tuple[int, int]:
            col, row = (np.clip(point, -1.0, 1.0) + 1.0) / 2.0 * (size - 1)
            return int(round(size - 1 - row)), int(round(col))  # y up

        def dot(point: np.ndarray, color: tuple[int, int, int], radius: int) -> None:
            r, c = pixel(point)
            image[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = color

        # the goal distribution's support, as a grey frame
        top, left = pixel(np.array([GOAL_LOW, GOAL_HIGH]))
        bottom, right = pixel(np.array([GOAL_HIGH, GOAL_LOW]))
        image[top:bottom + 1, [left, right]] = 200
        image[[top, bottom], left:right + 1] = 200
        if self._task is not None:
            dot(self._goal(), (220, 30, 30), max(size // 40, 1))
        for point in self._path:
            dot(point, (60, 90, 220), max(size // 100, 0))
        if self._path:
            dot(self._path[-1], (20, 20, 120), max(size // 60, 1))
        return image
