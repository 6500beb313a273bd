"""Convolution and batch norm + ReLU with hand-written derivatives, for second-order MAML.

Second-order MAML differentiates the support gradient once more (the outer backward runs
through the inner backward). Through PyTorch's own ops that second derivative is slow on CPU:
a grouped convolution's double backward takes the weight term one group at a time (a loop of
small convolutions over the tasks), and batch norm's double backward streams about 30
full-size temporaries. These functions give the same values with cheaper derivatives:

* `conv2d`: three linear maps (the convolution, its input gradient, its weight gradient), each
  one native call for all groups, whose derivatives are again these three maps, so every order
  of differentiation stays one native call per term.
* `batch_norm_relu`: batch norm over the batch's own statistics (every dim but 1) followed by
  ReLU; its backward is a function whose own backward (the second derivative) is written out
  in closed form, about 11 full-size passes. Differentiating that once more is refused
  (MAML never needs it: every inner step's gradient is differentiated once by the outer one).

Backends using these are gated like every other (`core/backends.py`): float64 agreement with
the reference loop and finite differences, per model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

aten = torch.ops.aten


@dataclass(frozen=True)
class ConvGeometry:
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int


def _conv(x: Tensor, w: Tensor, g: ConvGeometry) -> Tensor:
    return aten.convolution(x, w, None, g.stride, g.padding, (1, 1), False, (0, 0), g.groups)


def _conv_grads(gy: Tensor, x: Tensor, w: Tensor, g: ConvGeometry, mask: tuple[bool, bool]
                ) -> tuple[Tensor, Tensor]:
    """The native backward: (input gradient, weight gradient) as `mask` asks; x and w may be
    stand-ins of the right shape where their own values are not needed."""
    if mask[0] and g.stride != (1, 1):
        # oneDNN's strided input gradient is faster from channels-last gy
        # (results/benchmarks/omniglot-meta-step-speed-notes.md); back to contiguous for the
        # elementwise passes after it. At stride 1 (MiniImagenet) the two copies cost more
        # than they save (about twice the time at 75 x 64 x 42 x 42; a MiniImagenet 1-shot
        # step of 2 tasks on one thread 2.29 s against 2.54 s, best of 4, 2026-12-08).
        gy = gy.contiguous(memory_format=torch.channels_last)
    gx, gw, _ = aten.convolution_backward(gy, x, w, None, g.stride, g.padding, (1, 1), False,
                                          (0, 0), g.groups, (*mask, False))
    return (gx.contiguous() if gx is not None else None), gw


class _Conv(torch.autograd.Function):
    """y = conv(x, w)."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, g: ConvGeometry) -> Tensor:
        return _conv(x, w, g)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, w, g = inputs
        ctx.save_for_backward(x, w)
        ctx.g = g

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, w = ctx.saved_tensors
        gx = _ConvInput.apply(gy, w, x, ctx.g) if ctx.needs_input_grad[0] else None
        gw = _ConvWeight.apply(x, gy, w, ctx.g) if ctx.needs_input_grad[1] else None
        return gx, gw, None


class _ConvInput(torch.autograd.Function):
    """The input gradient of conv(x, w) for output gradient gy (linear in gy and in w);
    `like` only gives x's shape."""

    @staticmethod
    def forward(gy: Tensor, w: Tensor, like: Tensor, g: ConvGeometry) -> Tensor:
        return _conv_grads(gy, like, w, g, (True, False))[0]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        gy, w, _, g = inputs
        ctx.save_for_backward(gy, w)
        ctx.g = g

    @staticmethod
    def backward(ctx, u: Tensor):
        gy, w = ctx.saved_tensors
        d_gy = _Conv.apply(u, w, ctx.g) if ctx.needs_input_grad[0] else None
        d_w = _ConvWeight.apply(u, gy, w, ctx.g) if ctx.needs_input_grad[1] else None
        return d_gy, d_w, None, None


class _ConvWeight(torch.autograd.Function):
    """The weight gradient of conv(x, w) for output gradient gy (bilinear in x and gy);
    `like` only gives w's shape."""

    @staticmethod
    def forward(x: Tensor, gy: Tensor, like: Tensor, g: ConvGeometry) -> Tensor:
        return _conv_grads(gy, x, like, g, (False, True))[1]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, gy, _, g = inputs
        ctx.save_for_backward(x, gy)
        ctx.g = g

    @staticmethod
    def backward(ctx, u: Tensor):
        x, gy = ctx.saved_tensors
        d_x = _ConvInput.apply(gy, u, x, ctx.g) if ctx.needs_input_grad[0] else None
        d_gy = _Conv.apply(x, u, ctx.g) if ctx.needs_input_grad[1] else None
        return d_x, d_gy, None, None


def conv2d(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, groups: int = 1
           ) -> Tensor:
    """`F.conv2d` without bias, with derivatives of every order one native call per term."""
    return _Conv.apply(x, weight, ConvGeometry((stride, stride), (padding, padding), groups))


def _dims(x: Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _BatchNormReLU(torch.autograd.Function):
    """relu(gamma * (x - mean) / sqrt(var + eps) + beta), statistics over every dim but 1."""

    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
        dims = _dims(x)
        # var_mean (Welford) over strided dims is several times slower here than two sums
        xhat = x - x.mean(dims, keepdim=True)
        rstd = torch.rsqrt(xhat.square().mean(dims, keepdim=True) + eps)
        xhat.mul_(rstd)
        out = torch.addcmul(_per_channel(beta, x), xhat, _per_channel(gamma, x)).relu_()
        # Constants to the backward: their dependence on x is written out in
        # _BatchNormReLUBackward.backward. The mask in x's dtype: a bool one would be
        # converted at every product.
        ctx.cache = (xhat, rstd, (out > 0).to(x.dtype))
        ctx.save_for_backward(x, gamma)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, gamma = ctx.saved_tensors
        gx, ggamma, gbeta = _BatchNormReLUBackward.apply(grad, x, gamma, ctx.cache)
        return gx, ggamma, gbeta, None


class _BatchNormReLUBackward(torch.autograd.Function):
    """(grad) -> (grad x, grad gamma, grad beta) of `_BatchNormReLU`, with its own derivative
    in closed form. Notation: k = gamma * rstd per channel, gy = grad where relu passed,
    A = mean(gy), B = mean(gy * xhat), M elements per channel:
    grad x = k (gy - A - xhat B), grad gamma = M B, grad beta = M A."""

    @staticmethod
    def forward(grad: Tensor, x: Tensor, gamma: Tensor, cache: tuple) -> tuple[Tensor, ...]:
        xhat, rstd, passed = cache
        dims, m = _dims(x), x.numel() // x.shape[1]
        gy = grad * passed
        gbeta = gy.sum(dims)
        ggamma = (gy * xhat).sum(dims)
        k = _per_channel(gamma, x) * rstd
        a, b = _per_channel(gbeta / m, x), _per_channel(ggamma / m, x)
        gx = torch.addcmul(-k * a, xhat, -k * b).addcmul_(gy, k)
        return gx, ggamma, gbeta

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        grad, x, gamma, cache = inputs
        _, ggamma, gbeta = output
        ctx.cache = cache
        # Detached: an output kept on ctx as itself is a reference cycle through C++ (output ->
        # grad_fn -> ctx -> output) that the garbage collector cannot free, so every graph of
        # every meta-step (with its full-size cache) would stay alive. Their values suffice.
        ctx.sums = (ggamma.detach(), gbeta.detach())
        ctx.save_for_backward(grad, gamma)

    @staticmethod
    @once_differentiable
    def backward(ctx, u: Tensor, u_gamma: Tensor, u_beta: Tensor):
        """u, u_gamma, u_beta: gradients with respect to (grad x, grad gamma, grad beta)."""
        grad, gamma = ctx.saved_tensors
        xhat, rstd, passed = ctx.cache
        dims, m = _dims(xhat), xhat.numel() // xhat.shape[1]
        gy = grad * passed
        k = _per_channel(gamma, xhat) * rstd
        a, b = (_per_channel(s / m, xhat) for s in reversed(ctx.sums))
        u_gamma, u_beta = _per_channel(u_gamma, xhat), _per_channel(u_beta, xhat)
        mean_u = _per_channel(u.sum(dims), xhat) / m
        c = _per_channel((u * xhat).sum(dims), xhat) / m
        u_gy = _per_channel((u * gy).sum(dims), xhat) / m
        # through gy: k (u - mean u - xhat c) + u_gamma xhat + u_beta, where relu passed
        d_grad = torch.addcmul(u_beta - k * mean_u, xhat, u_gamma - k * c).addcmul_(u, k)
        d_grad.mul_(passed)
        # gamma enters only through k: d/dgamma = rstd * sum u (gy - A - xhat B)
        s = rstd * (u_gy - a * mean_u - b * c) * m  # per channel, keepdim
        d_gamma = s.flatten()
        # x enters through xhat (r P, P = I - 1/M - xhat xhat^T / M) and rstd (-r^2 xhat / M).
        # G = -k B u + (u_gamma - k c) gy: the gradient with respect to xhat at fixed rstd;
        # gamma * s / rstd: the one with respect to rstd at fixed xhat.
        g_u, g_gy = -k * b, u_gamma - k * c
        mean_g = g_u * mean_u + g_gy * a
        mean_gx = g_u * c + g_gy * b
        coef_xhat = -rstd * mean_gx - _per_channel(gamma, xhat) * s * rstd / m
        d_x = torch.addcmul(-rstd * mean_g, xhat, coef_xhat)
        d_x.addcmul_(u, rstd * g_u).addcmul_(gy, rstd * g_gy)
        return d_grad, d_x, d_gamma, None


def batch_norm_relu(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5) -> Tensor:
    """relu(batch_norm(x, training=True)) with batch statistics over every dim but 1 and a
    closed-form second derivative (`_BatchNormReLUBackward.backward`)."""
    # [N, C, L]: per-channel factors broadcast over one long inner dim (vectorised); over
    # short ones (14 x 14 images) the elementwise passes ran several times slower.
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return _BatchNormReLU.apply(flat, gamma, beta, eps).view(x.shape)
