"""A network whose input is concatenated with free parameters z: the MAML paper's "context
vector" comparison (App. C.2, Table 3; also Tables 4/5 for RL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

CONTEXT = "context"


class ContextInput(nn.Module):
    """`net` applied to [x, z]: z (`context`, zeros at init) joins the input as extra channels.

    For images z has shape [c, H, W]: c more image channels, free per pixel. (A z constant over
    space would be a per-channel constant after the first convolution, which batch norm with
    batch statistics subtracts: the network could not see it.) For vectors z is [c] and joins
    the features. `net` must accept the wider input.
    """

    def __init__(self, net: nn.Module, shape: Sequence[int]) -> None:
        super().__init__()
        self.context = nn.Parameter(torch.zeros(*shape))
        self.net = net

    def _join(self, x: Tensor, z: Tensor) -> Tensor:
        """x [*lead, C, *space], z [*lead or 1s, c, *space] -> [*lead, C + c, *space]."""
        lead = x.shape[:x.dim() - self.context.dim()]
        z = z.expand(*lead, *self.context.shape)
        return torch.cat([x, z], dim=len(lead))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._join(x, self.context.unsqueeze(0)))

    def batched_forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """params [T, ...] (z: [T, *shape]) and x [T, N, ...]: all tasks at once."""
        z = params[CONTEXT].unsqueeze(1)  # the same z for every example of a task
        inner = {k.removeprefix("net."): v for k, v in params.items() if k != CONTEXT}
        return self.net.batched_forward(inner, self._join(x, z))
