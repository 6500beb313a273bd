"""Task distributions shared by the meta-RL environments (MAML paper section 5.3).

Every environment holds one task, a dict of plain Python floats (JSON-friendly, comparable with
``==``), and exposes its distribution:

* ``sample_tasks(n, rng)``: training tasks, drawn from the run's ``numpy.random.Generator``;
* ``test_tasks()``: the 40 fixed evaluation tasks, drawn exactly as the original MAML test
  scripts drew them (``np.random.seed(s); np.random.uniform(low, high, size=40)``, i.e. a legacy
  MT19937 ``RandomState`` with its own seed, ``TEST_TASK_SEED``);
* ``set_task(task)`` / ``get_task()`` and the ``task`` property (so that
  ``VectorEnv.set_attr("task", [...])`` sets one task per sub-environment).

Disjointness of test and training tasks. Training tasks come from the run's ``Generator``
(PCG64 seeded through ``SeedSequence``); test tasks from a legacy ``RandomState`` stream that no
training code uses. For the continuous families (goal position, goal velocity) a training task
equals a test task only if two independent float64 uniform draws coincide exactly, an event of
probability zero (about 2**-52 per pair); tests check it for several run seeds. The direction
families have only two tasks (d = -1 or +1): every test task is also a training task, as in the
paper, and there is nothing to hold out.

Until a task is set, the first ``reset`` draws one from the environment's own ``np_random`` (the
original envs drew a goal at the first reset when none was given), so ``reset(seed=s)`` still
makes the whole episode reproducible. A task persists across resets until changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

N_TEST_TASKS = 40

Task = dict[str, Any]


class TaskMixin:
    """Task bookkeeping for a gymnasium env; subclasses define the distribution."""

    #: keys of a task dict, in the order their values enter ``task_array``
    TASK_KEYS: ClassVar[tuple[str, ...]] = ()
    #: length of ``task_array``
    TASK_DIM: ClassVar[int] = 0
    #: seed of the legacy ``RandomState`` that draws the test tasks (the original scripts' seed)
    TEST_TASK_SEED: ClassVar[int] = 1
    #: ``gymnasium.make`` arguments of a rendering env (`rl/render.py`)
    RENDER_KWARGS: ClassVar[dict[str, Any]] = {}
    #: what the colours of a rendered frame mean, printed on rollout GIFs ("" if nothing)
    RENDER_LEGEND: ClassVar[str] = ""

    _task: Task | None = None
    _oracle: bool = False

    # -- the distribution (class-level: it does not depend on an instance's options) --------

    @classmethod
    def _draw(cls, n: int, rng: np.random.Generator | np.random.RandomState) -> list[Task]:
        raise NotImplementedError

    @classmethod
    def sample_tasks(cls, n: int, rng: np.random.Generator) -> list[Task]:
        """``n`` training tasks drawn from ``rng`` (the run's generator)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        return cls._draw(int(n), rng)

    @classmethod
    def test_tasks(cls) -> list[Task]:
        """The 40 fixed test tasks: the original test scripts' draws, from ``TEST_TASK_SEED``."""
        return cls._draw(N_TEST_TASKS, np.random.RandomState(cls.TEST_TASK_SEED))

    @classmethod
    def check_task(cls, task: Mapping[str, Any]) -> Task:
        """A validated copy of ``task`` with plain float values (tuples for vectors)."""
        if not isinstance(task, Mapping) or set(task) != set(cls.TASK_KEYS):
            raise ValueError(f"{cls.__name__} task must be a dict with keys {cls.TASK_KEYS}, "
                             f"got {task!r}")
        out: Task = {}
        for key in cls.TASK_KEYS:
            value = np.asarray(task[key], dtype=np.float64)
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{cls.__name__} task {key} must be finite, got {task[key]!r}")
            out[key] = tuple(float(v) for v in value.ravel()) if value.ndim else float(value)
        return out

    @classmethod
    def task_array(cls, task: Mapping[str, Any]) -> np.ndarray:
        """The task as a float64 vector: what the oracle observation appends."""
        task = cls.check_task(task)
        return np.concatenate([np.atleast_1d(np.asarray(task[k], dtype=np.float64))
                               for k in cls.TASK_KEYS])

    # -- the current task ---------------------------------------------------------------------

    def set_task(self, task: Mapping[str, Any]) -> None:
        """Use ``task`` from the next step on (call ``reset`` to start a fresh episode)."""
        self._task = self.check_task(task)

    def get_task(self) -> Task:
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__} has no task yet: call set_task() or "
                               "reset() first")
        return dict(self._task)

    @property
    def task(self) -> Task | None:
        """The current task, None before the first ``set_task``/``reset``; settable."""
        return None if self._task is None else dict(self._task)

    @task.setter
    def task(self, task: Mapping[str, Any]) -> None:
        self.set_task(task)

    def _ensure_task(self) -> Task:
        if self._task is None:
            # as the original envs: draw a task at the first reset if none was given; from the
            # env's own seeded generator, so reset(seed=...) stays reproducible
            self._task = self._draw(1, self.np_random)[0]  # type: ignore[attr-defined]
        return self._task

    def _apply_reset_options(self, options: Mapping[str, Any] | None) -> None:
        # reset(options={"task": ...}) mirrors the original's reset(reset_args=goal)
        if options and "task" in options:
            self.set_task(options["task"])

    # -- oracle observation -------------------------------------------------------------------

    def _oracle_space(self, space: spaces.Box) -> spaces.Box:
        """``space`` extended by the task vector (unbounded: set_task accepts any finite value)."""
        extra = self.TASK_DIM
        low = np.concatenate([space.low, np.full(extra, -np.inf)])
        high = np.concatenate([space.high, np.full(extra, np.inf)])
        return spaces.Box(low=low, high=high, dtype=space.dtype)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        if not self._oracle:
            return obs
        return np.concatenate([obs, self.task_array(self._ensure_task())]).astype(obs.dtype)

