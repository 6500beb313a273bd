"""The MiniImagenet 5-way 1-shot MAML meta-step (miniimagenet-5w1s-v2, the reference code's
protocol: meta-batch 4, five inner steps of 0.01, 15 queries per class, second order, the
paper's Conv4 with 32 filters at 84 x 84), on real MiniImagenet episodes: our default path
(path=auto) against the per-task autograd loop, as ratios of timings taken in this run; also
first order and the cost of drawing an episode batch against a meta-step.

Per core: every path on one thread (a run given one CPU: task_threads=auto resolves to 1), the
comparison that travels between machines. On a machine with more CPUs, also the whole
machine: ours as a lone run there takes it (task_threads=auto: for these large tasks, every CPU
as torch's threads) against the per-task loop on as many torch threads.

Written to $MAML_BENCH_MINIIMAGENET_RATIOS (default
runs/benchmarks/miniimagenet-meta-step-cpu.json; the committed copy is
results/benchmarks/miniimagenet-meta-step-cpu.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from maml_bench.core.chunking import machine_cpus
from maml_bench.core.functional import meta_loss
from maml_bench.results import atomic_write_text
from maml_bench.tasks.fewshot.data_root import data_root

from .test_meta_step_omniglot import loop_grads, maml_for, step_with

EXPERIMENT = "miniimagenet-5w1s-v2"
pytestmark = pytest.mark.skipif(not (data_root() / "miniimagenet").is_dir(),
                                reason="needs the real MiniImagenet under the data root")
TIMES: dict[str, float] = {}
MEDIANS: dict[str, float] = {}
MAML_PATH: dict[str, str] = {}
OUT = Path(os.environ.get("MAML_BENCH_MINIIMAGENET_RATIOS",
                          "runs/benchmarks/miniimagenet-meta-step-cpu.json"))
ROUNDS = 5  # a meta-step is seconds here: five rounds keep the file to a few minutes


@pytest.fixture(scope="module")
def maml():
    return maml_for(EXPERIMENT)


def record(name: str, benchmark) -> None:
    TIMES[name] = benchmark.stats.stats.min
    MEDIANS[name] = benchmark.stats.stats.median


def time_train_steps(benchmark, maml, name: str, **changes) -> None:
    """Time `maml`'s own training step with its config changed by `changes`, as `name`."""
    import dataclasses

    counter = iter(range(10**9))
    full = maml.config
    maml.config = dataclasses.replace(full, **changes)
    try:
        benchmark.pedantic(lambda: maml.train_step(next(counter)), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    finally:
        maml.config = full
    record(name, benchmark)


def test_ours(benchmark, maml):
    MAML_PATH["path"] = maml.backend
    time_train_steps(benchmark, maml, "ours")


def test_per_task_loop(benchmark, maml):
    benchmark.pedantic(step_with(maml, loop_grads(maml)), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    record("per_task_loop", benchmark)


ALL_CPUS = pytest.mark.skipif(machine_cpus() < 2,
                              reason="one CPU: the whole machine is the per-core comparison")


@ALL_CPUS
def test_ours_on_all_cpus(benchmark, maml):
    """The default path as a lone run on this machine takes it: for MiniImagenet's large tasks
    task_threads=auto gives the CPUs to torch's own threads (core/chunking.py; measured in
    results/benchmarks/task-threads-cpu.md), the tasks one after another."""
    torch.set_num_threads(machine_cpus())
    try:
        time_train_steps(benchmark, maml, "ours_all_cpus", task_threads=1)
    finally:
        torch.set_num_threads(1)


@ALL_CPUS
def test_per_task_loop_on_all_cpus(benchmark, maml):
    """The per-task loop given the same CPUs the way it can use them: torch's own threads."""
    torch.set_num_threads(machine_cpus())
    try:
        benchmark.pedantic(step_with(maml, loop_grads(maml)), rounds=ROUNDS, iterations=1,
                           warmup_rounds=1)
    finally:
        torch.set_num_threads(1)
    record("per_task_loop_all_cpus", benchmark)


def test_first_order(benchmark, maml):
    c = maml.config

    def grads(batch):
        loss = meta_loss(maml.model.batched_forward, maml.theta, batch, maml.benchmark.loss,
                         c.inner_steps, c.inner_lr, first_order=True).mean()
        return torch.autograd.grad(loss, list(maml.theta.values()))

    benchmark.pedantic(step_with(maml, grads), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    record("first_order", benchmark)


def test_episode_sampling(benchmark, maml):
    c = maml.config
    benchmark.pedantic(lambda: maml.benchmark.train_batch(maml.gen, c.meta_batch, c.train_shots,
                                                          c.train_query),
                       rounds=20, iterations=1, warmup_rounds=2)
    record("episode_sampling", benchmark)


def test_ratios():
    """Ratios of timings taken above in this run. Asserted: the default is never slower than
    the per-task loop, per core and on all CPUs (that is what path=auto promises); the sizes of
    the ratios are reported (docs/speed.md), not asserted."""
    if not {"ours", "per_task_loop", "episode_sampling"} <= TIMES.keys():
        pytest.skip("needs the timing benchmarks of this file (run the whole file)")
    ours, nan = TIMES["ours"], float("nan")
    payload = {
        "case": f"{EXPERIMENT} meta-step: meta-batch 4, second order, 5 inner steps, "
                "15 queries per class",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
        "ours_path": MAML_PATH.get("path"),
        "min_ms": {k: v * 1e3 for k, v in TIMES.items()},
        "median_ms": {k: v * 1e3 for k, v in MEDIANS.items()},
        "per_task_loop_over_ours": TIMES["per_task_loop"] / ours,
        "cpus": machine_cpus(),
        "all_cpus_per_task_loop_over_ours": TIMES.get("per_task_loop_all_cpus", nan)
        / TIMES.get("ours_all_cpus", nan),
        "ours_one_cpu_over_all_cpus": ours / TIMES.get("ours_all_cpus", nan),
        "second_over_first_order": ours / TIMES.get("first_order", nan),
        "sampling_share_of_step": TIMES["episode_sampling"] / ours,
        "projected_60k_iterations_h": ours * 60_000 / 3600,
    }
    atomic_write_text(OUT, json.dumps(payload, indent=2) + "\n")
    assert payload["per_task_loop_over_ours"] > 1.0
    if "ours_all_cpus" in TIMES and "per_task_loop_all_cpus" in TIMES:
        assert payload["all_cpus_per_task_loop_over_ours"] > 1.0
