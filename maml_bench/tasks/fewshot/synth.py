"""Generated datasets in the real on-disk formats, for testing the loaders, checks and training
where the real data cannot be downloaded.

MiniImagenet: each class is a smooth two-colour grating with its own colours, orientation and
frequency; each image shifts the grating's phase and adds brightness jitter and pixel noise, so a
few-shot learner beats chance clearly but not trivially. Images go through JPEG once, and the
pickles hold the decoded JPEG pixels (as the real pickles), so both forms load to equal arrays.
"""

from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import numpy as np

from maml_bench.errors import UserError
from maml_bench.results import atomic_write_bytes
from maml_bench.tasks.fewshot.miniimagenet import SIZE, SPLITS, csv_name, pickle_name

FORMATS = ("csv", "pickle", "both")
JPEG_QUALITY = 90


def class_name(index: int) -> str:
    """An ImageNet-like id (n + 8 digits) that no real class has (real ids start n0 or n1)."""
    return f"n9{index:07d}"


def class_images(seed: int, index: int, count: int) -> np.ndarray:
    """`count` images [count, 84, 84, 3] uint8 of class `index`, the same for any split sizes."""
    rng = np.random.default_rng([seed, index])
    colours = rng.uniform(30, 225, size=(2, 3))
    angle = rng.uniform(0, np.pi)
    cycles = rng.uniform(1.5, 5.0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    along = x * np.cos(angle) + y * np.sin(angle)
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 1))
    wave = (np.cos(2 * np.pi * cycles * along + phase) + 1) / 2  # [count, 84, 84] in [0, 1]
    pixels = colours[0] + wave[..., None] * (colours[1] - colours[0])
    pixels += rng.uniform(-20, 20, size=(count, 1, 1, 1)) + rng.normal(0, 12, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _jpeg_round_trip(image: np.ndarray) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    blob = buffer.getvalue()
    with Image.open(io.BytesIO(blob)) as decoded:
        return blob, np.asarray(decoded.convert("RGB"), dtype=np.uint8)


def _targets(out: Path) -> list[Path]:
    return [out / "images", *(out / csv_name(s) for s in SPLITS),
            *(out / pickle_name(s) for s in SPLITS)]


def synth_miniimagenet(out: Path, classes_per_split: tuple[int, int, int] = (10, 5, 5),
                       images_per_class: int = 20, seed: int = 0, form: str = "both"
                       ) -> list[Path]:
    """Write a MiniImagenet-format dataset into the folder `out` (created by the caller); refuse
    a folder that already holds any of its files. Returns the files written (images/ as one)."""
    if form not in FORMATS:
        raise ValueError(f"form must be one of {FORMATS}, got {form!r}")
    taken = [p.name for p in _targets(out) if p.exists()]
    if taken:
        raise UserError(f"{out} already holds {', '.join(taken)}: synth writes a new dataset "
                        "only into a folder without one; give another DIR")
    written: list[Path] = []
    index = 0
    if form != "pickle":
        (out / "images").mkdir()
        written.append(out / "images")
    for split, classes in zip(SPLITS, classes_per_split, strict=True):
        rows: list[tuple[str, str]] = []
        decoded = np.empty((classes * images_per_class, SIZE, SIZE, 3), dtype=np.uint8)
        class_dict: dict[str, list[int]] = {}
        for _ in range(classes):
            name = class_name(index)
            start = len(rows)
            for j, image in enumerate(class_images(seed, index, images_per_class)):
                blob, decoded[start + j] = _jpeg_round_trip(image)
                file = f"{name}{j + 1:08d}.jpg"
                rows.append((file, name))
                if form != "pickle":
                    (out / "images" / file).write_bytes(blob)
            class_dict[name] = list(range(start, start + images_per_class))
            index += 1
        if form != "csv":
            payload = pickle.dumps({"image_data": decoded, "class_dict": class_dict},
                                   protocol=4)
            atomic_write_bytes(out / pickle_name(split), payload)
            written.append(out / pickle_name(split))
        if form != "pickle":
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(("filename", "label"))
            writer.writerows(rows)
            atomic_write_bytes(out / csv_name(split), text.getvalue().encode())
            written.append(out / csv_name(split))
    return written
