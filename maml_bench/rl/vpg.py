"""The vanilla policy-gradient (REINFORCE) surrogate of the inner steps, on its own so that the
meta-update (`maml_rl.py`) and its Gauss-Newton product (`fisher.py`) both build on it."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from maml_bench.rl.episodes import Episodes, masked_mean
from maml_bench.rl.policy import GaussianMLPPolicy


def advantages_of(episodes: Episodes) -> Tensor:
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages: run rl.returns.process_episodes first")
    return episodes.advantages


def vpg_loss(policy: GaussianMLPPolicy, params: Mapping[str, Tensor], episodes: Episodes
             ) -> Tensor:
    """REINFORCE surrogate -mean(log pi(a|s) A) over each task's valid steps -> [N] (or a scalar
    for unbatched params and one-task episodes)."""
    log_prob = policy.log_prob(params, episodes.observations, episodes.actions)
    return -masked_mean(log_prob * advantages_of(episodes), episodes.mask)
