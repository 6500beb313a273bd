"""The `factored` backend against the batched path and the per-task loop on every fully
connected experiment (the sinusoid's 1-40-40-1 net, the no-conv Omniglot MLP at 1 and 5
shots), second and first order: the data behind `auto`'s rule (`core/factored.pays_off`:
factored where the per-task weight copies hold at least twice the entries of its low-rank
corrections).

Each experiment's own MAML configuration (meta-batch, inner steps and step size), one real
training batch, one torch thread, glibc keeping freed memory (as every run); the best of
`--repeats` rounds, the three paths interleaved in each round. Writes a markdown table:

    python benchmarks/factored_vs_batched.py --out results/benchmarks/factored-cpu.md
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.backends import MetaProblem, query_losses
from maml_bench.core.factored import pays_off
from maml_bench.experiments import EXPERIMENTS
from maml_bench.memory import keep_freed_memory
from maml_bench.tasks import BENCHMARKS

EXPERIMENTS_TIMED = ("sinusoid-table2-v1", "omniglot-5w1s-noconv-v1", "omniglot-5w5s-noconv-v1")
PATHS = ("factored", "batched", "loop")


def best_ms(experiment: str, first_order: bool, repeats: int) -> tuple[dict[str, float], bool]:
    """Best ms per meta-gradient of each path, and whether auto takes factored here."""
    config = EXPERIMENTS.get(experiment).config
    bench = BENCHMARKS.get(EXPERIMENTS.get(experiment).benchmark)(config)
    algo = ALGORITHMS.get("maml")(bench, config, seed=0)
    batch = bench.train_batch(algo.gen, config.meta_batch, config.train_shots,
                              config.train_query)
    problem = MetaProblem(algo.model, bench.loss, config.inner_steps, config.inner_lr,
                          first_order)
    params = list(algo.theta.values())
    best = dict.fromkeys(PATHS, float("inf"))
    for _ in range(repeats + 1):  # the first round warms up
        for path in PATHS:
            start = time.perf_counter()
            torch.autograd.grad(query_losses(path, problem, algo.theta, batch).mean(), params)
            best[path] = min(best[path], time.perf_counter() - start)
    taken = pays_off(algo.model, algo.theta, config.inner_steps, batch.x_support.shape[1])
    return {k: v * 1e3 for k, v in best.items()}, taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/factored-cpu.md"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    rows = []
    for experiment in EXPERIMENTS_TIMED:
        for first_order in (False, True):
            ms, taken = best_ms(experiment, first_order, args.repeats)
            rows.append(f"| {experiment} | {'first' if first_order else 'second'} | "
                        f"{ms['factored']:.2f} | {ms['batched']:.2f} | {ms['loop']:.2f} | "
                        f"{ms['batched'] / ms['factored']:.2f}x | "
                        f"{ms['loop'] / ms['factored']:.2f}x | "
                        f"{'factored' if taken else 'batched'} |")
            print(rows[-1], flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# The factored backend against batched and the per-task loop, this CPU\n\n"
        f"`python benchmarks/factored_vs_batched.py`, {stamp}; torch {torch.__version__}, one "
        f"thread; best of {args.repeats} interleaved rounds, ms per meta-gradient (no "
        "optimizer step) of each experiment's MAML configuration on one real training "
        "batch.\n\n"
        "| experiment | order | factored | batched | loop | batched / factored | "
        "loop / factored | auto takes |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
