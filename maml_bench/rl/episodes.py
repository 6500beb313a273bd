"""The trajectory batch that every learning piece of MAML-TRPO works on.

Layout (time-major, as a vectorised sampler fills it one step at a time):

* one task: ``observations [T, B, obs_dim]``, ``actions [T, B, act_dim]``, ``rewards [T, B]``,
  ``mask [T, B]``;
* several tasks at once: the same with a leading task dimension, ``[N, T, B, ...]``.

``T`` is the horizon (time steps), ``B`` the number of episodes (rollouts) per task. ``mask`` is
1.0 for steps the episode actually took and 0.0 after it ended (done before the horizon); the
valid steps of an episode are a prefix ``0 .. len-1`` of its column, so the time index ``t`` of a
row is the step within its episode (rllab's per-path ``arange``). Padded steps are ignored by
every function here, but must hold finite values (zeros): a NaN there would leak into gradients
through ``0 * NaN``. `stack_tasks` pads with zeros.

``returns``, ``baselines`` and ``advantages`` ([..., T, B], 0 on padded steps) are filled in by
`maml_bench.rl.returns.process_episodes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Episodes:
    """A batch of episodes of one task ``[T, B, ...]`` or of N tasks ``[N, T, B, ...]``."""

    observations: Tensor  # [(N,) T, B, obs_dim]
    actions: Tensor  # [(N,) T, B, act_dim]
    rewards: Tensor  # [(N,) T, B]
    mask: Tensor  # [(N,) T, B]: 1.0 on steps taken, 0.0 after the episode ended
    returns: Tensor | None = None  # [(N,) T, B] discounted returns-to-go
    baselines: Tensor | None = None  # [(N,) T, B] fitted value baseline
    advantages: Tensor | None = None  # [(N,) T, B] standardised per task

    def __post_init__(self) -> None:
        lead = self.rewards.shape
        if self.mask.shape != lead:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} != rewards {tuple(lead)}")
        for name in ("observations", "actions"):
            shape = getattr(self, name).shape
            if shape[:-1] != lead:
                raise ValueError(f"{name} shape {tuple(shape)} does not start with {tuple(lead)}")

    @property
    def has_task_dim(self) -> bool:
        """True for the batched-over-tasks layout [N, T, B, ...]."""
        return self.rewards.dim() == 3

    @property
    def n_tasks(self) -> int:
        return self.rewards.shape[0] if self.has_task_dim else 1

    @property
    def horizon(self) -> int:
        return self.rewards.shape[-2]

    def with_task_dim(self) -> Episodes:
        """The same data as [N, T, B, ...] (a single task becomes N = 1; views, no copy)."""
        if self.has_task_dim:
            return self
        return Episodes(**{f.name: None if (v := getattr(self, f.name)) is None else v.unsqueeze(0)
                           for f in fields(self)})

    def task(self, i: int) -> Episodes:
        """Task i of a batched layout, as [T, B, ...]."""
        if not self.has_task_dim:
            raise ValueError("task() needs the batched layout [N, T, B, ...]")
        return Episodes(**{f.name: None if (v := getattr(self, f.name)) is None else v[i]
                           for f in fields(self)})

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
           ) -> Episodes:
        """Floating tensors cast to `dtype` and everything moved to `device`."""
        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def join_episodes(first: Episodes, more: Episodes) -> Episodes:
    """The episodes of both batches per task (same tasks and horizon), before processing."""
    def cat(a: Tensor, b: Tensor, per_step: bool) -> Tensor:
        return torch.cat([a, b], dim=-2 if per_step else -1)

    return Episodes(observations=cat(first.observations, more.observations, True),
                    actions=cat(first.actions, more.actions, True),
                    rewards=cat(first.rewards, more.rewards, False),
                    mask=cat(first.mask, more.mask, False))


def stack_tasks(per_task: Sequence[Episodes]) -> Episodes:
    """Stack one-task batches [T_i, B_i, ...] into [N, max T, max B, ...], zero-padded with mask
    0, so tasks with different horizons or episode counts share one batched computation."""
    if not per_task:
        raise ValueError("no tasks to stack")
    horizon = max(e.horizon for e in per_task)
    width = max(e.rewards.shape[-1] for e in per_task)

    def pad(t: Tensor) -> Tensor:
        out = t.new_zeros((horizon, width, *t.shape[2:]))
        out[: t.shape[0], : t.shape[1]] = t
        return out

    stacked = {}
    for f in fields(Episodes):
        values = [getattr(e, f.name) for e in per_task]
        if any(v is None for v in values):
            stacked[f.name] = None
            continue
        stacked[f.name] = torch.stack([pad(v) for v in values])
    return Episodes(**stacked)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` [..., T, B] over the valid steps of each leading index -> [...].

    An all-padded batch gives 0 instead of 0/0."""
    return (values * mask).sum((-2, -1)) / mask.sum((-2, -1)).clamp_min(1.0)
