"""Every meta-gradient path against a float64 reference, finite differences and `higher`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maml_bench.core.functional import (
    SupervisedBatch,
    make_batched_forward,
    meta_loss,
    reference_meta_loss,
)
from maml_bench.core.higher_check import higher_meta_gradient
from maml_bench.models import MLP, Conv4
from maml_bench.tasks.fewshot.episodes import FlatMLP


def mse(pred, target):
    return (pred - target).pow(2).flatten(1).mean(1)


def cross_entropy(logits, labels):
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none"
                                       ).view(labels.shape).mean(1)


def regression_setup(seed=0, tasks=3, k=6):
    torch.manual_seed(seed)
    model = MLP(1, [12, 12], 1).double()
    x = torch.rand(tasks, 2 * k, 1, dtype=torch.float64) * 10 - 5
    y = torch.rand(tasks, 1, 1, dtype=torch.float64) * 3 * torch.sin(x - torch.rand(tasks, 1, 1,
                                                                                     dtype=torch.float64))
    batch = SupervisedBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
    return model, batch, mse


def conv_setup(seed=0, tasks=2, ways=3, shots=1, channels=4):
    """Conv4 with batch norm at Omniglot's real input size, 28x28."""
    torch.manual_seed(seed)
    model = Conv4(1, ways, channels, 28).double()
    x = torch.randn(tasks, 2 * ways * shots, 1, 28, 28, dtype=torch.float64)
    labels = torch.arange(ways).repeat(2 * shots).expand(tasks, -1)
    n = ways * shots
    batch = SupervisedBatch(x[:, :n], labels[:, :n], x[:, n:], labels[:, n:])
    return model, batch, cross_entropy


def conv_miniimagenet_setup(seed=0, tasks=2, ways=2, shots=1, channels=3):
    """The MiniImagenet Conv4 variant (max-pooling, flattened head) at its real size, 84x84."""
    torch.manual_seed(seed)
    model = Conv4(3, ways, channels, 84, downsample="maxpool", head="flatten").double()
    x = torch.randn(tasks, 2 * ways * shots, 3, 84, 84, dtype=torch.float64)
    labels = torch.arange(ways).repeat(2 * shots).expand(tasks, -1)
    n = ways * shots
    batch = SupervisedBatch(x[:, :n], labels[:, :n], x[:, n:], labels[:, n:])
    return model, batch, cross_entropy


def theta_of(model):
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


def leaves(params):
    """Inner steps differentiate with respect to the parameters, so they must require grad."""
    return {k: v.detach().requires_grad_() for k, v in params.items()}


def grads(loss, theta):
    return dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True))


def assert_close(a, b, rtol=1e-7, atol=1e-9):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def mlp_bn_setup(seed=0):
    """An MLP with batch norm on flattened 28x28 images."""
    model, batch, _ = conv_setup(seed)
    torch.manual_seed(seed)
    mlp = MLP(28 * 28, [16, 8], 3, batch_norm=True).double()
    flat = SupervisedBatch(batch.x_support.flatten(2), batch.y_support,
                           batch.x_query.flatten(2), batch.y_query)
    return mlp, flat, cross_entropy


def flat_mlp_setup(seed=0):
    """The paper's non-convolutional Omniglot network (256-128-64-64, batch norm) on images.

    2 shots: with batch norm over only 3 random images, a 256-wide ReLU layer has units that
    are zero on all of them, whose statistics the next batch norm divides by ~sqrt(eps). The
    loss is then so steep that central differences do not converge at any step size.
    """
    _, batch, _ = conv_setup(seed, shots=2)
    torch.manual_seed(seed)
    return FlatMLP(28 * 28, 3).double(), batch, cross_entropy


SETUPS = {"mlp": regression_setup, "conv4-bn": conv_setup, "mlp-bn": mlp_bn_setup,
          "flat-mlp-bn": flat_mlp_setup, "conv4-miniimagenet": conv_miniimagenet_setup}


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("prefer_fast", [True, False], ids=["own-batched", "vmap"])
def test_batched_paths_match_reference(setup, first_order, prefer_fast):
    model, batch, loss_fn = SETUPS[setup]()
    theta = theta_of(model)
    forward = make_batched_forward(model, prefer_fast=prefer_fast)
    ours = grads(meta_loss(forward, theta, batch, loss_fn, 2, 0.05, first_order).mean(), theta)
    ref = grads(reference_meta_loss(model, theta, batch, loss_fn, 2, 0.05, first_order).mean(),
                theta)
    assert_close(ours, ref)


@pytest.mark.parametrize("setup", SETUPS)
def test_second_order_matches_finite_differences(setup):
    model, batch, loss_fn = SETUPS[setup]()
    theta = theta_of(model)
    forward = make_batched_forward(model)
    lrs = [0.05, 0.02]  # per-step step sizes

    def loss_at(params):
        return meta_loss(forward, params, batch, loss_fn, 2, lrs).mean()

    analytic = grads(loss_at(theta), theta)
    gen = torch.Generator().manual_seed(1)
    # ReLU and max-pooling make the loss piecewise smooth: the step must be small enough not to
    # cross a kink (at 84x84 there are many units near one); float64 keeps roundoff ~1e-9.
    eps = 1e-7
    for _ in range(4):  # directional derivatives along random directions
        direction = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype)
                     for k, v in theta.items()}
        plus = loss_at(leaves({k: v + eps * direction[k] for k, v in theta.items()}))
        minus = loss_at(leaves({k: v - eps * direction[k] for k, v in theta.items()}))
        numeric = (plus - minus).detach() / (2 * eps)
        projected = sum((analytic[k] * direction[k]).sum() for k in theta)
        torch.testing.assert_close(projected, numeric, rtol=1e-5, atol=1e-8)


def test_finite_differences_coordinatewise_on_mlp():
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    theta = theta_of(model)
    forward = make_batched_forward(model)
    analytic = grads(meta_loss(forward, theta, batch, loss_fn, 1, 0.1).mean(), theta)
    eps = 1e-6
    for name in ("net.0.weight", "net.2.bias", "net.4.weight"):
        flat = theta[name].detach().view(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 5)):
            def shifted(delta, name=name, index=index):
                moved = dict(theta)
                t = theta[name].detach().clone()
                t.view(-1)[index] += delta
                moved[name] = t
                return meta_loss(forward, leaves(moved), batch, loss_fn, 1, 0.1).mean().detach()
            numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
            torch.testing.assert_close(analytic[name].view(-1)[index], numeric,
                                       rtol=1e-5, atol=1e-8)


def test_second_order_differs_from_first_order():
    """Catches a missing create_graph: on a network with curvature the two must differ."""
    model, batch, loss_fn = regression_setup()
    theta = theta_of(model)
    forward = make_batched_forward(model)
    second = grads(meta_loss(forward, theta, batch, loss_fn, 1, 0.1, False).mean(), theta)
    first = grads(meta_loss(forward, theta, batch, loss_fn, 1, 0.1, True).mean(), theta)
    gap = max((second[k] - first[k]).abs().max().item() for k in theta)
    scale = max(second[k].abs().max().item() for k in theta)
    assert gap > 1e-3 * scale


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("first_order", [False, True])
def test_agrees_with_higher(setup, first_order):
    model, batch, loss_fn = SETUPS[setup]()
    theta = theta_of(model)
    forward = make_batched_forward(model)
    ours = grads(meta_loss(forward, theta, batch, loss_fn, 2, 0.05, first_order).mean(), theta)
    theirs = higher_meta_gradient(model, {k: v.detach() for k, v in theta.items()}, batch,
                                  loss_fn, 2, 0.05, first_order)
    assert_close(ours, theirs)


def test_per_parameter_step_sizes_gradient():
    """Meta-SGD: gradients with respect to the learned step sizes match finite differences."""
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    theta = theta_of(model)
    forward = make_batched_forward(model)
    alpha = {k: torch.full_like(v, 0.05).requires_grad_() for k, v in theta.items()}
    loss = meta_loss(forward, theta, batch, loss_fn, 1, alpha).mean()
    ref = reference_meta_loss(model, theta, batch, loss_fn, 1, alpha).mean()
    g_alpha = grads(loss, alpha)
    assert_close(g_alpha, grads(ref, alpha))
    eps = 1e-6
    name = "net.2.weight"
    for index in (0, 7, 33):
        def at(delta, index=index):
            moved = dict(alpha)
            t = alpha[name].detach().clone()
            t.view(-1)[index] += delta
            moved[name] = t
            return meta_loss(forward, theta, batch, loss_fn, 1, moved).mean().detach()
        numeric = (at(eps) - at(-eps)) / (2 * eps)
        torch.testing.assert_close(g_alpha[name].view(-1)[index], numeric, rtol=1e-5, atol=1e-9)


def test_vmap_path_refuses_running_stat_batch_norm():
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(ValueError, match="running statistics"):
        make_batched_forward(model)


def test_float32_fast_path_matches_float64_reference():
    model, batch, loss_fn = regression_setup()
    theta64 = theta_of(model)
    ref = grads(reference_meta_loss(model, theta64, batch, loss_fn, 1, 0.05).mean(), theta64)
    model32 = model.float()
    theta32 = theta_of(model32)
    forward = make_batched_forward(model32)
    ours = grads(meta_loss(forward, theta32, batch.to(torch.float32), loss_fn, 1, 0.05).mean(),
                 theta32)
    for name in ref:
        torch.testing.assert_close(ours[name].double(), ref[name], rtol=1e-4, atol=1e-5)


def test_meta_test_adaptation_is_independent_of_chunking_and_matches_a_manual_loop():
    from maml_bench.core.functional import evaluate_adaptation

    model, batch, loss_fn = regression_setup(tasks=7, k=5)
    theta = theta_of(model)
    forward = make_batched_forward(model)
    whole = evaluate_adaptation(forward, theta, batch, loss_fn, loss_fn, 3, [0.05, 0.02], 100)
    chunked = evaluate_adaptation(forward, theta, batch, loss_fn, loss_fn, 3, [0.05, 0.02], 3)
    torch.testing.assert_close(whole, chunked)
    assert whole.shape == (7, 4)
    # Task 4 by hand: plain SGD on its support set; the last per-step size repeats (0.02).
    params = {k: v.detach().clone().requires_grad_() for k, v in theta.items()}
    for step, lr in enumerate([0.05, 0.02, 0.02]):
        query = torch.func.functional_call(model, params, (batch.x_query[4],))
        torch.testing.assert_close(whole[4, step], loss_fn(query[None], batch.y_query[4:5])[0])
        pred = torch.func.functional_call(model, params, (batch.x_support[4],))
        loss = loss_fn(pred[None], batch.y_support[4:5]).sum()
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (v - lr * g).detach().requires_grad_()
                  for (k, v), g in zip(params.items(), grads, strict=True)}
