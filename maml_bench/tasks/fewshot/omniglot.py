"""Omniglot (Lake et al. 2015) from its official release: `images_background` and
`images_evaluation` (zips or the folders they unpack to), `<alphabet>/<character>/<id>_<nn>.png`,
105 x 105, 1-bit. Resized once to 28 x 28, cached as one uint8 array keyed by a hash of the
source files and the preprocessing, in either of two ways (`RESIZES`):

* reference: what the MAML reference code's `resize_images.py` got. It calls
  `Image.resize((28, 28), LANCZOS)` on the 1-bit PNGs, and Pillow resizes mode "1" images with
  NEAREST whatever filter is asked for, so its images are binary, each pixel the source pixel
  nearest its centre;
* lanczos: a true Lanczos resize of the greyscale image (grey edges), the suite's first reading
  of that script.

The MAML split (paper-protocol.md) shuffles the sorted list of all 1,623 characters with
Python's `random.seed(1)` (the reference code shuffled the file system's listing, which cannot be
recovered) and takes 1,100 for training, 100 for validation, 423 for test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maml_bench.errors import UserError
from maml_bench.results import atomic_write_bytes
from maml_bench.tasks.fewshot.data_root import cache_dir

SETS = ("images_background", "images_evaluation")
CHARACTERS = 1623
DRAWINGS = 20
SOURCE_SIZE = 105
SIZE = 28
#: resize -> its cache key part (bump one when its preprocessing changes)
RESIZES = {"lanczos": "lanczos-28-v1", "reference": "nearest-binary-28-v1"}
LAYOUT = ("expected images_background.zip and images_evaluation.zip (or the folders they unpack "
          "to) holding <alphabet>/<character>/<id>_<nn>.png, 105 x 105")


@dataclass(frozen=True)
class Omniglot:
    """images: uint8 [characters, 20, 28, 28] (strokes 255); names: 'set/alphabet/character'."""

    images: np.ndarray
    names: tuple[str, ...]


def _sources(root: Path) -> dict[str, Path]:
    found = {}
    for name in SETS:
        if (root / name).is_dir():
            found[name] = root / name
        elif (root / f"{name}.zip").is_file():
            found[name] = root / f"{name}.zip"
        else:
            raise UserError(f"Omniglot not found in {root}: {LAYOUT}; point --data-root (or "
                            "MAML_BENCH_DATA) at the folder holding omniglot/")
    return found


def _files(source: Path) -> Iterator[tuple[str, bytes]]:
    """(path relative to the set, png bytes) of every image of one set, sorted. Files that are
    not PNGs (a README, .DS_Store) are skipped; a PNG outside <alphabet>/<character>/ is
    refused, since it would be a drawing the loader cannot place."""
    if source.is_dir():
        for path in sorted(source.rglob("*.png")):
            rel = path.relative_to(source).as_posix()
            if rel.count("/") != 2:
                raise UserError(f"{path} is not at <alphabet>/<character>/<file>.png; move or "
                                f"delete it ({LAYOUT})")
            try:
                blob = path.read_bytes()
            except OSError as err:
                raise UserError(f"cannot read {path} ({err.strerror}); {LAYOUT}") from None
            yield rel, blob
        return
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{source} is not a readable zip ({err}); {LAYOUT}") from None
    with archive:
        # Members sit under the set's folder (images_background/...) in the release's zips.
        top = source.stem + "/"
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for name in names:
            rel = (name[len(top):] if name.startswith(top)
                   else "/".join(name.split("/")[-3:]))  # some other wrapper folder
            if rel.count("/") != 2:
                raise UserError(f"{source}: member {name} is not at <alphabet>/<character>/"
                                f"<file>.png; {LAYOUT}")
            try:
                blob = archive.read(name)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise UserError(f"{source}: member {name} is damaged ({err}); fetch the zip "
                                "again") from None
            yield rel, blob


def source_key(root: Path, resize: str = "lanczos") -> str:
    """A hash of the source files (names and sizes, or the zips' bytes) and the preprocessing."""
    digest = hashlib.sha256(RESIZES[resize].encode())
    for name, source in sorted(_sources(root).items()):
        digest.update(name.encode())
        if source.is_dir():
            for path in sorted(source.glob("*/*/*.png")):
                digest.update(f"{path.relative_to(source)}:{path.stat().st_size}".encode())
        else:
            digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()[:16]


def load_omniglot(root: Path, resize: str = "lanczos") -> Omniglot:
    """All 1,623 characters at 28 x 28, from the cache or preprocessed once."""
    if not root.is_dir():
        raise UserError(f"no Omniglot folder {root}: {LAYOUT}; point --data-root (or "
                        "MAML_BENCH_DATA) at the folder holding omniglot/")
    cache = cache_dir() / f"omniglot-{source_key(root, resize)}.npz"
    if cache.exists():
        try:
            with np.load(cache) as saved:
                return Omniglot(saved["images"], tuple(saved["names"].tolist()))
        except (OSError, ValueError, KeyError):
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt from the source
    data = preprocess(root, resize)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=data.images, names=np.array(data.names))
    with contextlib.suppress(OSError):  # no writable cache: preprocess again next time
        atomic_write_bytes(cache, buffer.getvalue())
    return data


def reference_resize(image: Any) -> np.ndarray:
    """A 105 x 105 PIL image as the reference code's resize left it: binary (0 or 255), each
    pixel the source pixel nearest its centre (Pillow's NEAREST sampling: source index
    floor((i + 0.5) * 105 / 28)), written out so that the test can hold Pillow to it."""
    pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    binary = np.where(pixels >= 128, 255, 0).astype(np.uint8)
    index = ((np.arange(SIZE) + 0.5) * (SOURCE_SIZE / SIZE)).astype(np.int64)
    return binary[np.ix_(index, index)]


def unreadable_image_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises on a damaged or hostile image file: OSError (unidentified, truncated),
    ValueError and SyntaxError (a broken header or chunk), DecompressionBombError."""
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def drawing(image: Any, resize: str = "lanczos") -> np.ndarray:
    """One 105 x 105 PIL image as a pool holds it: uint8 [28, 28], resized (`RESIZES`) and
    inverted, strokes 255 on a background of 0 (the reference code reads 1 - value / 255). Every
    Omniglot image the suite uses goes through this, the release's and Lake's one-shot runs'."""
    from PIL import Image

    small = (reference_resize(image) if resize == "reference" else
             image.convert("L").resize((SIZE, SIZE), resample=Image.LANCZOS))
    return 255 - np.asarray(small, dtype=np.uint8)


def resize_of(preprocessing: str) -> str:
    """The resize (`RESIZES`) of a few-shot config's `preprocessing` setting."""
    return "reference" if preprocessing == "reference" else "lanczos"


def preprocess(root: Path, resize: str = "lanczos") -> Omniglot:
    """Decode, check and resize every image (the slow path, whose result `load_omniglot`
    caches)."""
    from PIL import Image

    by_character: dict[str, list[np.ndarray]] = {}
    for set_name, source in _sources(root).items():
        for rel, blob in _files(source):
            alphabet, character, _ = rel.split("/")
            try:
                with Image.open(io.BytesIO(blob)) as image:
                    if image.size != (SOURCE_SIZE, SOURCE_SIZE):
                        raise UserError(f"{set_name}/{rel} is {image.size[0]} x {image.size[1]}, "
                                        f"not {SOURCE_SIZE} x {SOURCE_SIZE}; {LAYOUT}")
                    small = drawing(image, resize)
            except unreadable_image_errors() as err:
                raise UserError(f"{set_name}/{rel} is not a readable PNG ({err}); {LAYOUT}"
                                ) from None
            by_character.setdefault(f"{set_name}/{alphabet}/{character}", []).append(small)
    bad = {n: len(v) for n, v in by_character.items() if len(v) != DRAWINGS}
    if bad:
        name, count = next(iter(bad.items()))
        raise UserError(f"{len(bad)} characters do not have {DRAWINGS} drawings (e.g. {name}: "
                        f"{count}); {LAYOUT}")
    if len(by_character) != CHARACTERS:
        raise UserError(f"found {len(by_character)} characters, expected {CHARACTERS}; {LAYOUT}")
    names = tuple(sorted(by_character))
    images = np.stack([np.stack(by_character[n]) for n in names])
    return Omniglot(images, names)


def maml_split(names: tuple[str, ...], validation: int = 100, train: int = 1100
               ) -> dict[str, np.ndarray]:
    """Character indices of the MAML split: the sorted list shuffled with random.seed(1), as the
    reference code; the first `train` train, the next `validation` val, the rest test."""
    order = list(range(len(names)))
    random.Random(1).shuffle(order)
    return {"train": np.array(order[:train]), "val": np.array(order[train:train + validation]),
            "test": np.array(order[train + validation:])}


VINYALS_FILE = Path(__file__).parent / "splits" / "omniglot-vinyals.json"


def vinyals_split(names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Character indices of the split of Vinyals et al. (2016): 1,028 / 172 / 423 characters,
    from the lists later suites use (`splits/omniglot-vinyals.json`, named alphabet/character)."""
    import json

    index = {name.split("/", 1)[1]: i for i, name in enumerate(names)}  # drop the set folder
    lists = json.loads(VINYALS_FILE.read_text())
    missing = [c for split in ("train", "val", "test") for c in lists[split] if c not in index]
    if missing:
        raise UserError(f"{len(missing)} characters of the Vinyals split are not in this "
                        f"Omniglot (e.g. {missing[0]}); {LAYOUT}")
    return {split: np.array([index[c] for c in lists[split]]) for split in ("train", "val", "test")}


#: the background split's validation share: whole background alphabets, at least this many
#: characters (the MAML split's validation size)
BACKGROUND_VALIDATION = 100


def background_split(names: tuple[str, ...], validation: int = BACKGROUND_VALIDATION
                     ) -> dict[str, np.ndarray]:
    """Character indices of the background split, for Lake et al.'s one-shot runs (drawn
    within evaluation alphabets): train and val from images_background alone, test every
    character of images_evaluation. Validation takes whole background alphabets, the sorted 30
    shuffled with random.seed(1), in that order until it holds `validation` characters or more
    (4 alphabets, 119 characters: Cyrillic, Early_Aramaic, Hebrew, Sanskrit; 845 train), so
    that it measures new alphabets, as the runs do."""
    background = [i for i, n in enumerate(names) if n.startswith("images_background/")]
    alphabets = sorted({names[i].split("/")[1] for i in background})
    random.Random(1).shuffle(alphabets)
    held: set[str] = set()
    count = 0
    for alphabet in alphabets:
        if count >= validation:
            break
        held.add(alphabet)
        count += sum(names[i].split("/")[1] == alphabet for i in background)
    return {"train": np.array([i for i in background if names[i].split("/")[1] not in held]),
            "val": np.array([i for i in background if names[i].split("/")[1] in held]),
            "test": np.array([i for i, n in enumerate(names)
                              if n.startswith("images_evaluation/")])}


#: the `split` setting's values -> character indices of train, val and test
SPLITS = {"maml": maml_split, "vinyals": vinyals_split, "background": background_split}
