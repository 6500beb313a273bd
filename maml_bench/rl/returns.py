"""Discounted returns, GAE and per-task standardised advantages, as rllab's `process_samples`
in the paper's code (cbfinn/maml_rl `rllab/sampler/base.py`; Schulman et al. 2016 for GAE).

Per task: returns R_t = sum_k gamma^k r_{t+k}; the linear feature baseline b is fitted to R on
this batch and predicted on it; deltas d_t = r_t + gamma b_{t+1} - b_t with b = 0 after the last
step of an episode (rllab appends a 0: no bootstrap, also at the horizon); advantages
A_t = sum_k (gamma lambda)^k d_{t+k}, which for lambda = 1 telescopes to R_t - b_t; then
A <- (A - mean) / (std + 1e-8) over the task's valid steps (`center_adv`, population std).

All tensors are [..., T, B] (time then episodes; see `maml_bench.rl.episodes`), the mask marks
valid steps, and every output is 0 on padded steps. These are data, not part of any graph.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from maml_bench.rl.baseline import linear_feature_baseline
from maml_bench.rl.episodes import Episodes


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 0.99) -> Tensor:
    """R_t = r_t + gamma R_{t+1} within each episode, 0 on padded steps -> [..., T, B]."""
    valid = mask > 0
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0, :])
    for t in range(rewards.shape[-2] - 1, -1, -1):
        # a padded step contributes nothing and cuts the sum (`where`: junk padding stays out)
        running = torch.where(valid[..., t, :], rewards[..., t, :] + gamma * running, 0.0)
        out[..., t, :] = running
    return out


def gae_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 0.99,
                   gae_lambda: float = 1.0) -> Tensor:
    """Generalised advantage estimates with value 0 after an episode's last step -> [..., T, B].

    With gae_lambda = 1 this equals `discounted_returns(rewards) - values` on valid steps."""
    valid = mask > 0
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0, :])
    next_value = torch.zeros_like(running)
    for t in range(rewards.shape[-2] - 1, -1, -1):
        v = torch.where(valid[..., t, :], values[..., t, :], 0.0)
        delta = rewards[..., t, :] + gamma * next_value - v
        running = torch.where(valid[..., t, :], delta + gamma * gae_lambda * running, 0.0)
        out[..., t, :] = running
        next_value = v
    return out


def standardize_advantages(advantages: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(A - mean) / (std + eps) over the valid steps of each task (the last two dims), 0 on
    padded steps; rllab's `center_advantages` (numpy's population std, eps 1e-8)."""
    valid = mask > 0
    a = torch.where(valid, advantages, 0.0)
    count = valid.sum((-2, -1), keepdim=True).clamp_min(1).to(a.dtype)
    mean = a.sum((-2, -1), keepdim=True) / count
    centred = torch.where(valid, a - mean, 0.0)
    std = (centred.pow(2).sum((-2, -1), keepdim=True) / count).sqrt()
    return centred / (std + eps)


def process_episodes(episodes: Episodes, gamma: float = 0.99, gae_lambda: float = 1.0,
                     reg_coeff: float = 1e-5, standardize: bool = True, shared: bool = False
                     ) -> Episodes:
    """Episodes with returns, the per-task fitted linear baseline and advantages filled in.

    `shared`: one baseline fitted, and the advantages standardised, over every task's episodes
    together (the reference's plain TRPO: one batch of paths, each of its own goal)."""
    obs, rewards, mask = episodes.observations, episodes.rewards, episodes.mask
    if shared and rewards.dim() == 3:  # [N, T, B] -> one task of N * B episodes [T, N * B]
        n, t, b = rewards.shape
        obs, rewards, mask = (x.transpose(0, 1).reshape(t, n * b, *x.shape[3:])
                              for x in (obs, rewards, mask))
    returns = discounted_returns(rewards, mask, gamma)
    baselines = linear_feature_baseline(obs, returns, mask, reg_coeff)
    advantages = gae_advantages(rewards, baselines, mask, gamma, gae_lambda)
    if standardize:
        advantages = standardize_advantages(advantages, mask)
    if shared and episodes.rewards.dim() == 3:  # back to [N, T, B]
        returns, baselines, advantages = (x.reshape(t, n, b).transpose(0, 1)
                                          for x in (returns, baselines, advantages))
    return replace(episodes, returns=returns, baselines=baselines, advantages=advantages)
