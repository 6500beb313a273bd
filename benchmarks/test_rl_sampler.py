"""Throughput of the trajectory sampler (maml_bench/rl/sampler.py): environment steps per second
per core of `Sampler.sample` (one policy call per time step for all tasks x episodes, workers=1)
against a plain gymnasium loop over the same environments, tasks and policy (one env at a time,
one policy call per env step), both timed in this run; for 2D navigation and the half-cheetah.
Also the policy calls alone (T calls on [N, B, obs_dim]): the floor the sampler cannot beat.

Sizes: ``MAML_BENCH_SAMPLER_SCALE=full`` (default; navigation 20 tasks x 20 episodes x 100
steps, the paper's meta-batch; cheetah 8 x 5 x 100) or ``tiny`` (2 x 2 x 10, a smoke run).
Written to ``$MAML_BENCH_SAMPLER_RATIOS`` (default runs/benchmarks/rl-sampler-cpu.json;
the committed copy is results/benchmarks/rl-sampler-cpu.json).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")

from maml_bench.rl.envs import sample_tasks  # noqa: E402
from maml_bench.rl.policy import GaussianMLPPolicy  # noqa: E402
from maml_bench.rl.sampler import Sampler, reset_seed, scale_actions  # noqa: E402

SCALE = os.environ.get("MAML_BENCH_SAMPLER_SCALE", "full")
if SCALE not in ("full", "tiny"):
    raise ValueError(f"MAML_BENCH_SAMPLER_SCALE must be full or tiny, got {SCALE!r}")
OUT = Path(os.environ.get("MAML_BENCH_SAMPLER_RATIOS", "runs/benchmarks/rl-sampler-cpu.json"))

# name -> (env id, tasks, episodes per task, horizon, sampler rounds, plain-loop rounds)
CASES = {
    "navigation": ("maml_bench/Navigation2D-v0", 20, 20, 100, 5, 2),
    "half_cheetah": ("maml_bench/HalfCheetahVel-v0", 8, 5, 100, 5, 2),
}
if SCALE == "tiny":
    CASES = {name: (env_id, 2, 2, 10, 2, 1) for name, (env_id, *_) in CASES.items()}

STEPS_PER_S: dict[str, dict[str, float]] = {}  # case -> {"sampler"|"plain_loop"|...: steps/s}
MEDIAN_STEPS_PER_S: dict[str, dict[str, float]] = {}


class Setup:
    """The environments, tasks and policy one case's timings share."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.env_id, self.n_tasks, self.k, self.horizon, self.rounds, self.plain_rounds = (
            CASES[name])
        self.tasks = sample_tasks(self.env_id, self.n_tasks, np.random.default_rng(0))
        spec_env = gym.make(self.env_id)
        obs_dim = spec_env.observation_space.shape[0]
        act_dim = spec_env.action_space.shape[0]
        spec_env.close()
        torch.manual_seed(0)
        self.policy = GaussianMLPPolicy(obs_dim, act_dim)  # the paper's 2 x 100 ReLU
        self.params = {k: v.detach() for k, v in self.policy.params().items()}
        self.sampler = Sampler(self.env_id, self.k, self.n_tasks, self.horizon)
        # the plain loop's own envs, made as a user would (gym.make, default wrappers)
        self.envs = [gym.make(self.env_id) for _ in range(self.n_tasks * self.k)]
        self.seeds = itertools.count()
        self.steps = 0  # env steps of the last call

    def sample(self) -> None:
        episodes = self.sampler.sample(self.policy, self.params, self.tasks, next(self.seeds))
        self.steps = int(episodes.mask.sum())

    def plain_loop(self) -> None:
        """One env at a time, one policy call per step: the baseline a batched sampler beats."""
        seed = next(self.seeds)
        generator = torch.Generator().manual_seed(seed)
        steps = 0
        with torch.no_grad():
            for i, task in enumerate(self.tasks):
                for b in range(self.k):
                    env = self.envs[i * self.k + b]
                    low, high = env.action_space.low, env.action_space.high
                    env.unwrapped.set_task(task)
                    obs, _ = env.reset(seed=reset_seed(seed, i, b))
                    for _ in range(self.horizon):
                        x = torch.as_tensor(obs, dtype=torch.float32)
                        action = self.policy.sample(self.params, x, generator).numpy()
                        obs, _, terminated, truncated, _ = env.step(
                            scale_actions(action, low, high))
                        steps += 1
                        if terminated or truncated:
                            break
        self.steps = steps

    def policy_only(self) -> None:
        """The sampler's policy calls alone, on fixed observations."""
        generator = torch.Generator().manual_seed(next(self.seeds))
        obs = torch.zeros(self.n_tasks, self.k, self.policy.obs_dim)
        with torch.no_grad():
            for _ in range(self.horizon):
                self.policy.sample(self.params, obs, generator).numpy()
        self.steps = self.n_tasks * self.k * self.horizon

    def close(self) -> None:
        self.sampler.close()
        for env in self.envs:
            env.close()


@pytest.fixture(scope="module", params=list(CASES))
def setup(request):
    torch.set_num_threads(1)  # per core: one thread, one process (workers=1)
    case = Setup(request.param)
    yield case
    case.close()


def record(case: Setup, what: str, benchmark) -> None:
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing timed
        return
    stats = benchmark.stats.stats
    STEPS_PER_S.setdefault(case.name, {})[what] = case.steps / stats.min
    MEDIAN_STEPS_PER_S.setdefault(case.name, {})[what] = case.steps / stats.median


def test_sampler(benchmark, setup):
    benchmark.pedantic(setup.sample, rounds=setup.rounds, iterations=1, warmup_rounds=1)
    record(setup, "sampler", benchmark)


def test_plain_gymnasium_loop(benchmark, setup):
    benchmark.pedantic(setup.plain_loop, rounds=setup.plain_rounds, iterations=1,
                       warmup_rounds=0)
    record(setup, "plain_loop", benchmark)


def test_policy_calls_only(benchmark, setup):
    benchmark.pedantic(setup.policy_only, rounds=setup.rounds, iterations=1, warmup_rounds=1)
    record(setup, "policy_only", benchmark)


def test_ratios():
    """Sampler over plain loop, per case, from timings taken above in this run (the minimum
    round, as in conftest.py: the least disturbed reading on a shared machine)."""
    cases = {name: rates for name, rates in STEPS_PER_S.items()
             if {"sampler", "plain_loop"} <= rates.keys()}
    if not cases:
        pytest.skip("needs the timings of this file (run the whole file, benchmarks enabled)")
    payload = {
        "what": "environment steps per second per core (workers=1, 1 torch thread)",
        "scale": SCALE,
        "cases": {name: {"env_id": CASES[name][0], "tasks": CASES[name][1],
                         "episodes_per_task": CASES[name][2], "horizon": CASES[name][3],
                         "steps_per_s": rates, "median_steps_per_s": MEDIAN_STEPS_PER_S[name],
                         "sampler_over_plain_loop": rates["sampler"] / rates["plain_loop"],
                         "sampler_over_policy_only": (rates["sampler"] / rates["policy_only"]
                                                      if "policy_only" in rates else None)}
                  for name, rates in cases.items()},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "gymnasium": gym.__version__, "device": "cpu",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    for name, row in payload["cases"].items():
        print(f"{name}: sampler {row['steps_per_s']['sampler']:,.0f} steps/s, plain loop "
              f"{row['steps_per_s']['plain_loop']:,.0f}: {row['sampler_over_plain_loop']:.1f}x")
    if SCALE == "full":  # batching must pay off at the paper's sizes
        assert all(row["sampler_over_plain_loop"] > 1.0 for row in payload["cases"].values())
