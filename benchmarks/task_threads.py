"""Task threads (`task_threads`) on this CPU, at every paper conv configuration: the second-order
meta-gradient of the default backend with the tasks split over the machine's CPUs, against the
per-task loop given the same CPUs as torch's own threads (issues 6 and 8).

A meta-batch's tasks are independent until their gradients are summed, so N threads that each
differentiate a share of them (one intra-op thread each) use N CPUs almost fully; torch's own
threads inside each small convolution and batch-norm pass do not (`core/chunking.py`). Measured
per configuration, interleaved round by round, best of `--repeats` after a warm-up, the paper's
meta-batch and inner steps, random inputs of the paper's shapes (as the profile), glibc keeping
freed memory (as every run), `task_chunk=auto`'s passes everywhere:

* `loop 1` / `loop N`: the per-task autograd loop on 1 and on N torch threads;
* `ours 1`: the default backend on one thread (task_threads=1, the per-core comparison);
* `ours 1xN`: the same on N torch threads (intra-op);
* `ours N`: N task threads of one torch thread each; `auto takes` says which of these
  task_threads=auto chooses for a lone run given N CPUs.

Run it with nothing else on the machine:

    .venv/bin/python benchmarks/task_threads.py --out results/benchmarks/task-threads-cpu.md
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from maml_bench.core.chunking import (
    AUTO,
    auto_task_chunk,
    machine_cpus,
    set_run_cpus,
    summed_meta_gradient,
    task_threads,
    torch_threads,
)
from maml_bench.core.functional import reference_meta_loss
from maml_bench.memory import keep_freed_memory
from maml_bench.profile.configs import CONFIGS, ProfileConfig
from maml_bench.profile.measure import our_query_losses

DEFAULT_CONFIGS = ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s",
                   "miniimagenet-5w1s", "miniimagenet-5w5s")


def steps_of(cfg: ProfileConfig, cpus: int) -> dict[str, tuple[int, Callable[[], None]]]:
    """name -> (torch threads to run it on, one second-order meta-gradient)."""
    torch.manual_seed(0)
    model = cfg.model()
    theta = dict(model.named_parameters())
    params = list(theta.values())
    batch = cfg.batch(cfg.meta_batch)
    ours = our_query_losses(cfg, model, theta, batch, cfg.inner_steps, first_order=False)
    chunk = auto_task_chunk(model, batch)

    def loop() -> None:
        loss = reference_meta_loss(model, theta, batch, cfg.loss, cfg.inner_steps,
                                   cfg.inner_lr).mean()
        torch.autograd.grad(loss, params)

    def ours_on(threads: int) -> Callable[[], None]:
        return lambda: summed_meta_gradient(ours, batch, params, chunk, threads=threads)

    return {"loop 1": (1, loop), f"loop {cpus}": (cpus, loop), "ours 1": (1, ours_on(1)),
            f"ours {cpus}": (1, ours_on(cpus)), f"ours 1x{cpus}": (cpus, ours_on(1))}


def measure(cfg: ProfileConfig, cpus: int, repeats: int) -> dict[str, float]:
    steps = steps_of(cfg, cpus)
    best = {k: float("inf") for k in steps}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, (threads, step) in steps.items():
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            step()
            ms = (time.perf_counter() - t0) * 1e3
            if round_:
                best[name] = min(best[name], ms)
    torch.set_num_threads(1)
    return best


def auto_takes(cfg: ProfileConfig, cpus: int) -> str:
    """The variant task_threads=auto takes for a lone run given `cpus` CPUs."""
    set_run_cpus(cpus)
    model, batch = cfg.model(), cfg.batch(cfg.meta_batch)
    if task_threads(AUTO, model, batch) > 1:
        return f"ours {cpus}"
    return f"ours 1x{cpus}" if torch_threads(AUTO, model, batch) else "ours 1"


def render(rows: dict[str, dict[str, float]], cpus: int, repeats: int) -> str:
    n = cpus
    head = (f"| configuration | tasks | loop 1 | loop {n} | ours 1 | ours 1x{n} | ours {n} | "
            f"per core: loop 1 / ours 1 | auto takes | all {n} CPUs: loop {n} / auto |\n|"
            + "---|" * 10 + "\n")
    body = ""
    for name, b in rows.items():
        auto = auto_takes(CONFIGS[name], n)
        cells = " | ".join(f"{b[k]:.0f}" for k in ("loop 1", f"loop {n}", "ours 1",
                                                   f"ours 1x{n}", f"ours {n}"))
        body += (f"| {name} | {CONFIGS[name].meta_batch} | {cells} | "
                 f"{b['loop 1'] / b['ours 1']:.2f}x | {auto} | "
                 f"**{b[f'loop {n}'] / b[auto]:.2f}x** |\n")
    return ("# Task threads on this CPU (`benchmarks/task_threads.py`)\n\n"
            f"Second order, the paper's meta-batch and inner steps, ms per meta-gradient (best "
            f"of {repeats} after a warm-up, variants interleaved), {n} CPUs. `loop N`: the "
            f"per-task autograd loop on N torch threads; `ours 1`: the default backend in "
            f"task_chunk=auto's passes on one thread; `ours 1x{n}`: the same on {n} torch "
            f"threads; `ours {n}`: its tasks split over {n} task threads of one torch thread "
            f"each; `auto takes`: what task_threads=auto does for a lone run here. "
            f"{time.strftime('%Y-%m-%d %H:%M')}, 1-minute load average "
            f"{os.getloadavg()[0]:.2f} at the end (the script itself counts about its "
            "threads).\n\n" + head + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="a paper configuration (repeatable; default: the conv ones)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=machine_cpus(),
                        help="task threads and the loop's torch threads (default: every CPU "
                             "this process may run on)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args()
    if args.cpus < 2:
        parser.error(f"--cpus must be at least 2 to compare with one (this process may use "
                     f"{machine_cpus()})")
    keep_freed_memory()
    rows = {}
    for name in args.config or DEFAULT_CONFIGS:
        rows[name] = measure(CONFIGS[name], args.cpus, args.repeats)
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in rows[name].items()),
              flush=True)
    text = render(rows, args.cpus, args.repeats)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
