"""The paper's four-block convolutional network (Omniglot and MiniImagenet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_bench.core import fused as fused_ops


class Conv4(nn.Module):
    """4 x [conv 3x3, batch norm, ReLU, downsample] + linear head.

    Omniglot (paper): 64 channels, stride-2 convolutions instead of max-pooling, features averaged
    over space. MiniImagenet: 32 channels, 2x2 max-pooling, features flattened. Batch norm always
    uses the statistics of the current batch (track_running_stats=False), as the paper's code.
    `bn_scale=False`, `bn_eps=1e-3`: the reference code's batch norm (TensorFlow's defaults: an
    offset beta, no scale gamma); `init="reference"`: its initialisation (Xavier-uniform kernels,
    zero biases; the head Xavier-uniform when flattened, N(0, 1) when averaged);
    `padding="tf-same"`: the reference code's TensorFlow 'SAME' padding, which for a stride-2
    convolution pads ceil-division style and puts the odd pixel after (28 -> 14 pads 0 before
    and 1 after; `same_pads`), where PyTorch's padding=1 pads 1 on both sides. At stride 1
    (max-pool networks) the two are the same, so only stride-2 convolutions change.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 5,
        channels: int = 64,
        image_size: int = 28,
        downsample: str = "stride",
        head: str = "mean",
        bn_scale: bool = True,
        bn_eps: float = 1e-5,
        init: str = "torch",
        padding: str = "torch",
    ) -> None:
        super().__init__()
        if downsample not in ("stride", "maxpool") or head not in ("mean", "flatten"):
            raise ValueError("downsample must be stride|maxpool and head mean|flatten")
        if init not in ("torch", "reference"):
            raise ValueError("init must be torch|reference")
        if padding not in ("torch", "tf-same"):
            raise ValueError("padding must be torch|tf-same")
        self.bn_eps = bn_eps
        self.padding = padding
        blocks: list[nn.Module] = []
        size, c_in = image_size, in_channels
        for _ in range(4):
            stride = 2 if downsample == "stride" else 1
            same = padding == "tf-same" and stride > 1  # stride 1: SAME pads 1 and 1 too
            blocks += [
                SameConv2d(c_in, channels, 3, stride=stride) if same
                else nn.Conv2d(c_in, channels, 3, stride=stride, padding=1),
                _batch_norm(channels, bn_scale, bn_eps),
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
        self.downsample = downsample
        n_features = channels if head == "mean" else channels * size * size
        self.classifier = nn.Linear(n_features, n_classes)
        # (conv, batch norm) parameter key prefixes per block, built once: hot path below.
        self._blocks = [(f"features.{i}", f"features.{i + 1}")
                        for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        if init == "reference":
            self._reference_init()

    def _reference_init(self) -> None:
        """The reference code's initialisers (its maml.py, construct_conv_weights): PyTorch's
        Xavier fans of an [out, in, 3, 3] kernel are TensorFlow's of its [3, 3, in, out] one."""
        with torch.no_grad():
            for module in self.features:
                if isinstance(module, nn.Conv2d):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
            if self.head == "flatten":
                nn.init.xavier_uniform_(self.classifier.weight)
            else:
                nn.init.normal_(self.classifier.weight, 0.0, 1.0)
            nn.init.zeros_(self.classifier.bias)

    @property
    def norm_keys(self) -> list[str]:
        """The batch-norm parameters' names (the reference code meta-learns but never adapts
        them: `adapt_norm=no`)."""
        return [k for k, _ in self.named_parameters() if any(
            k.startswith(f"{norm}.") for _, norm in self._blocks)]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embedding(x))

    def embedding(self, x: Tensor) -> Tensor:
        """[..., C, H, W] -> the features the head sees: the last block's output averaged over
        space (head="mean") or flattened (head="flatten")."""
        h = self.features(x)
        return h.mean(dim=(-2, -1)) if self.head == "mean" else h.flatten(start_dim=-3)

    def batched_features(self, params: Mapping[str, Tensor], x: Tensor,
                         fused: bool = False) -> Tensor:
        """params [T, ...] and x [T, N, C, H, W] -> features [T, N, F] before the classifier.

        Tasks become channel groups of one grouped convolution: x is laid out as
        [N, T * C, H, W] and task t's filters only see task t's channels (groups = T). Batch
        norm over (N, H, W) of each of the T * C channels is then exactly each task's own batch
        statistics, as in the per-task network. `fused`: the same values through
        `core.fused` (convolution, batch norm + ReLU with cheap second derivatives).
        """
        t, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, t * x.shape[2], *x.shape[3:])
        stride = 2 if self.downsample == "stride" else 1
        same = self.padding == "tf-same" and stride > 1
        pad = 0 if same else 1
        for conv, norm in self._blocks:
            if same:
                h = F.pad(h, same_padding(h.shape[-2:], 3, stride))
            weight = params[f"{conv}.weight"].reshape(-1, *params[f"{conv}.weight"].shape[2:])
            bias, beta = (params[k].reshape(-1) for k in (f"{conv}.bias", f"{norm}.bias"))
            gamma = params.get(f"{norm}.weight")  # None: no scale (the reference's), so 1
            gamma = torch.ones_like(beta) if gamma is None else gamma.reshape(-1)
            if fused:
                h = fused_ops.conv2d(h, weight, stride, pad, t) + bias.view(1, -1, 1, 1)
                h = fused_ops.batch_norm_relu(h, gamma, beta, eps=self.bn_eps)
            else:
                h = F.conv2d(h, weight, bias, stride=stride, padding=pad, groups=t)
                h = torch.relu(F.batch_norm(h, None, None, gamma, beta, training=True,
                                            eps=self.bn_eps))
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        h = h.view(n, t, -1, *h.shape[2:])  # [N, T, C, H', W']
        h = h.mean(dim=(-2, -1)) if self.head == "mean" else h.flatten(start_dim=2)
        return h.transpose(0, 1)

    def batched_forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """params [T, ...] and x [T, N, C, H, W] -> logits [T, N, classes], all tasks at once
        (see `batched_features`)."""
        return self._classify(params, self.batched_features(params, x))

    def fused_forward(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """`batched_forward` through `core.fused`: the same values, second derivatives without
        PyTorch's per-group convolution and batch-norm double backwards (the `fused` backend)."""
        return self._classify(params, self.batched_features(params, x, fused=True))

    def _classify(self, params: Mapping[str, Tensor], h: Tensor) -> Tensor:
        weight, bias = params["classifier.weight"], params["classifier.bias"]
        return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one dimension: (before, after). The output has
    ceil(size / stride) positions; the total padding that needs is split with the odd pixel
    after: 28 -> 14 at stride 2 with a 3-wide kernel pads (0, 1), 7 -> 4 pads (1, 1)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_padding(hw: Sequence[int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """`F.pad`'s (left, right, top, bottom) for TensorFlow's 'SAME' on an [..., H, W] input."""
    return (*same_pads(int(hw[1]), kernel, stride), *same_pads(int(hw[0]), kernel, stride))


class SameConv2d(nn.Conv2d):
    """A square-kernel convolution with TensorFlow's 'SAME' padding (`same_padding`), padded
    explicitly and convolved with padding 0. A Conv2d, so its parameters keep the names
    `weight` and `bias` where an nn.Conv2d stood (checkpoints load either way)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int
                 ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, same_padding(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return self._conv_forward(x, self.weight, self.bias)


def keep_running_statistics(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """Batch norm as Torch's SpatialBatchNormalization (Ravi & Larochelle's baselines): in
    training mode each batch is normalised by its own statistics, which also update running
    averages (`momentum` 0.1, the variance unbiased); in evaluation mode the averages are used.
    The suite's Conv4 otherwise always uses the current batch's statistics. In place, before an
    optimizer is made (the parameters stay the same objects)."""
    for module in model.modules():
        if isinstance(module, OffsetBatchNorm2d):
            raise ValueError("running statistics need batch norm with a learned scale "
                             "(bn_scale=learned)")
        if isinstance(module, nn.BatchNorm2d):
            like = module.bias
            module.momentum = momentum
            module.track_running_stats = True
            module.register_buffer("running_mean", torch.zeros_like(like, requires_grad=False))
            module.register_buffer("running_var", torch.ones_like(like, requires_grad=False))
            module.register_buffer("num_batches_tracked",
                                   torch.tensor(0, dtype=torch.long, device=like.device))
    return model


def _batch_norm(channels: int, scale: bool, eps: float) -> nn.Module:
    """Batch statistics always; without `scale` only the offset is a parameter."""
    if scale:
        return nn.BatchNorm2d(channels, eps=eps, track_running_stats=False)
    return OffsetBatchNorm2d(channels, eps)


class OffsetBatchNorm2d(nn.Module):
    """Batch norm with an offset (`bias`) and no scale, TensorFlow's batch_norm(scale=False),
    with the statistics of the current batch. The scale handed to F.batch_norm is a constant
    1, not None: PyTorch's batch-norm double backward fails with no weight and a bias that
    requires grad (second order through adapted offsets, as Meta-SGD's)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("unit_scale", torch.ones(channels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, None, None, self.unit_scale, self.bias, training=True,
                            eps=self.eps)
