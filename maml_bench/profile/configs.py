"""The paper's MAML configurations as data (../shared/reference/paper-protocol.md, sections 2-3):
network shapes, meta-batch, inner steps and step size. Inputs are random tensors of the right
shapes: a meta-step's cost depends on shapes only, so no dataset is needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

# torch is imported where it is used: the CLI imports this module for the names of its
# --config domain, and `maml-bench --help` should not wait for torch.
if TYPE_CHECKING:
    import torch
    from torch import nn

    from maml_bench.core.functional import SupervisedBatch, TaskLoss


@dataclass(frozen=True)
class ProfileConfig:
    """One paper configuration: its network, meta-batch, inner loop and episode shapes."""

    name: str
    title: str
    meta_batch: int  # the paper's tasks per meta-batch
    inner_steps: int  # the paper's inner steps at meta-training
    inner_lr: float
    ways: int = 0  # 0: regression (the sinusoid MLP)
    shots: int = 10  # support examples per class (per task for regression)
    query: int = 10  # query examples per class (per task for regression)
    image: int = 28
    channels: int = 1
    filters: int = 64
    maxpool: bool = False  # MiniImagenet: max-pooling and a flattened head

    @property
    def model_name(self) -> str:
        if not self.ways:
            return "MLP 1-40-40-1"
        return f"Conv4 {self.filters}f {self.image}x{self.image}" + (
            " max-pool" if self.maxpool else " strided")

    def model(self) -> nn.Module:
        from maml_bench.models import MLP, Conv4

        if not self.ways:
            return MLP(1, [40, 40], 1)
        return Conv4(self.channels, self.ways, self.filters, self.image,
                     downsample="maxpool" if self.maxpool else "stride",
                     head="flatten" if self.maxpool else "mean")

    @property
    def loss(self) -> TaskLoss:
        from maml_bench.core.functional import task_cross_entropy, task_mse

        return task_cross_entropy if self.ways else task_mse

    def batch(self, meta_batch: int, device: torch.device | str = "cpu",
              seed: int = 0, dtype: torch.dtype | None = None) -> SupervisedBatch:
        """A meta-batch of random inputs and valid targets with the paper's shapes."""
        import torch

        from maml_bench.core.functional import SupervisedBatch

        gen = torch.Generator().manual_seed(seed)
        t = meta_batch
        if not self.ways:
            x = torch.rand(t, self.shots + self.query, 1, generator=gen, dtype=dtype) * 10 - 5
            y = 3 * torch.sin(x - 1)
            s = self.shots
            parts = (x[:, :s], y[:, :s], x[:, s:], y[:, s:])
        else:
            ns, nq = self.ways * self.shots, self.ways * self.query
            x = torch.randn(t, ns + nq, self.channels, self.image, self.image, generator=gen,
                            dtype=dtype)
            labels = torch.cat([torch.arange(self.ways).repeat(self.shots),
                                torch.arange(self.ways).repeat(self.query)]).expand(t, -1)
            parts = (x[:, :ns], labels[:, :ns], x[:, ns:], labels[:, ns:])
        return SupervisedBatch(*(p.contiguous().to(device) for p in parts))

    def default_meta_batches(self) -> tuple[int, ...]:
        """Half, the paper's, and double the paper's meta-batch."""
        return tuple(sorted({max(1, self.meta_batch // 2), self.meta_batch,
                             2 * self.meta_batch}))


_OMNIGLOT = {"image": 28, "channels": 1, "filters": 64}
_MINI = {"image": 84, "channels": 3, "filters": 32, "maxpool": True, "query": 15}

#: Every paper configuration, in the order of the paper (sinusoid, Omniglot, MiniImagenet).
CONFIGS: dict[str, ProfileConfig] = {c.name: c for c in [
    ProfileConfig("sinusoid", "sinusoid regression, K = 10", 25, 1, 0.01),
    # Omniglot queries: K per class, as the paper's code trains.
    ProfileConfig("omniglot-5w1s", "Omniglot 5-way 1-shot", 32, 1, 0.4, ways=5, shots=1,
                  query=1, **_OMNIGLOT),
    ProfileConfig("omniglot-5w5s", "Omniglot 5-way 5-shot", 32, 1, 0.4, ways=5, shots=5,
                  query=5, **_OMNIGLOT),
    ProfileConfig("omniglot-20w1s", "Omniglot 20-way 1-shot", 16, 5, 0.1, ways=20, shots=1,
                  query=1, **_OMNIGLOT),
    ProfileConfig("omniglot-20w5s", "Omniglot 20-way 5-shot", 16, 5, 0.1, ways=20, shots=5,
                  query=5, **_OMNIGLOT),
    ProfileConfig("miniimagenet-5w1s", "MiniImagenet 5-way 1-shot", 4, 5, 0.01, ways=5,
                  shots=1, **_MINI),
    ProfileConfig("miniimagenet-5w5s", "MiniImagenet 5-way 5-shot", 2, 5, 0.01, ways=5,
                  shots=5, **_MINI),
]}
CONFIG_NAMES: tuple[str, ...] = tuple(CONFIGS)
