"""How fast can the Omniglot Conv4's convolutions run on this CPU at all? (issue 8's 3x goal)

The second-order Omniglot 5-way 1-shot meta-step is mostly convolutions (forward, input
gradient, weight gradient) at the network's own small shapes: 28 x 28 down to 2 x 2, stride 2.
This times each of them at its most favourable form (all tasks' images in one ordinary
convolution with shared weights, and one task's images per call, as the per-task loop: the faster
of the two for each operation) and reports the FLOP rate, so the goal's required rate can be set
against what the convolutions themselves reach here. Per-task weights (MAML's adapted
parameters) can only split the work further. One torch thread, as training and the profile.

    .venv/bin/python benchmarks/conv_ceiling.py \
        --out results/benchmarks/omniglot-conv-ceiling-cpu.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

#: Omniglot Conv4 (paper): 1 -> 64 -> 64 -> 64 -> 64 channels, 3 x 3, stride 2, padding 1
LAYERS = [(1, 64, 28), (64, 64, 14), (64, 64, 7), (64, 64, 4)]


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def _ops(x: torch.Tensor, w: torch.Tensor, gy: torch.Tensor) -> dict[str, Callable[[], object]]:
    return {
        "forward": lambda: F.conv2d(x, w, stride=2, padding=1),
        "input gradient": lambda: conv2d_input(x.shape, w, gy, stride=2, padding=1),
        "weight gradient": lambda: conv2d_weight(x, w.shape, gy, stride=2, padding=1),
    }


def measure(tasks: int, per_task: int, repeats: int) -> list[dict[str, float | str]]:
    gen = torch.Generator().manual_seed(0)
    images = tasks * per_task
    rows = []
    for layer, (c_in, c_out, size) in enumerate(LAYERS, start=1):
        x = torch.randn(images, c_in, size, size, generator=gen)
        w = torch.randn(c_out, c_in, 3, 3, generator=gen)
        y = F.conv2d(x, w, stride=2, padding=1)
        gy = torch.randn(y.shape, generator=gen)
        flops = 2 * y.numel() * c_in * 9  # each output: c_in * 9 multiply-adds
        whole, one = _ops(x, w, gy), _ops(x[:per_task], w, gy[:per_task])
        for name in whole:
            if layer == 1 and name == "input gradient":
                continue  # the image needs no gradient
            batched_ms = best_ms(whole[name], repeats)
            per_task_ms = tasks * best_ms(one[name], repeats)
            ms = min(batched_ms, per_task_ms)
            rows.append({"layer": layer, "shape": f"[{images}, {c_in}, {size}, {size}]",
                         "op": name, "mflop": flops / 1e6, "batched_ms": batched_ms,
                         "per_task_ms": per_task_ms, "ms": ms, "gflops_s": flops / ms / 1e6})
    return rows


def peak_gflops(repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, 56, 56, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen)
    ms = best_ms(lambda: F.conv2d(x, w, padding=1), repeats)
    return 2 * 16 * 64 * 64 * 9 * 56 * 56 / ms / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=32, help="meta-batch (paper: 32)")
    parser.add_argument("--images-per-task", type=int, default=10,
                        help="support + query images per task (5-way 1-shot, 1 query: 10)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = args.tasks * args.images_per_task
    rows = measure(args.tasks, args.images_per_task, args.repeats)
    peak = peak_gflops(args.repeats)
    total_mflop = sum(r["mflop"] for r in rows)
    total_ms = sum(r["ms"] for r in rows)
    lines = [
        "# Omniglot Conv4 convolutions at their own shapes: the rate any backend can reach",
        "",
        f"`python benchmarks/conv_ceiling.py` ({time.strftime('%Y-%m-%d %H:%M')}, torch "
        f"{torch.__version__}, 1 thread): {args.tasks} tasks x {args.images_per_task} images "
        f"= {images} images, shared weights, each operation as one convolution of all images "
        f"(batched) and as {args.tasks} calls of one task's images (per task), best of "
        f"{args.repeats}; the faster of the two counts. Reference: a 3x3 convolution "
        f"[16, 64, 56, 56] runs at {peak:.1f} GFLOP/s.",
        "",
        "| layer | input | op | MFLOP | batched ms | per task ms | GFLOP/s (faster) "
        "| % of the 56 x 56 conv |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['shape']} | {r['op']} | {r['mflop']:.0f} | "
                     f"{r['batched_ms']:.2f} | {r['per_task_ms']:.2f} | {r['gflops_s']:.1f} | "
                     f"{100 * r['gflops_s'] / peak:.0f}% |")
    rate = total_mflop / total_ms  # MFLOP per ms = GFLOP/s
    lines += ["", f"All of them once, each in its faster form: {total_mflop:.0f} MFLOP in "
              f"{total_ms:.1f} ms, {rate:.1f} GFLOP/s ({100 * rate / peak:.0f}% of the 56 x 56 "
              "convolution).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
