"""Short accuracy regressions: fixed-seed quick trainings whose final metric must stay within
the band of the committed baseline (benchmarks/baseline.json, checked by
`python -m maml_bench.benchcheck`). A change that breaks learning without breaking a unit test
shows here.

Written to $MAML_BENCH_ACCURACY (default runs/benchmarks/accuracy-regression.json;
the committed copy is results/benchmarks/accuracy-regression.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.runner import plan_runs
from maml_bench.tasks import BENCHMARKS
from maml_bench.tasks.fewshot.data_root import data_root

OUT = Path(os.environ.get("MAML_BENCH_ACCURACY", "runs/benchmarks/accuracy-regression.json"))
RESULTS: dict[str, float] = {}


def train_and_evaluate(experiment: str, scale: str, overrides: list[str], shots: int, step: int,
                       tmp_path: Path) -> float:
    """MAML trained from seed 0 for the given iterations; the mean test metric after `step`
    fine-tuning steps with `shots` examples."""
    torch.set_num_threads(1)
    (run,) = plan_runs(experiment, scale, overrides, ["maml"], 1, tmp_path)
    from maml_bench.experiments import EXPERIMENTS

    bench = BENCHMARKS.get(EXPERIMENTS.get(experiment).benchmark)(run.config)
    algo = ALGORITHMS.get("maml")(bench, run.config, 0)
    for i in range(run.config.iterations):
        algo.train_step(i)
    return algo.evaluate()[shots][:, step].mean().item()


def test_sinusoid_maml(tmp_path):
    """The paper's network, 2,000 meta-iterations (a few seconds): MSE after 10 steps with
    K = 10 on 100 test tasks."""
    RESULTS["sinusoid_maml_mse"] = train_and_evaluate(
        "sinusoid-table2-v1", "quick", ["iterations=2000", "test_tasks=100"], 10, 10, tmp_path)


@pytest.mark.skipif(not (data_root() / "omniglot").is_dir(),
                    reason="needs the real Omniglot under the data root")
def test_omniglot_maml(tmp_path):
    """5-way 1-shot, 200 meta-iterations of 8 tasks, 16 filters (under a minute): accuracy
    after 3 steps on 100 test episodes; one task thread, so that every machine trains the same
    numbers."""
    RESULTS["omniglot_maml_accuracy"] = train_and_evaluate(
        "omniglot-5w1s-v1", "tiny", ["iterations=200", "meta_batch=8", "filters=16",
                                     "task_threads=1", "test_tasks=100", "eval_chunk=100"],
        1, 3, tmp_path)


def test_write_results():
    if not RESULTS:
        pytest.skip("run the whole file")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({**RESULTS, "torch": torch.__version__}, indent=2) + "\n")
