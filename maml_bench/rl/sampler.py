"""Trajectory sampler: episodes of many tasks at once in the `Episodes` layout [N, T, B, ...].

`Sampler` keeps ``max_tasks * episodes_per_task`` environments alive across calls (a MuJoCo env
costs milliseconds to build) and, at every time step, makes ONE policy call for all
tasks x episodes (observations [N, B, obs_dim], shared or per-task parameters), then steps the
environments that are still running.

Actions, as the original's rllab ``normalize()`` wrapper: the policy samples a raw action ``a``
(unbounded, Gaussian); the environment receives ``lb + (clip(a, -1, 1) + 1) * 0.5 * (ub - lb)``
with ``[lb, ub]`` its action space (`scale_actions`): for 2D navigation ``0.1 * clip(a, -1, 1)``,
for the cheetah and ant (action space [-1, 1]) ``clip(a, -1, 1)``. ``Episodes.actions`` holds
the raw ``a``, the value the policy's ``log_prob`` is evaluated on.

Episode ends: the horizon is ``horizon`` or the env's registered ``max_episode_steps``. An episode
that terminates (or is truncated by the env itself) before the horizon keeps its last step: the
step that ended it is valid (mask 1, its reward counts), later steps have mask 0 and zeros
everywhere. A finished environment is not stepped again in that call (no autoreset), so nothing
of a next episode leaks into the batch. The environments are the bare envs (``gym.make(...)
.unwrapped``): the sampler applies the horizon itself.

Reproducibility: ``sample(..., seed)`` seeds the action noise with a ``torch.Generator`` (one
draw of [N, B, act_dim] per step, for finished episodes too, so the stream does not depend on
when episodes end) and resets environment (task i, episode k) with `reset_seed(seed, i, k)`.
The same seed, parameters and tasks give bit-identical `Episodes`, whatever ``workers`` is.

Workers: ``workers=1`` steps every environment in this process. ``workers > 1`` spreads the
environments over that many processes (spawned; environment slot j = task i * B + episode k
lives in worker j % workers, so any number of tasks is spread evenly), each stepping its share
and sending back numpy arrays through a pipe; the policy stays in this process, as with
gymnasium's ``AsyncVectorEnv``. A worker that dies, fails or does not answer within
``Sampler.timeout`` seconds raises a one-line ``RuntimeError`` naming it and the env id; the
sampler then shuts its workers down and refuses further calls. Episodes already returned are
never touched again (each call fills fresh buffers). Scripts that use workers need the usual
``if __name__ == "__main__":`` guard (the spawn start method re-imports the main module).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import time
import traceback
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

import maml_bench.rl.envs as rl_envs  # registers the maml_bench/* ids

# torch is imported where it is used: a spawned worker imports this module and never needs it,
# and importing it would double each worker's start-up time
if TYPE_CHECKING:
    from torch import Tensor

    from maml_bench.rl.episodes import Episodes
    from maml_bench.rl.policy import GaussianMLPPolicy


def reset_seed(seed: int, task_index: int, episode_index: int) -> int:
    """The ``reset(seed=...)`` of episode ``episode_index`` of task ``task_index`` in a
    ``sample(..., seed)`` call: a 32-bit draw of ``SeedSequence([seed, task, episode])``, so
    neighbouring seeds give unrelated environment streams."""
    state = np.random.SeedSequence([seed, task_index, episode_index]).generate_state(1)
    return int(state[0])


def scale_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """rllab's ``normalize()``: raw policy actions in [-1, 1] units to the env's box, in float64;
    values outside [-1, 1] are clipped first."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    clipped = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    return low + (clipped + 1.0) * 0.5 * (high - low)


# -- a group of environments: what one worker (or this process) steps ----------------------


class _EnvGroup:
    """``n`` environments of one id, addressed by local index; results as stacked arrays."""

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any], n: int) -> None:
        self.envs = [gym.make(env_id, **env_kwargs).unwrapped for _ in range(n)]
        first = self.envs[0]
        obs_space, act_space = first.observation_space, first.action_space
        if not isinstance(act_space, gym.spaces.Box) or not (
                np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
            raise ValueError(f"{env_id}: the sampler needs a bounded Box action space, "
                             f"got {act_space}")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"{env_id}: the sampler needs a flat Box observation space, "
                             f"got {obs_space}")
        self.obs_dim = int(obs_space.shape[0])
        self.spaces = (self.obs_dim, np.array(act_space.low), np.array(act_space.high))

    def reset(self, indices: Sequence[int], tasks: Sequence[Mapping[str, Any]],
              seeds: Sequence[int]) -> np.ndarray:
        obs = np.empty((len(indices), self.obs_dim), dtype=np.float32)
        for row, (j, task, seed) in enumerate(zip(indices, tasks, seeds, strict=True)):
            env = self.envs[j]
            env.set_task(task)  # before reset: the first observation may depend on the task
            obs[row] = env.reset(seed=seed)[0]
        return obs

    def step(self, indices: np.ndarray, actions: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step env ``indices[r]`` with ``actions[r]`` -> observations (float32), rewards
        (float64), done (terminated or truncated)."""
        m = len(indices)
        obs = np.empty((m, self.obs_dim), dtype=np.float32)
        rewards = np.empty(m, dtype=np.float64)
        done = np.empty(m, dtype=bool)
        envs = self.envs
        for row, j in enumerate(indices.tolist()):
            o, r, terminated, truncated, _ = envs[j].step(actions[row])
            obs[row] = o
            rewards[row] = r
            done[row] = terminated or truncated
        return obs, rewards, done

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker_main(conn: Connection, env_id: str, env_kwargs: dict[str, Any], n: int) -> None:
    """A worker process: build ``n`` envs, then answer reset/step messages until "close"."""
    # Ctrl-C goes to the whole process group: let the main process decide and close us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    group = None
    try:
        group = _EnvGroup(env_id, env_kwargs, n)
        conn.send(("ok", group.spaces))
        while True:
            command, args = conn.recv()
            if command == "step":
                conn.send(("ok", group.step(*args)))
            elif command == "reset":
                conn.send(("ok", group.reset(*args)))
            elif command == "close":
                break
            else:
                raise ValueError(f"unknown command {command!r}")
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass  # the main process went away: just exit
    except Exception as error:  # report it as one line; the main process raises it
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", last))
    finally:
        if group is not None:
            group.close()
        conn.close()


def _shutdown(processes: list[mp.process.BaseProcess], conns: list[Connection]) -> None:
    """Stop the workers: ask politely, then terminate, then kill (never waits unboundedly)."""
    for conn in conns:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("close", None))
    deadline = time.monotonic() + 2.0
    for proc in processes:
        proc.join(max(deadline - time.monotonic(), 0.0))
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    for conn in conns:
        conn.close()


# -- the sampler ---------------------------------------------------------------------------


class Sampler:
    """Samples ``episodes_per_task`` episodes for each of up to ``max_tasks`` tasks per call.

    Args:
        env_id: a registered gymnasium id (``maml_bench/Navigation2D-v0``, ...) of an env with
            ``set_task``.
        episodes_per_task: B, the episodes (rollouts) per task.
        max_tasks: the most tasks one ``sample`` call takes; that many x B envs are kept alive.
        horizon: steps per episode (default: the id's registered ``max_episode_steps``).
        env_kwargs: keyword arguments of ``gym.make`` (``oracle=True``, ...).
        workers: processes that step the envs (1: this process); at most one per env.
    """

    #: seconds to wait for one answer of a worker before declaring it hung
    timeout: float = 120.0
    #: seconds to wait for a worker to start (spawn, imports, building its envs)
    start_timeout: float = 300.0

    def __init__(self, env_id: str, episodes_per_task: int, max_tasks: int,
                 horizon: int | None = None, env_kwargs: dict | None = None,
                 workers: int = 1) -> None:
        for name, value in (("episodes_per_task", episodes_per_task), ("max_tasks", max_tasks),
                            ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if horizon is None:
            horizon = gym.spec(env_id).max_episode_steps
            if horizon is None:
                raise ValueError(f"{env_id} registers no max_episode_steps: pass horizon")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        self.env_id = env_id
        self.episodes_per_task = episodes_per_task
        self.max_tasks = max_tasks
        self.horizon = horizon
        self.env_kwargs = dict(env_kwargs or {})
        self.n_envs = max_tasks * episodes_per_task
        self.workers = min(workers, self.n_envs)
        self._task_class = rl_envs.env_class(env_id)
        self._failure: str | None = None
        self._closed = False
        self._group: _EnvGroup | None = None
        self._processes: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []
        if self.workers == 1:
            self._group = _EnvGroup(env_id, self.env_kwargs, self.n_envs)
            spaces = self._group.spaces
        else:
            spaces = self._start_workers()
        self.obs_dim, self.action_low, self.action_high = spaces
        self.act_dim = int(self.action_low.shape[0])

    # -- workers ---------------------------------------------------------------------------

    def _start_workers(self) -> tuple[int, np.ndarray, np.ndarray]:
        if mp.current_process().daemon:  # multiprocessing would fail with a bare assertion
            raise RuntimeError(f"Sampler({self.env_id!r}, workers={self.workers}) cannot start "
                               "worker processes inside a daemonic process (a multiprocessing "
                               "pool worker, e.g. a run with --jobs > 1): use workers=1")
        ctx = mp.get_context("spawn")  # fork is unsafe in a process running torch threads
        for w in range(self.workers):
            n = len(range(w, self.n_envs, self.workers))
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, name=f"maml-bench-sampler-{w}",
                               args=(child, self.env_id, self.env_kwargs, n), daemon=True)
            proc.start()
            child.close()  # only the worker holds its end: its death is an EOF here
            self._processes.append(proc)
            self._conns.append(parent)
        # workers are shut down at interpreter exit or garbage collection even without close()
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._conns)
        answers = self._gather(range(self.workers), self.start_timeout)
        return answers[0]

    def _fail(self, message: str) -> RuntimeError:
        """Record the failure, stop every worker, and return the error to raise."""
        self._failure = message
        # the survivors may be mid-step or hung (stopped, deadlocked): no polite close
        for proc in self._processes:
            if proc.is_alive():
                proc.kill()
        self.close()
        return RuntimeError(message)

    def _describe(self, w: int) -> str:
        return f"sampler worker {w} (pid {self._processes[w].pid}) for {self.env_id}"

    def _died(self, w: int) -> RuntimeError:
        proc = self._processes[w]
        proc.join(0.5)
        return self._fail(f"{self._describe(w)} died (exit code {proc.exitcode})")

    def _send(self, w: int, message: tuple[str, Any]) -> None:
        try:
            self._conns[w].send(message)
        except (BrokenPipeError, OSError):
            raise self._died(w) from None

    def _gather(self, workers: Sequence[int], timeout: float) -> list[Any]:
        """The answer of each worker in ``workers`` (in order), within ``timeout`` seconds."""
        answers = []
        for w in workers:
            conn, proc = self._conns[w], self._processes[w]
            deadline = time.monotonic() + timeout
            # poll returns as soon as data (or EOF) is there; the slice bounds how long a dead
            # worker whose pipe is somehow still open can go unnoticed
            while not conn.poll(0.1):
                if not proc.is_alive() and not conn.poll(0.2):  # dead, no last word or EOF
                    raise self._died(w)
                if time.monotonic() > deadline:
                    raise self._fail(f"{self._describe(w)} did not answer within {timeout:g} s")
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise self._died(w) from None
            if status != "ok":
                raise self._fail(f"{self._describe(w)} failed: {payload}")
            answers.append(payload)
        return answers

    # -- the two operations, in-process or spread over the workers ----------------------------

    def _reset(self, tasks: list[dict[str, Any]], seeds: list[int]) -> np.ndarray:
        n = len(tasks)
        if self._group is not None:
            return self._group.reset(range(n), tasks, seeds)
        obs = np.empty((n, self.obs_dim), dtype=np.float32)
        used = [w for w in range(self.workers) if w < n]
        for w in used:
            self._send(w, ("reset", (list(range(len(range(w, n, self.workers)))),
                                     tasks[w::self.workers], seeds[w::self.workers])))
        for w, part in zip(used, self._gather(used, self.timeout), strict=True):
            obs[w::self.workers] = part
        return obs

    def _step(self, active: np.ndarray, actions: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._group is not None:
            return self._group.step(active, actions)
        m = len(active)
        obs = np.empty((m, self.obs_dim), dtype=np.float32)
        rewards = np.empty(m, dtype=np.float64)
        done = np.empty(m, dtype=bool)
        owner = active % self.workers
        rows_of = {w: np.flatnonzero(owner == w) for w in range(self.workers)}
        used = [w for w, rows in rows_of.items() if rows.size]
        for w in used:
            rows = rows_of[w]
            self._send(w, ("step", (active[rows] // self.workers, actions[rows])))
        for w, (o, r, d) in zip(used, self._gather(used, self.timeout), strict=True):
            rows = rows_of[w]
            obs[rows], rewards[rows], done[rows] = o, r, d
        return obs, rewards, done

    # -- public ------------------------------------------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (empty for ``workers=1``)."""
        return [p.pid for p in self._processes if p.pid is not None]

    def sample(self, policy: GaussianMLPPolicy, params: Mapping[str, Tensor],
               tasks: Sequence[Mapping], seed: int, deterministic: bool = False) -> Episodes:
        """Episodes of ``policy`` under ``params`` for every task, [len(tasks), T, B, ...].

        ``params``: shared (theta's shapes) or per task (a leading dimension len(tasks)). The
        returned tensors are float32 on the CPU; ``deterministic=True`` takes the mean action.
        """
        import torch

        from maml_bench.rl.episodes import Episodes

        if self._failure is not None:
            raise RuntimeError(f"sampler unusable after an earlier failure: {self._failure}")
        if self._closed:
            raise RuntimeError("sampler is closed")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        n_tasks = len(tasks)
        if not 1 <= n_tasks <= self.max_tasks:
            raise ValueError(f"got {n_tasks} tasks; this sampler takes 1 to {self.max_tasks}")
        if policy.obs_dim != self.obs_dim or policy.act_dim != self.act_dim:
            raise ValueError(f"policy maps {policy.obs_dim} -> {policy.act_dim}, {self.env_id} "
                             f"has observations {self.obs_dim} and actions {self.act_dim}")
        checked = [self._task_class.check_task(task) for task in tasks]
        params = {k: v.detach() for k, v in params.items()}
        if policy.is_batched(params):
            lead = {v.shape[0] for v in params.values()}
            if lead != {n_tasks}:
                raise ValueError(f"per-task params must have a leading dimension of "
                                 f"{n_tasks} (one per task), got {sorted(lead)}")
        reference = next(iter(params.values()))
        device, dtype = reference.device, reference.dtype

        k, horizon, seed = self.episodes_per_task, self.horizon, int(seed)
        n = n_tasks * k  # env slot j = task (j // k), episode (j % k)
        generator = torch.Generator(device=device).manual_seed(seed)
        seeds = [reset_seed(seed, j // k, j % k) for j in range(n)]
        obs_now = self._reset([checked[j // k] for j in range(n)], seeds)

        # time-major buffers so that step t is one contiguous [n, dim] block; fresh per call
        observations = np.zeros((horizon, n, self.obs_dim), dtype=np.float32)
        actions = np.zeros((horizon, n, self.act_dim), dtype=np.float32)
        rewards = np.zeros((horizon, n), dtype=np.float32)
        mask = np.zeros((horizon, n), dtype=np.float32)
        running = np.ones(n, dtype=bool)
        with torch.no_grad():
            for t in range(horizon):
                active = np.flatnonzero(running)
                if active.size == 0:
                    break
                obs_in = torch.from_numpy(obs_now).view(n_tasks, k, self.obs_dim)
                obs_in = obs_in.to(device=device, dtype=dtype)
                if deterministic:
                    raw = policy.distribution(params, obs_in).mean
                else:  # all n rows every step: the noise stream does not depend on who ended
                    raw = policy.sample(params, obs_in, generator)
                raw_np = raw.to(device="cpu", dtype=torch.float32).numpy().reshape(n, -1)
                taken = raw_np[active]
                next_obs, step_rewards, done = self._step(
                    active, scale_actions(taken, self.action_low, self.action_high))
                observations[t, active] = obs_now[active]
                actions[t, active] = taken
                rewards[t, active] = step_rewards
                mask[t, active] = 1.0
                obs_now[active] = next_obs
                running[active[done]] = False

        def task_major(array: np.ndarray) -> Tensor:
            # [T, N * B, ...] -> [N, T, B, ...]
            shaped = array.reshape(horizon, n_tasks, k, *array.shape[2:])
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(shaped, 1, 0)))

        return Episodes(observations=task_major(observations), actions=task_major(actions),
                        rewards=task_major(rewards), mask=task_major(mask))

    def close(self) -> None:
        """Close the environments and stop the workers (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            self._group.close()
            self._group = None
        if self._processes:
            self._finalizer()  # runs _shutdown once

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def sample_episodes(env_id: str, tasks: Sequence[Mapping], policy: GaussianMLPPolicy,
                    params: Mapping[str, Tensor], episodes_per_task: int, seed: int,
                    horizon: int | None = None, env_kwargs: dict | None = None,
                    workers: int = 1, deterministic: bool = False) -> Episodes:
    """One-shot `Sampler.sample`: builds the environments, samples, closes them."""
    with Sampler(env_id, episodes_per_task, len(tasks), horizon, env_kwargs, workers) as sampler:
        return sampler.sample(policy, params, tasks, seed, deterministic)


__all__ = ["Sampler", "reset_seed", "sample_episodes", "scale_actions"]
