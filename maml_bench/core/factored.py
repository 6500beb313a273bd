"""The `factored` backend: MAML's inner steps on fully connected layers without per-task
copies of the weights.

A linear layer's gradient for one task is a sum of outer products, one per support example:
dL/dW_t = D_t^T H_t, with D_t [N, out] the loss's gradients at the layer's outputs and H_t
[N, in] its inputs. After plain gradient steps j = 0..s-1, task t's weights are therefore the
shared W plus a correction of rank at most s x N,

    W_t = W - sum_j alpha_j D_tj^T H_tj,   so   h W_t^T = h W^T + sum_j (h H_tj^T) (-alpha_j D_tj),

and the forward keeps that form: one matmul over all tasks' examples for the shared part and
small batched products for the rest. The batched path instead holds a [T, out, in] copy of W
per task and runs every elementwise pass of the second-order graph over those copies (the
Omniglot no-conv MLP: 784 x 256 weights per task against 1-25 support examples). It is the
same function of theta, so the same meta-gradient (second order: D and H keep their graphs;
first order: both are constants), gated like every backend (`core/backends.py`: float64
agreement with the per-task loop and finite differences). Biases and batch-norm parameters are
small and adapted as per-task copies, as in the batched path.

Applies to step sizes that are one number per step (a float or a scalar tensor, as MAML's
alpha); per-element step sizes (Meta-SGD) make the correction full rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from maml_bench.core.functional import StepSizes, SupervisedBatch, TaskLoss, step_size

#: one term of a weight's correction: (U [T, out, r], V [T, r, in]), W_t = W + sum U V
Term = tuple[Tensor, Tensor]


class DenseNet(Protocol):
    """What the factored path needs of a model (`models.mlp.MLP`): its linear layers in order
    and what runs between them on [T, N, features] activations."""

    def linear_keys(self) -> list[tuple[str, str]]: ...

    def input_features(self, x: Tensor) -> Tensor: ...

    def between_layers(self, i: int, params: Mapping[str, Tensor], h: Tensor) -> Tensor: ...


def unsupported_step_sizes(lrs: StepSizes) -> str | None:
    """Why these step sizes cannot be factored, or None."""
    if isinstance(lrs, Mapping):
        return ("per-parameter step sizes (Meta-SGD) make each adapted weight full rank; the "
                "batched path computes them")
    if isinstance(lrs, Tensor) and lrs.numel() != 1:
        return f"step sizes of shape {tuple(lrs.shape)}: one number per step is needed"
    if isinstance(lrs, (list, tuple)):
        for lr in lrs:
            reason = unsupported_step_sizes(lr)
            if reason is not None:
                return reason
    return None


def pays_off(model: DenseNet, theta: Mapping[str, Tensor], steps: int, support: int) -> bool:
    """Whether the factored form is worth it: the per-task weight copies of the batched path
    (sum of in x out) against the rows the corrections hold (steps x support examples x sum
    of in + out). Below a ratio of 2 auto keeps the batched path: where the corrections are
    as large as the copies (the sinusoid's 1-40-40-1 net, K = 10: ratio 1) factored was no
    faster, while at the no-conv Omniglot's ratios (5.4 at 5 shots, 27 at 1) it was several
    times faster (results/benchmarks/factored-cpu.md, docs/speed.md)."""
    shapes = [theta[w].shape for w, _ in model.linear_keys()]
    copies = sum(out * fan_in for out, fan_in in shapes)
    rows = steps * support * sum(out + fan_in for out, fan_in in shapes)
    return copies >= 2 * rows


def _linear(h: Tensor, weight: Tensor, terms: list[Term], bias: Tensor) -> Tensor:
    """h [T, M, in] through W + sum U V (per task) and bias [T, out] -> [T, M, out]."""
    t, m, fan_in = h.shape
    z = (h.reshape(t * m, fan_in) @ weight.t()).view(t, m, -1)
    for u, v in terms:
        z = z + torch.bmm(torch.bmm(h, v.transpose(1, 2)), u.transpose(1, 2))
    return z + bias.unsqueeze(1)


def factored_query_losses(model: DenseNet, theta: Mapping[str, Tensor], batch: SupervisedBatch,
                          loss_fn: TaskLoss, steps: int, lrs: StepSizes,
                          first_order: bool = False) -> Tensor:
    """Per-task query losses [T] after `steps` inner steps, as `functional.meta_loss`."""
    keys = model.linear_keys()
    weights = [w for w, _ in keys]
    n_tasks = batch.n_tasks
    # Everything but the linear weights is small: per-task copies (expand views), as batched.
    small = {k: v.unsqueeze(0).expand(n_tasks, *v.shape) for k, v in theta.items()
             if k not in weights}
    terms: dict[str, list[Term]] = {w: [] for w in weights}

    def forward(x: Tensor, small: Mapping[str, Tensor]
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Output, and each linear layer's inputs and outputs (for the inner gradient)."""
        h = model.input_features(x)
        inputs, outputs = [], []
        for i, (w, b) in enumerate(keys):
            z = _linear(h, theta[w], terms[w], small[b])
            inputs.append(h)
            outputs.append(z)
            if i < len(keys) - 1:
                h = model.between_layers(i, small, z)
        return outputs[-1], inputs, outputs

    create_graph = not first_order and torch.is_grad_enabled()
    for step in range(steps):
        out, inputs, outputs = forward(batch.x_support, small)
        # Summed over tasks: d(sum)/d(task t's tensors) is exactly task t's gradient.
        loss = loss_fn(out, batch.y_support).sum()
        grads = torch.autograd.grad(loss, outputs + list(small.values()),
                                    create_graph=create_graph)
        for w, h, d in zip(weights, inputs, grads[:len(outputs)], strict=True):
            lr = step_size(lrs, step, w)
            # first order: the correction is a constant (d has no graph without create_graph)
            terms[w] = [*terms[w], (-lr * d.transpose(1, 2), h if create_graph else h.detach())]
        small = {k: v - step_size(lrs, step, k) * g
                 for (k, v), g in zip(small.items(), grads[len(outputs):], strict=True)}
    return loss_fn(forward(batch.x_query, small)[0], batch.y_query)
