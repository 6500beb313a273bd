"""Task-distribution environments registered with gymnasium under versioned ids.

Importing this package registers (MAML paper section 5.3; the original rllab envs):

* ``maml_bench/Navigation2D-v0``: ``navigation.Navigation2DEnv``, obs 2, action 2, horizon 100
* ``maml_bench/HalfCheetahVel-v0``, ``maml_bench/HalfCheetahDir-v0``:
  ``locomotion.HalfCheetah{Vel,Dir}Env``, obs 17, action 6, dt 0.05 s, horizon 200
* ``maml_bench/HalfCheetahVelRllabDt-v0``, ``maml_bench/HalfCheetahDirRllabDt-v0``: the same
  with ``frame_skip=1``, the original rllab cheetah's dt 0.01 s, horizon 200
* ``maml_bench/HalfCheetahVelRllab-v0``, ``maml_bench/HalfCheetahDirRllab-v0``: the original
  rllab cheetah on v5's model: dt 0.01 s, velocity of the centre of mass, 20-d observation
* ``maml_bench/AntVel-v0``, ``maml_bench/AntDir-v0``: ``locomotion.Ant{Vel,Dir}Env``, obs 105,
  action 8, dt 0.05 s, horizon 200

``oracle=True`` (``gymnasium.make(id, oracle=True)``) appends the task to the observation.
Entry points are strings, so MuJoCo is imported only when a MuJoCo env is made. Sub-processes
(``AsyncVectorEnv`` with the spawn or forkserver context) can make these ids as
``"maml_bench.rl.envs:maml_bench/Navigation2D-v0"``, which imports this package first.
"""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np

from maml_bench.rl.env_ids import _ENVS, ENV_IDS, NAMESPACE

from .base import N_TEST_TASKS, Task, TaskMixin

for _env_id, (_entry, _horizon, _kwargs) in _ENVS.items():
    if _env_id not in gym.registry:  # re-imports (e.g. in sub-processes) must not warn
        gym.register(id=_env_id, entry_point=f"{__name__}.{_entry}",
                     max_episode_steps=_horizon, kwargs=dict(_kwargs))


def env_class(env_id: str) -> type[TaskMixin]:
    """The environment class registered under ``env_id`` (imports its module)."""
    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        raise TypeError(f"{env_id} has a callable entry point, not a class path")
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


def get_test_tasks(env_id: str) -> list[Task]:
    """The 40 fixed test tasks of ``env_id`` (see ``TaskMixin.test_tasks``)."""
    return env_class(env_id).test_tasks()


def sample_tasks(env_id: str, n: int, rng: np.random.Generator) -> list[Task]:
    """``n`` training tasks of ``env_id`` from the run's ``numpy.random.Generator``."""
    return env_class(env_id).sample_tasks(n, rng)


__all__ = ["ENV_IDS", "N_TEST_TASKS", "NAMESPACE", "Task", "TaskMixin", "env_class",
           "get_test_tasks", "sample_tasks"]
