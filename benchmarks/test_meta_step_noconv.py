"""The no-conv Omniglot meta-step (the paper's 784-256-128-64-64 MLP with batch norm, 5-way
1-shot, meta-batch 32, one inner step of 0.4, second order), on real Omniglot episodes: our
default path (path=auto: `factored`, each task's adapted weights as the shared ones plus a
low-rank correction, core/factored.py) against the model's batched forward (per-task weight
copies) and the per-task loop, as ratios of timings taken in this run.

Written to $MAML_BENCH_NOCONV_RATIOS (default
results/benchmarks/omniglot-noconv-meta-step-cpu.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from maml_bench.core.backends import query_losses
from maml_bench.tasks.fewshot.data_root import data_root

from .test_meta_step_omniglot import maml_for, step_with

pytestmark = pytest.mark.skipif(not (data_root() / "omniglot").is_dir(),
                                reason="needs the real Omniglot under the data root")
EXPERIMENT = "omniglot-5w1s-noconv-v1"
TIMES: dict[str, float] = {}
OUT = Path(os.environ.get("MAML_BENCH_NOCONV_RATIOS",
                          "runs/benchmarks/omniglot-noconv-meta-step-cpu.json"))


@pytest.fixture(scope="module")
def maml():
    return maml_for(EXPERIMENT)


def backend_grads(algo, backend: str):
    def grads(batch):
        loss = query_losses(backend, algo.problem, algo.theta, batch).mean()
        return torch.autograd.grad(loss, list(algo.theta.values()))

    return grads


def test_ours(benchmark, maml):
    assert maml.backend == "factored"
    counter = iter(range(10**9))
    benchmark.pedantic(lambda: maml.train_step(next(counter)), rounds=30, iterations=1,
                       warmup_rounds=3)
    TIMES["ours"] = benchmark.stats.stats.min


@pytest.mark.parametrize("backend", ["batched", "loop"])
def test_other_backend(benchmark, maml, backend):
    benchmark.pedantic(step_with(maml, backend_grads(maml, backend)), rounds=10, iterations=1,
                       warmup_rounds=1)
    TIMES[backend] = benchmark.stats.stats.min


def test_ratios():
    """Ratios of the timings above; factored must stay faster than both (measured ratios:
    docs/speed.md)."""
    if not {"ours", "batched", "loop"} <= TIMES.keys():
        pytest.skip("needs the timing benchmarks of this file (run the whole file)")
    payload = {
        "case": f"{EXPERIMENT} meta-step: meta-batch 32, second order, 1 inner step",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
        "min_ms": {k: v * 1e3 for k, v in TIMES.items()},
        "per_task_loop_over_ours": TIMES["loop"] / TIMES["ours"],
        "batched_over_ours": TIMES["batched"] / TIMES["ours"],
        "projected_60k_iterations_h": TIMES["ours"] * 60_000 / 3600,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    assert payload["per_task_loop_over_ours"] > 1.0 and payload["batched_over_ours"] > 1.0
