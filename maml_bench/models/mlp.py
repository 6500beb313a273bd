"""Fully connected network (the paper's sinusoid 1-40-40-1 ReLU net) with a batched fast path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reference_code_init_(module: nn.Module) -> nn.Module:
    """The paper's TensorFlow code: weights ~ truncated normal (std 0.01, cut at 2 std), zero
    biases (PyTorch's default is a uniform fan-in scaled init instead)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight"):
                nn.init.trunc_normal_(p, std=0.01, a=-0.02, b=0.02)
            else:
                p.zero_()
    return module


class MLP(nn.Module):
    """Linear layers with ReLU between them; optional batch norm (no running stats)."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                if batch_norm:
                    # Batch statistics also at test time, as in the paper's code.
                    layers.append(nn.BatchNorm1d(fan_out, track_running_stats=False))
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        # (weight key, bias key) per layer and the batch norm's prefix after it (or None),
        # built once: batched_forward is on the hot path.
        self._linear_keys = [
            (f"net.{i}.weight", f"net.{i}.bias")
            for i, m in enumerate(self.net) if isinstance(m, nn.Linear)
        ]
        self._norms = [
            f"net.{i + 1}" if isinstance(self.net[i + 1], nn.BatchNorm1d) else None
            for i, m in enumerate(self.net[:-1]) if isinstance(m, nn.Linear)
        ]
        self._eps = 1e-5  # nn.BatchNorm1d's default, which the layers above use

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_features(x))

    def batched_forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """params [T, ...] and x [T, N, in] -> [T, N, out], one baddbmm per layer.

        Batch norm runs on [N, T * F]: statistics over N of each task's own features, exactly
        the per-task network's (as `Conv4.batched_features` does with channels).
        """
        h = self.input_features(x)
        last = len(self._linear_keys) - 1
        for i, (weight_key, bias_key) in enumerate(self._linear_keys):
            weight, bias = params[weight_key], params[bias_key]
            h = torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))
            if i == last:
                return h
            h = self.between_layers(i, params, h)
        return h

    # -- what the factored backend (core/factored.py) and batched_forward share -----------

    def linear_keys(self) -> list[tuple[str, str]]:
        """(weight key, bias key) of each linear layer, in order."""
        return list(self._linear_keys)

    def input_features(self, x: Tensor) -> Tensor:
        """[T, N, ...] inputs -> [T, N, in_features] (a hook for FlatMLP's images)."""
        return x

    def between_layers(self, i: int, params: Mapping[str, Tensor], h: Tensor) -> Tensor:
        """Batch norm (if any) and ReLU after linear layer i, on [T, N, F] with per-task
        parameters [T, F]."""
        norm = self._norms[i]
        if norm is not None:
            t, n, f = h.shape
            h = F.batch_norm(h.transpose(0, 1).reshape(n, t * f), None, None,
                             params[f"{norm}.weight"].reshape(-1),
                             params[f"{norm}.bias"].reshape(-1), training=True,
                             eps=self._eps).view(n, t, f).transpose(0, 1)
        return torch.relu(h)
