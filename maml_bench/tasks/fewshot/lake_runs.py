"""Lake et al.'s 20 one-shot classification runs (Science 2015; `brendenlake/omniglot`,
`python/one-shot-classification/all_runs.zip`), read from the zip directly.

Each run `runNN/` is 20-way 1-shot within one evaluation alphabet: `training/classYY.png`
(one drawing per class), `test/itemXX.png` (20 drawings) and `class_labels.txt`, whose lines
"runNN/test/itemXX.png runNN/training/classYY.png" name each test drawing's class. Lake's demo
scores a run by the share of test drawings matched to their class; people get 95.5% over the
runs, BPL 96.7%. The drawings come from images_evaluation and are made into pool images by the
same function as the release's (`omniglot.drawing`), so a model sees them as its training data.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maml_bench.errors import UserError
from maml_bench.tasks.fewshot.omniglot import SOURCE_SIZE, drawing, unreadable_image_errors

FILE = "all_runs.zip"
RUNS = 20
WAYS = 20
LAYOUT = ("expected all_runs.zip (brendenlake/omniglot, python/one-shot-classification) holding "
          "runNN/training/classNN.png, runNN/test/itemNN.png and runNN/class_labels.txt; fetch it "
          "with `maml-bench data fetch omniglot`")


@dataclass(frozen=True)
class LakeRuns:
    """uint8 images as a pool holds them (strokes 255): support [runs, 20, 28, 28] (class i at
    position i, label i), query [runs, 20, 28, 28] with its labels [runs, 20]."""

    support: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def load_runs(root: Path, resize: str = "lanczos") -> LakeRuns:
    """The 20 runs from `root`/all_runs.zip, each image resized as `resize` (omniglot.RESIZES)."""
    from PIL import Image

    source = root / FILE
    if not source.is_file():
        raise UserError(f"{source} not found: {LAYOUT}")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{source} is not a readable zip ({err}); {LAYOUT}") from None

    def read(name: str) -> bytes:
        try:
            return archive.read(name)
        except KeyError:
            raise UserError(f"{source}: member {name} is missing; {LAYOUT}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise UserError(f"{source}: member {name} is damaged ({err}); fetch the zip "
                            "again") from None

    def image(name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(read(name))) as png:
                if png.size != (SOURCE_SIZE, SOURCE_SIZE):
                    raise UserError(f"{source}: {name} is {png.size[0]} x {png.size[1]}, not "
                                    f"{SOURCE_SIZE} x {SOURCE_SIZE}; {LAYOUT}")
                return drawing(png, resize)
        except unreadable_image_errors() as err:
            raise UserError(f"{source}: {name} is not a readable PNG ({err}); {LAYOUT}"
                            ) from None

    support, query, labels = [], [], []
    with archive:
        for run in range(1, RUNS + 1):
            folder = f"run{run:02d}/"
            classes = [f"{folder}training/class{i:02d}.png" for i in range(1, WAYS + 1)]
            answers = _answers(read(f"{folder}class_labels.txt"), folder, classes, source)
            support.append(np.stack([image(name) for name in classes]))
            items = sorted(answers)
            query.append(np.stack([image(name) for name in items]))
            labels.append(np.array([classes.index(answers[name]) for name in items]))
    return LakeRuns(np.stack(support), np.stack(query), np.stack(labels).astype(np.int64))


def _answers(blob: bytes, folder: str, classes: list[str], source: Path) -> dict[str, str]:
    """class_labels.txt as test drawing -> its class's training drawing (names in the zip)."""
    where = f"{source}: {folder}class_labels.txt"
    try:
        lines = blob.decode().split()
    except UnicodeDecodeError:
        raise UserError(f"{where} is not text; {LAYOUT}") from None
    if len(lines) != 2 * WAYS:
        raise UserError(f"{where} has {len(lines) // 2} answers, expected {WAYS}; {LAYOUT}")
    # Names are relative to the runs' folder (run01/test/item01.png) in the release.
    answers = {}
    for item, label in zip(lines[0::2], lines[1::2], strict=True):
        item, label = (n if n.startswith(folder) else folder + n for n in (item, label))
        if label not in classes or not item.startswith(f"{folder}test/") or item in answers:
            raise UserError(f"{where}: bad line {item} {label}; {LAYOUT}")
        answers[item] = label
    return answers
