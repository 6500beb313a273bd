"""The device's measured peak: a large float32 matmul and a 3x3 convolution, timed by the profiler
itself, so "fraction of peak" compares against what this machine, build and thread count reach
(not a datasheet number)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from maml_bench.profile.measure import Clock


@dataclass(frozen=True)
class Peak:
    """Best FLOP/s of each micro-benchmark, with the shapes it ran."""

    matmul_flops_s: float
    matmul_shape: str
    conv_flops_s: float
    conv_shape: str

    @property
    def best(self) -> float:
        return max(self.matmul_flops_s, self.conv_flops_s)


def _best_seconds(clock: Clock, fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        clock.time_ms(fn)
    return min(clock.time_ms(fn) for _ in range(repeats)) / 1e3


def measure_peak(device: torch.device, quick: bool = False) -> Peak:
    """Time a square matmul and a same-padded 3x3 convolution on `device` (best of a few)."""
    cuda = device.type == "cuda"
    clock = Clock(device)
    gen = torch.Generator().manual_seed(0)
    # Sizes big enough to reach the plateau, small enough to take well under a second.
    n = (4096 if quick else 8192) if cuda else (512 if quick else 2048)
    repeats = 3 if quick else 10
    pair = [torch.randn(n, n, generator=gen).to(device) for _ in range(2)]
    matmul_s = _best_seconds(clock, lambda: torch.mm(*pair), 2, repeats)
    pair.clear()  # free the operands before the convolution's
    batch, channels, size = (64 if quick else 256, 128, 56) if cuda else (
        4 if quick else 16, 64, 56)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device)
    w = torch.randn(channels, channels, 3, 3, generator=gen).to(device)
    conv_s = _best_seconds(clock, lambda: F.conv2d(x, w, padding=1), 2, repeats)
    conv_flops = 2 * batch * channels * channels * 9 * size * size
    return Peak(matmul_flops_s=2 * n**3 / matmul_s, matmul_shape=f"{n}x{n} @ {n}x{n}",
                conv_flops_s=conv_flops / conv_s,
                conv_shape=f"[{batch}, {channels}, {size}, {size}] * "
                f"[{channels}, {channels}, 3, 3]")
