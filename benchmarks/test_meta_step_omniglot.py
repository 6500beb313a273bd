"""The Omniglot 5-way 1-shot MAML meta-step (meta-batch 32, second order, one inner step of
0.4, the paper's Conv4 at 28 x 28), on real Omniglot episodes: our default path (path=auto:
`fused`, tasks as groups of one grouped convolution with hand-written second derivatives, in
task_chunk=auto's passes of 8 tasks; also the whole batch and passes of 4) against the
previous default (`batched`, PyTorch's own double backward), the per-task autograd loop and
`higher`, as ratios of timings taken in this run; and the cost of drawing an episode batch
against a meta-step.

Every path on one thread (a run given one CPU: task_threads=auto resolves to 1), the per-core
comparison that travels between machines (the committed baseline's). On a machine with more
CPUs, also the whole machine: ours as a lone run there takes it (task_threads=auto: the tasks
split over every CPU) against the per-task loop on as many torch threads.

Written to $MAML_BENCH_OMNIGLOT_RATIOS (default runs/benchmarks/omniglot-meta-step-cpu.json;
the committed copy is results/benchmarks/omniglot-meta-step-cpu.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.chunking import machine_cpus
from maml_bench.core.functional import meta_loss, reference_meta_loss
from maml_bench.core.higher_check import higher_meta_gradient
from maml_bench.experiments import EXPERIMENTS
from maml_bench.memory import keep_freed_memory
from maml_bench.tasks.fewshot.data_root import data_root

pytestmark = pytest.mark.skipif(not (data_root() / "omniglot").is_dir(),
                                reason="needs the real Omniglot under the data root")
TIMES: dict[str, float] = {}
MEDIANS: dict[str, float] = {}
MAML_PATH: dict[str, str] = {}
OUT = Path(os.environ.get("MAML_BENCH_OMNIGLOT_RATIOS",
                          "runs/benchmarks/omniglot-meta-step-cpu.json"))


def maml_for(experiment: str):
    """MAML on an Omniglot experiment's paper configuration, on one thread (task_threads=1,
    as a run given one CPU) and with glibc keeping freed memory, as every run
    (maml_bench/memory.py; every timed path benefits)."""
    import dataclasses

    from maml_bench.tasks.fewshot.episodes import FewShot

    torch.set_num_threads(1)
    keep_freed_memory()
    config = dataclasses.replace(EXPERIMENTS.get(experiment).config, task_threads=1)
    return ALGORITHMS.get("maml")(FewShot(config), config, seed=0)


@pytest.fixture(scope="module")
def maml():
    return maml_for("omniglot-5w1s-v1")


def record(name: str, benchmark) -> None:
    TIMES[name] = benchmark.stats.stats.min
    MEDIANS[name] = benchmark.stats.stats.median


def step_with(algo, loss_fn):
    c = algo.config

    def step():
        batch = algo.benchmark.train_batch(algo.gen, c.meta_batch, c.train_shots, c.train_query)
        params = list(algo.theta.values())
        for p, g in zip(params, loss_fn(batch), strict=True):
            p.grad = g
        algo.optimizer.step()

    return step


def test_ours(benchmark, maml):
    MAML_PATH["path"] = maml.backend
    counter = iter(range(10**9))
    benchmark.pedantic(lambda: maml.train_step(next(counter)), rounds=15, iterations=1,
                       warmup_rounds=2)
    record("ours", benchmark)


def time_train_steps(benchmark, maml, name: str, **changes) -> None:
    """Time `maml`'s own training step with its config changed by `changes`, as `name`."""
    import dataclasses

    counter = iter(range(10**9))
    full = maml.config
    maml.config = dataclasses.replace(full, **changes)
    try:
        benchmark.pedantic(lambda: maml.train_step(next(counter)), rounds=15, iterations=1,
                           warmup_rounds=2)
    finally:
        maml.config = full
    record(name, benchmark)


def loop_grads(maml):
    """The per-task loop's meta-gradient of a batch."""
    c = maml.config

    def grads(batch):
        loss = reference_meta_loss(maml.model, maml.theta, batch, maml.benchmark.loss,
                                   c.inner_steps, c.inner_lr).mean()
        return torch.autograd.grad(loss, list(maml.theta.values()))

    return grads


@pytest.mark.parametrize("chunk", [0, 4, 8])
def test_ours_in_task_chunks(benchmark, maml, chunk):
    """The same meta-gradient, tasks in other chunks (task_chunk; 0: the whole batch)."""
    time_train_steps(benchmark, maml, f"ours_chunk{chunk}", task_chunk=chunk)


ALL_CPUS = pytest.mark.skipif(machine_cpus() < 2,
                              reason="one CPU: the whole machine is the per-core comparison")


@ALL_CPUS
def test_ours_on_all_cpus(benchmark, maml):
    """The default path as a lone run on this machine takes it: task_threads=auto, the tasks
    split over every CPU, one thread each."""
    time_train_steps(benchmark, maml, "ours_all_cpus", task_threads=machine_cpus())


@ALL_CPUS
def test_per_task_loop_on_all_cpus(benchmark, maml):
    """The per-task loop given the same CPUs the way it can use them: torch's own threads."""
    torch.set_num_threads(machine_cpus())
    try:
        benchmark.pedantic(step_with(maml, loop_grads(maml)), rounds=8, iterations=1,
                           warmup_rounds=1)
    finally:
        torch.set_num_threads(1)
    record("per_task_loop_all_cpus", benchmark)


def test_batched(benchmark, maml):
    """The previous default: the same grouped forward through PyTorch's own ops."""
    c = maml.config

    def grads(batch):
        loss = meta_loss(maml.model.batched_forward, maml.theta, batch, maml.benchmark.loss,
                         c.inner_steps, c.inner_lr).mean()
        return torch.autograd.grad(loss, list(maml.theta.values()))

    benchmark.pedantic(step_with(maml, grads), rounds=10, iterations=1, warmup_rounds=1)
    record("batched", benchmark)


def test_per_task_loop(benchmark, maml):
    benchmark.pedantic(step_with(maml, loop_grads(maml)), rounds=8, iterations=1,
                       warmup_rounds=1)
    record("per_task_loop", benchmark)


def test_higher(benchmark, maml):
    c = maml.config

    def grads(batch):
        theta = {k: v.detach() for k, v in maml.theta.items()}
        out = higher_meta_gradient(maml.model, theta, batch, maml.benchmark.loss,
                                   c.inner_steps, c.inner_lr)
        return [out[k] for k in maml.theta]

    benchmark.pedantic(step_with(maml, grads), rounds=5, iterations=1, warmup_rounds=1)
    record("higher", benchmark)


def test_first_order(benchmark, maml):
    c = maml.config

    def grads(batch):
        loss = meta_loss(maml.model.batched_forward, maml.theta, batch, maml.benchmark.loss,
                         c.inner_steps, c.inner_lr, first_order=True).mean()
        return torch.autograd.grad(loss, list(maml.theta.values()))

    benchmark.pedantic(step_with(maml, grads), rounds=15, iterations=1, warmup_rounds=2)
    record("first_order", benchmark)


def test_episode_sampling(benchmark, maml):
    c = maml.config
    benchmark.pedantic(lambda: maml.benchmark.train_batch(maml.gen, c.meta_batch, c.train_shots,
                                                          c.train_query),
                       rounds=50, iterations=1, warmup_rounds=3)
    record("episode_sampling", benchmark)


def test_ratios():
    """Ratios of timings taken above in this run; the sampling goal (< 5% of a meta-step) is
    asserted, the per-task-loop ratio is reported, not asserted (its 2x goal is not met per
    core: docs/speed.md)."""
    if not {"ours", "per_task_loop", "episode_sampling"} <= TIMES.keys():
        pytest.skip("needs the timing benchmarks of this file (run the whole file)")
    ours, nan = TIMES["ours"], float("nan")
    payload = {
        "case": "omniglot-5w1s-v1 meta-step: meta-batch 32, second order, 1 inner step",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
        "ours_path": MAML_PATH.get("path"),
        "min_ms": {k: v * 1e3 for k, v in TIMES.items()},
        "median_ms": {k: v * 1e3 for k, v in MEDIANS.items()},
        "per_task_loop_over_ours": TIMES["per_task_loop"] / ours,
        "cpus": machine_cpus(),
        "all_cpus_per_task_loop_over_ours": TIMES.get("per_task_loop_all_cpus", nan)
        / TIMES.get("ours_all_cpus", nan),
        "per_task_loop_over_batched": TIMES["per_task_loop"] / TIMES.get("batched", nan),
        "batched_over_ours": TIMES.get("batched", nan) / ours,
        "per_task_loop_over_best_chunk": TIMES["per_task_loop"] / min(
            [v for k, v in TIMES.items() if k.startswith("ours") and k != "ours_all_cpus"]),
        "higher_over_ours": TIMES.get("higher", float("nan")) / ours,
        "second_over_first_order": ours / TIMES.get("first_order", float("nan")),
        "sampling_share_of_step": TIMES["episode_sampling"] / ours,
        "projected_60k_iterations_h": ours * 60_000 / 3600,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    assert payload["sampling_share_of_step"] < 0.05
    assert payload["per_task_loop_over_ours"] > 1.0  # the default never slower than the loop
