"""`core.fused` (convolution, batch norm + ReLU with hand-written derivatives) and the `fused`
backend: the same values and first and second derivatives as PyTorch's own ops, float64, and
the same meta-gradient as the reference loop and finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_gradients import assert_close, conv_miniimagenet_setup, conv_setup, grads

from maml_bench.core import backends
from maml_bench.core.backends import MetaProblem, gate, query_losses
from maml_bench.core.fused import batch_norm_relu, conv2d


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(backends, "_CHECKED", {})


def native_bn_relu(x, gamma, beta):
    return torch.relu(F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5))


def first_and_second(fn, inputs, seed=1):
    """fn's gradient for a random output weighting (kept differentiable), and the gradient of
    a random projection of it with respect to the inputs and that weighting: the second
    derivatives MAML's outer backward takes."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    weight = torch.randn(out.shape, generator=gen, dtype=out.dtype).requires_grad_()
    first = torch.autograd.grad((out * weight).sum(), inputs, create_graph=True)
    proj = sum((g * torch.randn(g.shape, generator=gen, dtype=g.dtype)).sum() for g in first)
    second = torch.autograd.grad(proj, (*inputs, weight), allow_unused=True)
    return out, first, [torch.zeros_like(v) if g is None else g
                        for g, v in zip(second, (*inputs, weight), strict=True)]


def leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


@pytest.mark.parametrize(("stride", "groups", "size"), [(2, 3, 7), (2, 1, 14), (1, 2, 5)])
def test_conv2d_matches_pytorch_to_second_order(stride, groups, size):
    x, w = leaves((2, 2 * groups, size, size), (4 * groups, 2, 3, 3))
    ours = first_and_second(lambda a, b: conv2d(a, b, stride, 1, groups), (x, w))
    ref = first_and_second(lambda a, b: F.conv2d(a, b, stride=stride, padding=1, groups=groups),
                           (x, w))
    for a, b in zip([ours[0], *ours[1], *ours[2]], [ref[0], *ref[1], *ref[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_conv2d_passes_gradgradcheck():
    x, w = leaves((2, 4, 7, 7), (6, 2, 3, 3))
    assert torch.autograd.gradgradcheck(lambda a, b: conv2d(a, b, 2, 1, 2), (x, w))


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (5, 6, 2, 2), (4, 3, 7)])
def test_batch_norm_relu_matches_pytorch_to_second_order(shape):
    x, gamma, beta = leaves(shape, shape[1:2], shape[1:2])
    ours = first_and_second(batch_norm_relu, (x, gamma, beta))
    ref = first_and_second(native_bn_relu, (x, gamma, beta))
    for a, b in zip([ours[0], *ours[1], *ours[2]], [ref[0], *ref[1], *ref[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_batch_norm_relu_passes_gradgradcheck_and_refuses_a_third_derivative():
    x, gamma, beta = leaves((3, 4, 5, 5), (4,), (4,))
    assert torch.autograd.gradgradcheck(batch_norm_relu, (x, gamma, beta))
    first = torch.autograd.grad(batch_norm_relu(x, gamma, beta)[:, 0].sum(), x,
                                create_graph=True)[0]
    second = torch.autograd.grad(first.square().sum(), x, create_graph=True)[0]
    with pytest.raises(RuntimeError):  # once_differentiable: MAML never needs a third
        torch.autograd.grad(second.sum(), x)


@pytest.mark.parametrize("setup", [conv_setup, conv_miniimagenet_setup],
                         ids=["omniglot", "miniimagenet"])
@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
def test_fused_backend_equals_the_reference(setup, first_order):
    model, batch, loss_fn = setup()
    theta = dict(model.named_parameters())
    problem = MetaProblem(model, loss_fn, 2, [0.4, 0.1], first_order)
    ours = grads(query_losses("fused", problem, theta, batch).mean(), theta)
    assert_close(ours, grads(query_losses("loop", problem, theta, batch).mean(), theta))


def test_fused_backend_with_learned_step_sizes_equals_the_reference():
    """Meta-SGD: per-parameter step-size tensors, differentiated too."""
    model, batch, loss_fn = conv_setup()
    theta = dict(model.named_parameters())
    lrs = {k: torch.full_like(v, 0.1).requires_grad_() for k, v in theta.items()}
    problem = MetaProblem(model, loss_fn, 1, lrs)
    wrt = {**theta, **{f"lr.{k}": v for k, v in lrs.items()}}
    ours = grads(query_losses("fused", problem, theta, batch).mean(), wrt)
    assert_close(ours, grads(query_losses("loop", problem, theta, batch).mean(), wrt))


def test_fused_passes_the_gate_at_omniglot_scale():
    """The run-time gate (float64 reference and finite differences) on Conv4-64, 28 x 28."""
    model, batch, loss_fn = conv_setup(tasks=2, ways=5, channels=64)
    assert gate("fused", MetaProblem(model.float(), loss_fn, 1, 0.4), lambda: batch) is None


@pytest.mark.parametrize("forward", ["fused_forward", "batched_forward"])
def test_meta_steps_leave_no_graph_alive(forward):
    """After each second-order meta-step (2 inner steps) the same tensors are alive: no graph
    survives its step (a ctx holding its own outputs once kept every step's, OOM in runs)."""
    import gc
    import warnings

    from maml_bench.core.functional import meta_loss

    model, batch, loss = conv_setup(tasks=2)
    theta = dict(model.named_parameters())

    def live() -> int:
        gc.collect()
        with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated alias
            warnings.simplefilter("ignore", FutureWarning)
            return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())

    counts = []
    for _ in range(3):
        total = meta_loss(getattr(model, forward), theta, batch, loss, 2, 0.4).mean()
        torch.autograd.grad(total, list(theta.values()))
        del total
        counts.append(live())
    assert counts[1] == counts[2], counts
