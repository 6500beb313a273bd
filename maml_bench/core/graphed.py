"""A whole meta-gradient replayed as one CUDA graph (static shapes only).

On a GPU a MAML meta-step is a few thousand small kernels (every inner step's forward, its
create_graph backward, the query forward and the double backward through all of them); with
shapes this small the step is bound by Python, autograd and kernel launches, not arithmetic.
A CUDA graph records those kernels once and replays them with one launch. `torch.compile`
cannot do this (no double backward), so the graph is captured by hand, as PyTorch's
"whole-network capture": warm-up on a side stream, capture into a private memory pool, then
copy each new batch into the captured input buffers and replay.

Correct before fast: after capture the replayed gradient on the example batch must equal an
eager computation of the same function (the captured kernels are the eager ones, so only the
tiny nondeterminism of atomics is allowed); otherwise construction fails with the difference.
The function being captured is itself one of the gated backends (`core/backends.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from maml_bench.core.functional import SupervisedBatch

#: slack on the spread of two eager runs (a sample of two underestimates it)
NOISE_FACTOR = 4
#: rounding allowed beyond that spread, in units of the dtype's epsilon times the gradients' scale
EPS_FACTOR = 8


class GraphedMetaGradient:
    """`compute(batch) -> gradients` captured for batches shaped like `example` on CUDA.

    Calling it copies the batch into the captured inputs and replays; the returned tensors are
    the graph's own outputs, overwritten by the next call (use them before calling again).
    Parameters are read from their memory at replay time, so in-place optimizer updates are
    seen; replacing a parameter tensor object is not (capture again).
    """

    def __init__(self, compute: Callable[[SupervisedBatch], Sequence[Tensor]],
                 example: SupervisedBatch, warmup: int = 3) -> None:
        if example.x_support.device.type != "cuda":
            raise ValueError("a CUDA graph needs the batch on a CUDA device; "
                             f"this one is on {example.x_support.device}")
        self._inputs = example.map(lambda t: t.detach().clone())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        eager: list[list[Tensor]] = []
        with torch.cuda.stream(side):  # kernels chosen, workspaces and autograd state made
            for _ in range(max(warmup, 2)):
                eager.append([g.detach().clone() for g in compute(self._inputs)])
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._outputs = [g.detach() for g in compute(self._inputs)]
        self.graph.replay()
        reason = replay_mismatch(self._outputs, eager[-1], eager[-2])
        if reason is not None:
            raise RuntimeError(f"the replayed CUDA graph's {reason}: not used")

    def __call__(self, batch: SupervisedBatch) -> list[Tensor]:
        present = [[t for t in b.fields() if t is not None] for b in (self._inputs, batch)]
        for dst, src in zip(*present, strict=True):
            if dst.shape != src.shape:
                raise ValueError(f"a CUDA graph replays one shape: captured {tuple(dst.shape)}, "
                                 f"given {tuple(src.shape)}")
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self._outputs


def replay_mismatch(replayed: Sequence[Tensor], eager: Sequence[Tensor],
                    eager_again: Sequence[Tensor]) -> str | None:
    """Why the replayed gradients are not the eager ones, or None.

    The replay runs the eager kernels, so it may differ from eager only as two eager runs
    differ from each other (cuDNN's weight gradients sum with atomics in no fixed order, and
    five second-order inner steps carry that on), plus rounding: per gradient tensor, the
    largest difference must stay within NOISE_FACTOR times the two eager runs' largest
    difference plus EPS_FACTOR epsilons of the largest gradient entry of all (as the backends'
    gate, the scale is global: a bias feeding a batch norm has a gradient of pure rounding)."""
    scale = max(float(e.abs().max()) for e in eager)
    for i, (got, want, again) in enumerate(zip(replayed, eager, eager_again, strict=True)):
        noise = float((want - again).abs().max())
        bound = NOISE_FACTOR * noise + EPS_FACTOR * torch.finfo(want.dtype).eps * scale
        err = float((got - want).abs().max())
        if not torch.isfinite(got).all() or err > bound:
            return (f"gradient {i} differs from the eager one by up to {err:.3g} (two eager "
                    f"runs differ by {noise:.3g}; gradients up to {scale:.3g})")
    return None
