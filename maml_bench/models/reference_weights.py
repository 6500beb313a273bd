"""The MAML authors' released MiniImagenet model (cbfinn/maml's 5-way 1-shot checkpoint
`model59000`, as `weights.npz` under the data root's `maml-reference/miniimagenet-5w1s/`) as a
state dict of the suite's own Conv4 (`bn_scale=False`, 32 filters, max-pool, flattened head).

TensorFlow's layouts differ from PyTorch's: kernels are HWIO (PyTorch OIHW), and the head's 800
rows follow an NHWC flatten of the last 5 x 5 x 32 map, index (h * 5 + w) * 32 + c, where the
suite flattens NCHW, index c * 25 + h * 5 + w.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from maml_bench.errors import UserError

FOLDER = Path("maml-reference") / "miniimagenet-5w1s"
WEIGHTS_FILE = "weights.npz"
CHANNELS, MAP, WAYS = 32, 5, 5
#: TensorFlow variable -> (Conv4 parameter, TensorFlow shape)
NAMES = {
    **{f"model/conv{b + 1}": (f"features.{4 * b}.weight", (3, 3, 3 if b == 0 else CHANNELS,
                                                          CHANNELS)) for b in range(4)},
    **{f"model/Variable{'' if b == 0 else f'_{b}'}": (f"features.{4 * b}.bias", (CHANNELS,))
       for b in range(4)},
    **{f"model/{b}/beta": (f"features.{4 * b + 1}.bias", (CHANNELS,)) for b in range(4)},
    "model/w5": ("classifier.weight", (CHANNELS * MAP * MAP, WAYS)),
    "model/b5": ("classifier.bias", (WAYS,)),
}


def weights_path(data_root: Path) -> Path:
    return data_root / FOLDER / WEIGHTS_FILE


def read_reference(path: Path) -> dict[str, np.ndarray]:
    """The npz's arrays by TensorFlow name, checked: exactly NAMES, their shapes, finite float32.
    Loaded without pickles, so the file can hold nothing but arrays."""
    fix = (f"expected the MAML authors' model as {FOLDER / WEIGHTS_FILE} under the data root "
           "(--data-root or MAML_BENCH_DATA; see that folder's README)")
    if not path.is_file():
        raise UserError(f"no reference weights {path}: {fix}")
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"reference weights {path} are unreadable ({str(err)[:60]}): {fix}"
                        ) from None
    if set(arrays) != set(NAMES):
        odd = sorted(set(arrays) ^ set(NAMES))
        raise UserError(f"reference weights {path} do not hold the reference model's variables "
                        f"({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''} differ): {fix}")
    for name, (_, shape) in NAMES.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != np.float32 or not np.isfinite(array).all():
            raise UserError(f"reference weights {path}: {name} is {array.dtype} "
                            f"{array.shape}, not finite float32 {shape}: {fix}")
    return arrays


def conv4_state(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """TensorFlow's arrays as Conv4 parameters (names and layouts of the suite's network)."""
    state = {}
    for name, (ours, _) in NAMES.items():
        value = torch.from_numpy(arrays[name].copy())
        if name.startswith("model/conv"):
            value = value.permute(3, 2, 0, 1)  # HWIO -> OIHW
        elif name == "model/w5":
            # rows (h, w, c) of TensorFlow's NHWC flatten -> columns (c, h, w) of ours
            value = value.reshape(MAP, MAP, CHANNELS, WAYS).permute(3, 2, 0, 1).reshape(WAYS, -1)
        state[ours] = value.contiguous()
    return state
