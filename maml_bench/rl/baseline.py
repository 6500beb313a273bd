"""rllab's `LinearFeatureBaseline` (Duan et al. 2016), the value baseline of the MAML RL code.

Features per time step: ``[clip(obs, -10, 10), clip(obs, -10, 10)^2, t/100, (t/100)^2,
(t/100)^3, 1]`` with t the step index within the episode. The coefficients solve the ridge
normal equations ``(X^T X + reg I) c = X^T R`` over the valid steps of one task's episodes (R the
discounted returns); rllab calls `np.linalg.lstsq` on them and, if the solution holds NaN,
retries with reg x 10, five tries in all. The paper's code fits the baseline per task on each
batch, then predicts on that same batch (cbfinn/maml_rl `rllab/sampler/base.py`).

Here every task of a batch is fitted at once, in float64, with the SVD-based least-squares
driver (``gelsd``, as numpy's lstsq): a rank-deficient system (constant or duplicate
observation dims, all-zero rewards) gives the minimum-norm solution instead of an error. The
systems are [F, F] with F = 2 obs_dim + 4, so they are solved on the CPU whatever the device.
"""

from __future__ import annotations

import torch
from torch import Tensor


def baseline_features(observations: Tensor) -> Tensor:
    """rllab's features of observations [..., T, B, obs_dim] -> [..., T, B, 2 obs_dim + 4]."""
    o = observations.clamp(-10.0, 10.0)
    horizon = observations.shape[-3]
    t = torch.arange(horizon, dtype=o.dtype, device=o.device) / 100.0
    t = t.view(horizon, 1, 1).expand(*o.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(observations: Tensor, returns: Tensor, mask: Tensor,
                        reg_coeff: float = 1e-5, max_tries: int = 5) -> Tensor:
    """Ridge coefficients per task: observations [..., T, B, d], returns and mask [..., T, B]
    -> float64 coefficients [..., 2 d + 4] (on the CPU).

    Padded steps (mask 0) are left out of the fit. A task whose solution is not finite is
    solved again with reg x 10, up to `max_tries` solves in all (rllab); if it never becomes
    finite the non-finite coefficients are returned, as rllab does, so the run's NaN check stops
    on them instead of a silent zero baseline.
    """
    lead = returns.shape[:-2]
    x = baseline_features(observations.detach().double().cpu()).flatten(-3, -2)  # [..., TB, F]
    w = mask.detach().double().cpu().flatten(-2)  # [..., TB]
    valid = w > 0
    # where, not *: padded rows never enter the sums even if they hold junk
    x = torch.where(valid.unsqueeze(-1), x, 0.0)
    y = torch.where(valid, returns.detach().double().cpu().flatten(-2), 0.0)
    x = x.reshape(-1, *x.shape[-2:])  # [L, TB, F]
    y = y.reshape(-1, y.shape[-1])
    n_features = x.shape[-1]
    gram = x.transpose(-1, -2) @ x  # [L, F, F]
    rhs = (x.transpose(-1, -2) @ y.unsqueeze(-1))  # [L, F, 1]
    eye = torch.eye(n_features, dtype=torch.float64)

    coeffs = torch.full((x.shape[0], n_features), float("nan"), dtype=torch.float64)
    todo = torch.arange(x.shape[0])
    reg = reg_coeff
    for _ in range(max_tries):
        sol = torch.linalg.lstsq(gram[todo] + reg * eye, rhs[todo], driver="gelsd").solution
        coeffs[todo] = sol.squeeze(-1)
        bad = ~torch.isfinite(coeffs[todo]).all(-1)
        todo = todo[bad]
        if todo.numel() == 0:
            break
        reg *= 10.0
    return coeffs.reshape(*lead, n_features)


def predict_linear_baseline(observations: Tensor, coeffs: Tensor, mask: Tensor) -> Tensor:
    """Baseline values [..., T, B] (0 on padded steps), in the observations' dtype and device."""
    x = baseline_features(observations.detach().double())
    values = (x * coeffs.to(x.device)[..., None, None, :]).sum(-1)  # coeffs per leading index
    return torch.where(mask > 0, values, 0.0).to(observations.dtype)


def linear_feature_baseline(observations: Tensor, returns: Tensor, mask: Tensor,
                            reg_coeff: float = 1e-5) -> Tensor:
    """Fit on this batch, per task, and predict on it (the paper's code) -> [..., T, B]."""
    coeffs = fit_linear_baseline(observations, returns, mask, reg_coeff)
    return predict_linear_baseline(observations, coeffs, mask)
