"""Gaussian MLP policy in functional form (Finn et al. 2017, section 5.3 and App. A.2).

As the paper's code (`MAMLGaussianMLPPolicy` in cbfinn/maml_rl, on rllab): an MLP (2 hidden
layers of 100 ReLU units in the paper) gives the mean of a diagonal Gaussian; the log standard
deviation is a learned, state-independent vector (initial std 1, i.e. log-std 0), clamped below
at log(min_std); weights Xavier-uniform, biases zero. Every parameter, the log-std included, is
adapted by the inner step.

The network is an `nn.Module` only to own and initialise theta; every computation takes the
parameters as a dict, so the inner loop can pass adapted parameters. A dict whose weights carry a
leading task dimension (`maml_bench.core.functional.expand_params`) is *batched*: then
observations are [N, ..., obs_dim] and each task uses its own parameters (one `baddbmm` per
layer, as `maml_bench.models.mlp.MLP.batched_forward`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from maml_bench.core.functional import Params

LOG_2PI = math.log(2.0 * math.pi)


class Gaussian(NamedTuple):
    """A diagonal Gaussian per step: mean and log-std, both [..., act_dim]."""

    mean: Tensor
    log_std: Tensor

    def detach(self) -> Gaussian:
        return Gaussian(self.mean.detach(), self.log_std.detach())


def gaussian_log_prob(dist: Gaussian, actions: Tensor) -> Tensor:
    """log N(actions; mean, diag(exp(log_std))^2), summed over the action dims -> [...]."""
    z = (actions - dist.mean) * torch.exp(-dist.log_std)
    return (-0.5 * z.pow(2) - dist.log_std).sum(-1) - 0.5 * actions.shape[-1] * LOG_2PI


def gaussian_kl(old: Gaussian, new: Gaussian) -> Tensor:
    """KL(old || new) of diagonal Gaussians, summed over action dims -> [...] (rllab's `kl_sym`
    argument order; exact formula, without rllab's 1e-8 in the denominator)."""
    var_ratio = torch.exp(2.0 * (old.log_std - new.log_std))
    mean_term = (old.mean - new.mean).pow(2) * torch.exp(-2.0 * new.log_std)
    return (new.log_std - old.log_std + 0.5 * (var_ratio + mean_term - 1.0)).sum(-1)


#: hidden units by name (a name travels to the drawing process; rllab's default is tanh, the
#: paper's MAML policies ReLU)
NONLINEARITIES: dict[str, Callable[[Tensor], Tensor]] = {"relu": torch.relu, "tanh": torch.tanh}


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy: MLP mean, state-independent learned log-std.

    Parameter names: ``layers.{i}.weight`` / ``layers.{i}.bias`` (the last layer is the mean's
    linear output) and ``log_std``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        init_std: float = 1.0,
        min_std: float = 1e-6,
        nonlinearity: str = "relu",
    ) -> None:
        super().__init__()
        sizes = [obs_dim, *hidden_sizes, act_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.min_log_std = math.log(min_std)
        self.nonlinearity_name = nonlinearity
        self.nonlinearity = NONLINEARITIES[nonlinearity]
        self._keys = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(self.layers))]
        with torch.no_grad():  # rllab / the paper's code: Xavier-uniform weights, zero biases
            for layer in self.layers:
                nn.init.xavier_uniform_(layer.weight)
                layer.bias.zero_()

    def params(self) -> Params:
        """theta as a dict of this module's parameters (the tensors themselves, not copies)."""
        return dict(self.named_parameters())

    def is_batched(self, params: Mapping[str, Tensor]) -> bool:
        """Whether `params` carry a leading task dimension."""
        return params[self._keys[0][0]].dim() == 3

    def distribution(self, params: Mapping[str, Tensor], obs: Tensor) -> Gaussian:
        """The action distribution at `obs` [..., obs_dim] (batched params: [N, ..., obs_dim]);
        mean and log-std both [..., act_dim]."""
        last = len(self._keys) - 1
        if self.is_batched(params):
            n, lead = obs.shape[0], obs.shape[1:-1]
            h = obs.reshape(n, -1, obs.shape[-1])
            for i, (wk, bk) in enumerate(self._keys):
                h = torch.baddbmm(params[bk].unsqueeze(1), h, params[wk].transpose(1, 2))
                if i < last:
                    h = self.nonlinearity(h)
            mean = h.reshape(n, *lead, self.act_dim)
            log_std = params["log_std"].reshape(n, *(1,) * len(lead), self.act_dim)
        else:
            h = obs
            for i, (wk, bk) in enumerate(self._keys):
                h = nn.functional.linear(h, params[wk], params[bk])
                if i < last:
                    h = self.nonlinearity(h)
            mean, log_std = h, params["log_std"]
        # tf.maximum in the original: no gradient below the floor
        log_std = log_std.clamp_min(self.min_log_std).expand_as(mean)
        return Gaussian(mean, log_std)

    def log_prob(self, params: Mapping[str, Tensor], obs: Tensor, actions: Tensor) -> Tensor:
        """log pi(actions | obs) under `params`, summed over action dims -> obs.shape[:-1]."""
        return gaussian_log_prob(self.distribution(params, obs), actions)

    def sample(self, params: Mapping[str, Tensor], obs: Tensor,
               generator: torch.Generator | None = None) -> Tensor:
        """Actions drawn from pi(. | obs) (no graph): mean + std * eps with eps from
        `generator`, so a seeded generator reproduces the draw exactly."""
        with torch.no_grad():
            dist = self.distribution(params, obs)
            eps = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype,
                              device=dist.mean.device)
            return dist.mean + torch.exp(dist.log_std) * eps

    def forward(self, obs: Tensor) -> Tensor:
        """The mean action under this module's own parameters."""
        return self.distribution(self.params(), obs).mean


class ContextPolicy(GaussianMLPPolicy):
    """A Gaussian MLP policy whose input is [observation, z]: z (``context``, zeros at init) is
    a free parameter, the only one the context-vector comparison adapts (MAML paper App. C.2,
    Tables 4/5). ``obs_dim`` stays the environment's."""

    def __init__(self, obs_dim: int, act_dim: int, context_size: int,
                 hidden_sizes: Sequence[int] = (100, 100), **kwargs: Any) -> None:
        super().__init__(obs_dim + context_size, act_dim, hidden_sizes, **kwargs)
        self.obs_dim = obs_dim
        self.context = nn.Parameter(torch.zeros(context_size))

    def distribution(self, params: Mapping[str, Tensor], obs: Tensor) -> Gaussian:
        z = params["context"]  # [c], or [N, c] with batched params
        if self.is_batched(params):
            z = z.reshape(z.shape[0], *(1,) * (obs.dim() - 2), z.shape[-1])
        z = z.expand(*obs.shape[:-1], z.shape[-1])
        return super().distribution(params, torch.cat([obs, z], dim=-1))
