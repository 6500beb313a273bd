"""The MAML-TRPO meta-update (paper section 5.3): one TRPO step through the inner VPG step on
2D navigation episodes, with the KL Hessian-vector products in the Gauss-Newton form (the
default, `rl/fisher.py`) against the exact products that differentiate the KL's gradient,
timed in the same run.

Written to $MAML_BENCH_META_UPDATE (default runs/benchmarks/rl-meta-update-cpu.json;
the committed copy is results/benchmarks/rl-meta-update-cpu.json).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("gymnasium")

from maml_bench.rl.maml_rl import maml_trpo_step  # noqa: E402
from maml_bench.runner import plan_runs  # noqa: E402
from maml_bench.tasks.rl import MetaRL  # noqa: E402

OUT = Path(os.environ.get("MAML_BENCH_META_UPDATE", "runs/benchmarks/rl-meta-update-cpu.json"))
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def episodes():
    """Navigation at the paper's policy size, 10 tasks x 10 trajectories of 100 steps."""
    torch.set_num_threads(1)
    (run,) = plan_runs("navigation2d-v1", "paper", ["meta_batch=10", "train_shots=10"],
                       ["maml-trpo"], 1, Path("/tmp"))
    bench = MetaRL(run.config)
    policy = bench.make_policy()
    gen = torch.Generator().manual_seed(0)
    tasks = bench.sample_tasks(gen, 10)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    inner = bench.sample(policy, theta, tasks, 10, gen)
    from maml_bench.rl.maml_rl import adapt

    with torch.no_grad():
        adapted = adapt(policy, theta, [inner], [0.1], n_tasks=10)
    outer = bench.sample(policy, adapted, tasks, 10, gen)
    return policy, inner, outer


@pytest.mark.parametrize("product", ["gauss-newton", "exact"])
def test_meta_update(benchmark, episodes, product):
    policy, inner, outer = episodes

    def step():
        fresh = copy.deepcopy(policy)  # every round from the same theta
        theta = dict(fresh.named_parameters())
        maml_trpo_step(fresh, theta, [inner], outer, [0.1], gauss_newton=product == "gauss-newton")

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    TIMES[product] = benchmark.stats.stats.min


def test_ratio():
    if set(TIMES) != {"gauss-newton", "exact"}:
        pytest.skip("run the whole file")
    payload = {"case": "MAML-TRPO meta-update, navigation, 10 tasks x 10 x 100 steps, 100x100",
               "min_s": TIMES, "exact_over_gauss_newton": TIMES["exact"] / TIMES["gauss-newton"],
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    assert payload["exact_over_gauss_newton"] > 1.0
