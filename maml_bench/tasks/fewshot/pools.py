"""Class pools of each dataset split, loaded once per process: uint8 tensors
[classes, images per class, C, H, W] keyed by split name (train, val, test). Cached per
(dataset, split), not per data root: call `load.cache_clear()` after changing the root."""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from maml_bench.errors import UserError
from maml_bench.tasks.fewshot.data_root import data_root


@cache
def load(dataset: str, split: str, preprocessing: str = "suite") -> dict[str, Tensor]:
    """`preprocessing`: suite | reference, the images as the reference code saw them (Omniglot:
    binary, nearest-resized; MiniImagenet: TensorFlow's JPEG decoder)."""
    root = data_root() / dataset
    if dataset == "omniglot":
        from maml_bench.tasks.fewshot.omniglot import SPLITS, load_omniglot, resize_of

        data = load_omniglot(root, resize_of(preprocessing))
        images = torch.from_numpy(data.images).unsqueeze(2)  # [characters, 20, 1, 28, 28]
        chosen = SPLITS[split](data.names)
        return {name: images[torch.from_numpy(index)] for name, index in chosen.items()}
    if dataset in ("miniimagenet", "miniimagenet-demo"):  # demo: generated, same formats
        from maml_bench.tasks.fewshot.miniimagenet import load_miniimagenet

        # "maml" for MiniImagenet is the Ravi & Larochelle split of its CSVs (or pickles).
        return {name: torch.from_numpy(split.images)  # [classes, images, 3, 84, 84]
                for name, split in load_miniimagenet(root, preprocessing=preprocessing).items()}
    raise UserError(f"dataset {dataset!r} has no loader yet")
