"""Tasks per meta-gradient pass (`task_chunk`) on this CPU, at every paper configuration: the
data an `auto` chunk would be chosen from (issue 8).

On the CPU a whole meta-batch's activations stream from memory through batch norm's passes,
while a few tasks' stay in cache, so the fastest chunk shrinks as the tasks grow
(`results/benchmarks/omniglot-task-chunks-cpu.md` measured it for Omniglot with the `batched`
path). This measures the default backend (`auto`'s: `fused` for Conv4's second order)
at chunks of 1, 2, 4, ... tasks and the whole batch, against the per-task loop, second order,
the paper's meta-batch and inner steps, random inputs of the paper's shapes (as the profile),
one torch thread and glibc keeping freed memory (as every run). Each time is the best of
`--repeats` steps after one warm-up, the chunks interleaved round by round so that a machine
whose speed drifts affects them alike. Run it with nothing else on the machine:

    .venv/bin/python benchmarks/task_chunks.py --out results/benchmarks/task-chunks-cpu.md
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from maml_bench.core.chunking import auto_task_chunk, summed_meta_gradient
from maml_bench.core.functional import SupervisedBatch, reference_meta_loss
from maml_bench.memory import keep_freed_memory
from maml_bench.profile.configs import CONFIGS, ProfileConfig
from maml_bench.profile.measure import our_query_losses

DEFAULT_CONFIGS = ("omniglot-5w1s", "omniglot-5w5s", "omniglot-20w1s", "omniglot-20w5s",
                   "miniimagenet-5w1s", "miniimagenet-5w5s")


def step_of(cfg: ProfileConfig, chunk: int | None) -> Callable[[], None]:
    """One second-order meta-gradient of the paper's meta-batch: by the default backend in
    chunks of `chunk` tasks (0: the whole batch at once), or by the per-task loop (None)."""
    torch.manual_seed(0)
    model = cfg.model()
    theta = dict(model.named_parameters())
    params = list(theta.values())
    batch = cfg.batch(cfg.meta_batch)
    if chunk is None:  # the per-task loop, the whole batch in one graph
        def losses(part: SupervisedBatch) -> torch.Tensor:
            return reference_meta_loss(model, theta, part, cfg.loss, cfg.inner_steps,
                                       cfg.inner_lr)
    else:
        losses = our_query_losses(cfg, model, theta, batch, cfg.inner_steps, first_order=False)
    size = chunk or batch.n_tasks  # one graph per `size` tasks, each freed before the next
    return lambda: summed_meta_gradient(losses, batch, params, size)


def per_task_mib(cfg: ProfileConfig) -> float:
    """One task's largest activation (the first layer's output for its support and query
    images), MiB: what a chunk multiplies."""
    model, batch = cfg.model(), cfg.batch(1)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
    sizes = []
    handle = first.register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
    with torch.no_grad():
        model(batch.x_support[0])
        model(batch.x_query[0])
    handle.remove()
    return sum(sizes) * 4 / 2**20


def measure(cfg: ProfileConfig, repeats: int) -> dict[str, float]:
    chunks = [c for c in (1, 2, 4, 8, 16) if c < cfg.meta_batch] + [0]
    steps = {"loop": step_of(cfg, None)} | {f"chunk{c}": step_of(cfg, c) for c in chunks}
    best = {k: float("inf") for k in steps}
    for round_ in range(repeats + 1):  # round 0 warms up
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            ms = (time.perf_counter() - t0) * 1e3
            if round_:
                best[name] = min(best[name], ms)
    return best


def auto_chunk(cfg: ProfileConfig) -> int:
    """The chunk `task_chunk=auto` takes at this configuration (0: the whole batch)."""
    n = auto_task_chunk(cfg.model(), cfg.batch(cfg.meta_batch))
    return 0 if n >= cfg.meta_batch else n


def render(rows: dict[str, dict[str, float]], mib: dict[str, float], repeats: int) -> str:
    cols = ["chunk1", "chunk2", "chunk4", "chunk8", "chunk16", "chunk0"]
    head = ("| configuration | tasks | one task's first activation (MiB) | loop | "
            + " | ".join(c.replace("chunk0", "whole").replace("chunk", "chunk ") for c in cols)
            + " | fastest | loop / fastest | auto takes | loop / auto |\n|"
            + "---|" * (len(cols) + 8) + "\n")
    body = ""
    for name, best in rows.items():
        ours = {c: best[c] for c in cols if c in best}
        fastest = min(ours, key=ours.get)
        auto = f"chunk{auto_chunk(CONFIGS[name])}"
        cells = " | ".join(f"{best[c]:.0f}" if c in best else "" for c in cols)
        body += (f"| {name} | {CONFIGS[name].meta_batch} | {mib[name]:.2f} | {best['loop']:.0f} "
                 f"| {cells} | {fastest.replace('chunk0', 'whole')} | "
                 f"{best['loop'] / ours[fastest]:.2f}x | "
                 f"{auto.replace('chunk0', 'whole').replace('chunk', '')} | "
                 f"{best['loop'] / ours[auto]:.2f}x |\n")
    return ("# Tasks per meta-gradient pass on this CPU (`benchmarks/task_chunks.py`)\n\n"
            f"Second order, the paper's meta-batch and inner steps, ms per meta-gradient (best "
            f"of {repeats} after a warm-up; one torch thread). `chunk N`: the default backend "
            "with N tasks per pass; `whole`: the whole batch at once; `loop`: the per-task "
            f"autograd loop. {time.strftime('%Y-%m-%d %H:%M')}, 1-minute load average "
            f"{os.getloadavg()[0]:.2f} at the end (the script itself counts about 1).\n\n"
            + head + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS),
                        help="a paper configuration (repeatable; default: the conv ones)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    rows, mib = {}, {}
    for name in args.config or DEFAULT_CONFIGS:
        rows[name], mib[name] = measure(CONFIGS[name], args.repeats), per_task_mib(CONFIGS[name])
        print(f"{name}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in rows[name].items()),
              flush=True)
    text = render(rows, mib, args.repeats)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
