"""Meta-gradient backends, chosen by the `path` setting, each gated by float64 checks.

A backend computes the per-task query losses [T] after inner adaptation, differentiable with
respect to theta (and learned step sizes); the caller differentiates their mean or sum, so
`task_chunk` and torchrun work unchanged on every backend.

* fused: the model's own `fused_forward` (Conv4: `batched_forward` through `core/fused.py`,
  convolution and batch norm + ReLU with cheap hand-written second derivatives), `meta_loss`;
* factored: fully connected nets (`models.mlp.MLP`) with each task's adapted weights kept as
  the shared ones plus low-rank corrections, never copied per task (`core/factored.py`);
* batched: the model's own `batched_forward` (all tasks at once, `meta_loss`);
* vmap: `vmap(functional_call)` (`meta_loss`), even where the model has its own;
* loop: `reference_meta_loss`, the per-task autograd loop (the learn2learn / `higher` way):
  the reference, always usable;
* higher: the `higher` library's differentiable inner loop (`core/higher_check.py`).

A backend other than loop is used for a model only after `gate` passes: its float64
meta-gradient on 2 tasks of the benchmark's own training batch agrees with the reference loop
(rtol 1e-6) and the reference's exact gradient agrees with a central finite difference along
one seeded random direction (rtol 1e-4). `auto` takes the first passing backend of
`AUTO_ORDER`, the order of our measurements (docs/speed.md: fused < own batched forward <
vmap < loop < higher in time per step; fused measured on CPU,
results/benchmarks/omniglot-meta-step-speed-notes.md; factored < own batched forward on both
MLPs, results/benchmarks/factored-cpu.md); nothing is timed at run time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from maml_bench.core.factored import factored_query_losses, pays_off, unsupported_step_sizes
from maml_bench.core.functional import (
    BatchedForward,
    StepSizes,
    SupervisedBatch,
    TaskLoss,
    make_batched_forward,
    meta_loss,
    reference_meta_loss,
    restrict,
    vmap_supported,
)
from maml_bench.core.higher_check import higher_query_losses, higher_unsupported
from maml_bench.errors import UserError

BACKENDS = ("fused", "factored", "batched", "vmap", "loop", "higher")
#: fastest first (docs/speed.md); higher is never picked by auto (slowest; a cross-check)
AUTO_ORDER = ("fused", "factored", "batched", "vmap", "loop")
#: backends only some models have (the model's own method or structure): auto records no
#: reason for passing over them on the models that lack it
OWN_BACKENDS = {"fused": "fused_forward", "factored": "linear_keys"}
#: backends whose tasks may run on several threads at once (`task_threads`): their forwards
#: are pure functions of the parameters passed in. loop and vmap go through
#: `torch.func.functional_call`, which swaps the module's own parameters in place while it
#: runs, and higher patches the module: two threads would race on one module.
THREAD_SAFE = frozenset({"fused", "factored", "batched"})
REFERENCE_RTOL = 1e-6
FD_RTOL = 1e-4
#: finite-difference steps along a unit-variance direction, tried in turn (see `_fd_reason`)
FD_EPS = (1e-6, 1e-7, 1e-8, 1e-9, 1e-10)
CHECK_TASKS = 2


@dataclass(frozen=True)
class MetaProblem:
    """What a meta-gradient is computed for: the algorithm's model, loss and inner loop."""

    model: nn.Module
    loss_fn: TaskLoss
    steps: int
    lrs: StepSizes
    first_order: bool = False
    adapted: tuple[str, ...] | None = None  # None: all of theta (MAML); else ANIL's head, z
    #: the algorithm runs its own inner loop through the backend's batched forward (Reptile),
    #: so only backends that have one apply
    needs_forward: bool = False


def unsupported(backend: str, problem: MetaProblem) -> str | None:
    """Why `backend` cannot compute `problem` at all (before any check), or None."""
    model = problem.model
    for own in ("fused", "batched"):
        if backend == own and getattr(model, f"{own}_forward", None) is None:
            return f"{type(model).__name__} has no {own}_forward of its own"
    if backend == "factored":
        if getattr(model, "linear_keys", None) is None:
            return f"{type(model).__name__} is not a fully connected net (models.mlp.MLP)"
        if problem.adapted is not None:
            return "adapts only part of theta (ANIL, context vector): the batched path does"
        if problem.needs_forward:
            return ("this algorithm's inner loop runs through a batched forward, which the "
                    "factored form has none of")
        return unsupported_step_sizes(problem.lrs)
    if backend == "vmap":
        return vmap_supported(model)
    if backend == "higher":
        return higher_unsupported(problem.lrs, problem.adapted)
    return None


def forward_of(backend: str, model: nn.Module) -> BatchedForward | None:
    """The batched forward of `backend`; None for the per-task backends (loop, higher)."""
    if backend in ("fused", "batched"):
        return getattr(model, f"{backend}_forward")
    if backend == "vmap":
        return make_batched_forward(model, prefer_fast=False)
    return None


def query_losses(backend: str, problem: MetaProblem, theta: Mapping[str, Tensor],
                 batch: SupervisedBatch, forward=None) -> Tensor:
    """Per-task query losses [T] by `backend`. theta must be the model's own parameters for
    higher (it differentiates the module in place). `forward`: a cached `forward_of`."""
    p = problem
    if backend == "loop":
        return reference_meta_loss(p.model, theta, batch, p.loss_fn, p.steps, p.lrs,
                                   p.first_order, p.adapted)
    if backend == "higher":
        return higher_query_losses(p.model, batch, p.loss_fn, p.steps, p.lrs,  # type: ignore[arg-type]
                                   p.first_order)
    if backend == "factored":
        return factored_query_losses(p.model, theta, batch, p.loss_fn, p.steps,  # type: ignore[arg-type]
                                     p.lrs, p.first_order)
    forward = forward or forward_of(backend, p.model)
    if p.adapted is not None:
        forward, theta = restrict(forward, theta, p.adapted)
    return meta_loss(forward, theta, batch, p.loss_fn, p.steps, p.lrs, p.first_order)


#: gate verdicts per process: (backend, model class, parameter shapes, first_order, steps,
#: kind of step sizes, adapted names) -> None or the reason
_CHECKED: dict[tuple, str | None] = {}


def _key(backend: str, problem: MetaProblem) -> tuple:
    model = problem.model
    shapes = tuple((k, tuple(v.shape)) for k, v in model.named_parameters())
    # a model's variants of equal shapes (Conv4's padding) are checked each on its own
    return (backend, type(model).__qualname__, shapes, getattr(model, "padding", None),
            problem.first_order, problem.steps, _lrs_kind(problem.lrs), problem.adapted)


def _lrs_kind(lrs: StepSizes) -> object:
    if isinstance(lrs, Mapping):
        return "per-parameter"
    if isinstance(lrs, Tensor):
        return "tensor"
    if isinstance(lrs, Sequence):
        return tuple(_lrs_kind(v) for v in lrs)
    return "float"


def _float64_lrs(lrs: StepSizes) -> StepSizes:
    if isinstance(lrs, Tensor):
        return lrs.detach().double()
    if isinstance(lrs, Mapping):
        return {k: _float64_lrs(v) for k, v in lrs.items()}  # type: ignore[misc]
    if isinstance(lrs, Sequence):
        return [_float64_lrs(v) for v in lrs]  # type: ignore[misc]
    return lrs


def gate(backend: str, problem: MetaProblem, sample: Callable[[], SupervisedBatch]
         ) -> str | None:
    """None if `backend` may compute `problem`'s meta-gradient; else the reason, one line.

    `sample()` gives a training batch of the benchmark (at least CHECK_TASKS tasks, drawn
    with a generator of its own, not the run's). Verdicts are cached per process."""
    if backend == "loop":
        return None  # the reference itself
    reason = unsupported(backend, problem)
    if reason is not None:
        return reason
    key = _key(backend, problem)
    if key not in _CHECKED:
        _CHECKED[key] = _check(backend, problem, sample)
    return _CHECKED[key]


def _check(backend: str, problem: MetaProblem, sample: Callable[[], SupervisedBatch]
           ) -> str | None:
    # The run's own model and initial weights, in float64: a deep copy, so the run's model,
    # its buffers and the global RNG are untouched.
    model = copy.deepcopy(problem.model).double()
    for p in model.parameters():
        p.requires_grad_(True)
    p64 = MetaProblem(model, problem.loss_fn, problem.steps, _float64_lrs(problem.lrs),
                      problem.first_order, problem.adapted)
    theta = dict(model.named_parameters())
    batch = sample().select(0, CHECK_TASKS).to(torch.float64)

    def gradient(which: str, prob: MetaProblem) -> dict[str, Tensor]:
        loss = query_losses(which, prob, theta, batch).mean()
        grads = torch.autograd.grad(loss, list(theta.values()), allow_unused=True)
        return {k: torch.zeros_like(v) if g is None else g
                for (k, v), g in zip(theta.items(), grads, strict=True)}

    try:
        ours = gradient(backend, p64)
        ref = gradient("loop", p64)
    except Exception as err:  # noqa: BLE001 - any failure refuses the backend, with its reason
        return f"its meta-gradient failed: {type(err).__name__}: {err}".splitlines()[0]
    scale = max(g.abs().max().item() for g in ref.values())
    for name in theta:
        bound = REFERENCE_RTOL * (ref[name].abs() + scale)
        bad = (ours[name] - ref[name]).abs() > bound
        if not torch.isfinite(ours[name]).all() or bad.any():
            err = (ours[name] - ref[name]).abs().max().item()
            return (f"its float64 meta-gradient differs from the reference loop's: {name} off "
                    f"by up to {err:.3g} (gradients up to {scale:.3g}, rtol {REFERENCE_RTOL:g})")
    # Finite differences check the reference's second-order machinery on this model at one
    # inner step (first order is no gradient of the meta-loss, so it is checked the same way):
    # every further step repeats the same operations, while each one multiplies the jumps that
    # spoil a difference (see _fd_reason) and, at MiniImagenet's 84 x 84 in float64, costs
    # minutes.
    one_step = replace(p64, first_order=False, steps=1)
    exact = ref if problem.steps == 1 and not problem.first_order else gradient("loop", one_step)
    return _fd_reason(one_step, theta, batch, exact)


def _fd_reason(problem: MetaProblem, theta: dict[str, Tensor], batch: SupervisedBatch,
               exact: dict[str, Tensor]) -> str | None:
    """The reference's exact (second-order) gradient along one seeded random direction d
    (unit variance per entry) against finite differences of the loss, float64.

    Choice of eps: the meta-loss L(theta - alpha grad L_s(theta)) is only piecewise smooth,
    and not even continuous: grad L_s jumps where a ReLU / max-pool unit of a support example
    changes side, so the adapted weights jump (by alpha times that jump; Omniglot's alpha is
    0.4). A difference whose +-eps straddles such a jump is garbage (seen on Omniglot Conv4 at
    its paper settings: -47.6 for a true -2.07 at eps 1e-7, central). The chance of straddling
    one shrinks with eps, while roundoff grows as ~1e-16 |L| / eps (still ~1e-8 relative at
    1e-8) and truncation (~eps^2 L''' central, ~eps L'' one-sided) shrinks. So eps runs down
    FD_EPS and the check passes when the central difference, or a one-sided one (a jump spoils
    only its own side), agrees within FD_RTOL: a wrong gradient agrees with none of them. At
    MiniImagenet's 84 x 84 maps with max-pooling (about 10^6 ReLU and pooling units per
    support image) jumps are close enough that only 1e-9 or 1e-10 miss them (measured with
    the reference code's settings); roundoff there is still ~1e-6 of a derivative of order 1,
    and one that roundoff swamps fails the check, which only ever costs speed.
    Batch norm over 1-shot batches (a ReLU unit dead on every example, divided by ~sqrt(bn
    eps)) only makes L''' large, which the smaller eps absorb. The backend is tied to this by
    the rtol 1e-6 agreement; loss values need no second-order graph, so they are taken with
    first_order=True (the same value, cheaper).
    """
    gen = torch.Generator().manual_seed(0)
    # drawn on the CPU (the same direction on every device), then put where theta is
    direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype).to(v.device)
                 for k, v in theta.items()}
    projected = sum((exact[k] * direction[k]).sum() for k in theta).item()
    value = replace(problem, first_order=True)

    def loss_at(eps: float) -> float:
        moved = {k: (v + eps * direction[k]).detach().requires_grad_() for k, v in theta.items()}
        return query_losses("loop", value, moved, batch).mean().item()

    here = loss_at(0.0)
    seen = []
    for eps in FD_EPS:
        plus, minus = loss_at(eps), loss_at(-eps)
        for numeric in ((plus - minus) / (2 * eps), (plus - here) / eps, (here - minus) / eps):
            if abs(numeric - projected) <= FD_RTOL * abs(numeric) + 1e-10:
                return None
        seen.append(f"{(plus - minus) / (2 * eps):.6g} at eps {eps:g}")
    return (f"the reference meta-gradient disagrees with finite differences at this model "
            f"(directional derivative {projected:.6g}; central differences {', '.join(seen)}; "
            f"rtol {FD_RTOL:g})")


def select(path: str, problem: MetaProblem, sample: Callable[[], SupervisedBatch]
           ) -> tuple[str, dict[str, str]]:
    """The backend for setting `path` and, for auto, why faster ones were skipped.

    An explicit backend that fails its gate raises UserError naming backend, model, reason and
    the fix (--set path=loop)."""
    name = type(problem.model).__name__
    if path != "auto":
        if path not in BACKENDS:
            raise ValueError(f"unknown meta-gradient backend {path!r}")
        reason = gate(path, problem, sample)
        if reason is not None:
            raise UserError(f"path={path} refused for {name}: {reason}; run with "
                            "--set path=loop (the reference) or path=auto")
        return path, {}
    skipped = {}
    for backend in AUTO_ORDER:
        if backend in OWN_BACKENDS and getattr(problem.model, OWN_BACKENDS[backend],
                                               None) is None:
            continue  # a path only some models have: nothing worth recording for the others
        reason = unsupported(backend, problem)
        if reason is None:
            # only factored's rule needs the support size (a batch drawn for it alone)
            support = sample().x_support.shape[1] if backend == "factored" else 0
            reason = _auto_skip(backend, problem, support) or gate(backend, problem, sample)
        if reason is None:
            return backend, skipped
        skipped[backend] = reason
    raise AssertionError("loop is always usable")  # pragma: no cover


def auto_backend(model: nn.Module, first_order: bool, steps: int, support: int) -> str:
    """The backend auto takes for `model` with MAML's one step size, `steps` inner steps and
    `support` examples per task when its gates pass: what the profiler and benchmarks time as
    "ours" (gated per model in runs, not here)."""
    problem = MetaProblem(model, None, steps, 0.0, first_order)  # type: ignore[arg-type]
    for backend in AUTO_ORDER:
        if (unsupported(backend, problem) is None
                and _auto_skip(backend, problem, support) is None):
            return backend
    raise AssertionError("loop is always usable")  # pragma: no cover


def _auto_skip(backend: str, problem: MetaProblem, support: int) -> str | None:
    """Why auto passes over a correct `backend` for `problem` with `support` examples per task
    (it would be slower), or None."""
    device = next(problem.model.parameters(), torch.empty(0)).device
    if backend == "factored":
        if device.type != "cpu":  # its rule was measured on the CPU only
            return (f"measured faster on the CPU only, not yet on {device.type} "
                    "(--set path=factored)")
        theta = dict(problem.model.named_parameters())
        if not pays_off(problem.model, theta, problem.steps, support):  # type: ignore[arg-type]
            return (f"its low-rank corrections ({problem.steps} step(s) x {support} support "
                    "examples) are not much smaller than per-task weight copies; batched "
                    "measured faster (results/benchmarks/factored-cpu.md)")
        return None
    if backend != "fused":
        return None
    if problem.first_order:
        return ("first order has no second derivatives to save; batched measured faster "
                "(results/benchmarks/omniglot-meta-step-speed-notes.md)")
    if device.type != "cpu":
        # its layouts were chosen for oneDNN; cuDNN unmeasured (benchmarks/test_meta_step_cuda)
        return f"measured faster on the CPU only, not yet on {device.type} (--set path=fused)"
    return None
