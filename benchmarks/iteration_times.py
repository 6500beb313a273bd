"""Seconds per training iteration of each meta-learned row of MiniImagenet's Table 1 on this
machine, as its `long` run trains it, to choose each row's scale (issue 31): MAML and
first-order MAML as torchrun's processes take their share (meta-batch / processes tasks on one
torch thread each; the all-reduce not counted), the other methods as a lone run (every CPU as
torch's threads). Real MiniImagenet episodes, the experiments' paper settings with each
method's own; best of `--repeats` after one warm-up iteration.

Run it with nothing else on the machine:

    .venv/bin/python benchmarks/iteration_times.py --out results/timing/miniimagenet-iterations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.chunking import machine_cpus
from maml_bench.experiments import EXPERIMENTS
from maml_bench.memory import keep_freed_memory
from maml_bench.results import atomic_write_text
from maml_bench.runner import resolve_config
from maml_bench.tasks.fewshot.episodes import FewShot

ROWS = [(f"miniimagenet-5w{k}s-v2", m) for k in (1, 5)
        for m in ("maml", "fomaml", "matchingnets", "metalstm", "finetune")]


def seconds_per_iteration(experiment: str, method: str, repeats: int) -> dict:
    cpus = machine_cpus()
    config = resolve_config(EXPERIMENTS.get(experiment), "paper", [], method)
    algorithm = ALGORITHMS.get(method)
    if algorithm.data_parallel:  # one torchrun process's share of the meta-batch
        config = dataclasses.replace(config, meta_batch=max(1, config.meta_batch // cpus),
                                     task_threads=1)
        threads, how = 1, f"1 of {cpus} torchrun processes, meta-batch {config.meta_batch}"
    else:
        threads, how = cpus, f"one process, {cpus} torch threads"
    torch.set_num_threads(threads)
    algo = algorithm(FewShot(config), config, seed=0)
    algo.train_step(0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        algo.train_step(i + 1)
        times.append(time.perf_counter() - start)
    return {"experiment": experiment, "method": method, "how": how,
            "seconds": min(times), "median_seconds": sorted(times)[len(times) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/timing/miniimagenet-iterations"),
                        help="writes OUT.json and OUT.md")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    rows = []
    for experiment, method in ROWS:
        row = seconds_per_iteration(experiment, method, args.repeats)
        print(f"{experiment} {method}: {row['seconds']:.2f} s ({row['how']})", flush=True)
        rows.append(row)
    payload = {"cpus": machine_cpus(), "torch": torch.__version__, "rows": rows}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    lines = ["# Seconds per training iteration, MiniImagenet Table 1 rows (this CPU)", "",
             f"{machine_cpus()} CPUs, torch {torch.__version__}; `benchmarks/iteration_times.py`:"
             " best of the repeats after a warm-up, nothing else running.", "",
             "| experiment | method | s / iteration | h per 10,000 | how |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['method']} | {r['seconds']:.2f} | "
                     f"{r['seconds'] * 10_000 / 3600:.1f} | {r['how']} |")
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
