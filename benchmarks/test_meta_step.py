"""One MAML sinusoid meta-training step (25 tasks, K = 10, one inner step, Adam): ours against
the per-task autograd loop (the way learn2learn and `higher` work) and against `higher`.

Goals (issue 2): ours at least 8x faster than the per-task loop, and fast enough that the
70,000-iteration paper run trains in under 3 minutes on a 2-core machine (see test_goals).
"""

from __future__ import annotations

import pytest
import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.functional import make_batched_forward, meta_loss, reference_meta_loss
from maml_bench.core.higher_check import higher_meta_gradient
from maml_bench.tasks.sinusoid import Sinusoid, SinusoidConfig

from .conftest import TIMINGS


def maml_setup():
    bench = Sinusoid(SinusoidConfig())
    algo = ALGORITHMS.get("maml")(bench, bench.config, seed=0)
    return bench, algo


def step_with(algo, compute_loss):
    """One meta-step: sample 25 tasks, meta-loss, backward, Adam (same work for every path)."""
    c = algo.config

    def step():
        batch = algo.benchmark.train_batch(algo.gen, c.meta_batch, c.train_shots, c.train_query)
        algo.optimizer.zero_grad(set_to_none=True)
        compute_loss(batch)
        algo.optimizer.step()

    return step


def test_ours(benchmark, record_timing):
    _, algo = maml_setup()
    counter = iter(range(10**9))
    benchmark.pedantic(lambda: algo.train_step(next(counter)), rounds=300, iterations=5,
                       warmup_rounds=20)
    record_timing("ours", benchmark)


def test_per_task_autograd_loop(benchmark, record_timing):
    bench, algo = maml_setup()

    def loss(batch):
        reference_meta_loss(algo.model, algo.theta, batch, bench.loss, 1, 0.01).mean().backward()

    benchmark.pedantic(step_with(algo, loss), rounds=40, iterations=2, warmup_rounds=3)
    record_timing("per_task_loop", benchmark)


def test_higher(benchmark, record_timing):
    bench, algo = maml_setup()

    def loss(batch):
        theta = {k: v.detach() for k, v in algo.theta.items()}
        grads = higher_meta_gradient(algo.model, theta, batch, bench.loss, 1, 0.01)
        for name, p in algo.theta.items():
            p.grad = grads[name]

    benchmark.pedantic(step_with(algo, loss), rounds=20, iterations=2, warmup_rounds=2)
    record_timing("higher", benchmark)


def test_vmap_functional_call(benchmark, record_timing):
    # Last on purpose: the per-task loop timed after this test ran about twice as slow as when
    # timed before it (docs/speed.md).
    bench, algo = maml_setup()
    forward = make_batched_forward(algo.model, prefer_fast=False)

    def loss(batch):
        meta_loss(forward, algo.theta, batch, bench.loss, 1, 0.01).mean().backward()

    benchmark.pedantic(step_with(algo, loss), rounds=60, iterations=2, warmup_rounds=5)
    record_timing("vmap_functional_call", benchmark)


def test_goals():
    """The issue's speed goal as a ratio of timings taken above in this same run: at least 8x
    faster than the per-task loop. (The 70k-iteration wall time is printed as a projection; on
    a shared VM an absolute bound would test the neighbours, so the full run's own
    train_seconds in results/ is the evidence for it.)"""
    if not {"ours", "per_task_loop"} <= TIMINGS.keys():
        pytest.skip("needs the timing benchmarks of this run (run the whole file)")
    assert TIMINGS["per_task_loop"] / TIMINGS["ours"] >= 8.0
    assert TIMINGS["higher"] > TIMINGS["ours"]


def test_first_order_is_cheaper(benchmark, record_timing):
    """FOMAML skips second derivatives: its step must cost less than MAML's."""
    bench = Sinusoid(SinusoidConfig())
    algo = ALGORITHMS.get("fomaml")(bench, bench.config, seed=0)
    counter = iter(range(10**9))
    benchmark.pedantic(lambda: algo.train_step(next(counter)), rounds=300, iterations=5,
                       warmup_rounds=20)
    if "ours" in TIMINGS:
        record_timing("fomaml", benchmark)
        assert TIMINGS["fomaml"] < TIMINGS["ours"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
