"""The paper's four-block convolutional network (Omniglot and MiniImagenet)."""

from __future__ import annotations

from torch import Tensor, nn


class Conv4(nn.Module):
    """4 x [conv 3x3, batch norm, ReLU, downsample] + linear head.

    Omniglot (paper): 64 channels, stride-2 convolutions instead of max-pooling, features averaged
    over space. MiniImagenet: 32 channels, 2x2 max-pooling, features flattened. Batch norm always
    uses the statistics of the current batch (track_running_stats=False), as the paper's code.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 5,
        channels: int = 64,
        image_size: int = 28,
        downsample: str = "stride",
        head: str = "mean",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "maxpool") or head not in ("mean", "flatten"):
            raise ValueError("downsample must be stride|maxpool and head mean|flatten")
        blocks: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            blocks += [
                nn.Conv2d(c_in, channels, 3, stride=stride, padding=1),
                nn.BatchNorm2d(channels, track_running_stats=False),
                nn.ReLU(),
            ]
            if downsample == "maxpool":
                blocks.append(nn.MaxPool2d(2))
                size = size // 2
            else:
                size = (size + 1) // 2
            c_in = channels
        self.features = nn.Sequential(*blocks)
        self.head = head
        n_features = channels if head == "mean" else channels * size * size
        self.classifier = nn.Linear(n_features, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = h.mean(dim=(-2, -1)) if self.head == "mean" else h.flatten(start_dim=-3)
        return self.classifier(h)
