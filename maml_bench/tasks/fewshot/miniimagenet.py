"""MiniImagenet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split: 64 train, 16
validation and 20 test classes of 600 images, 84 x 84 RGB, from either form it is shared in:

* csv: `images/*.jpg` (a folder, or `images.zip` holding that folder) with `train.csv`,
  `val.csv`, `test.csv` (`filename,label` rows such as `n0153282900000005.jpg,n01532829`).
  Decoded once and cached by a hash of the source files and the preprocessing. A copy of the
  original-size images (every one of them other than 84 x 84) is resized to 84 x 84 with PIL's
  Lanczos filter, as the MAML code's `proc_images.py`; one image of another size among 84 x 84
  ones is a damaged copy and refused.
* pickle: `mini-imagenet-cache-{train,val,test}.pkl`, each a dict with `image_data` (uint8
  N x 84 x 84 x 3) and `class_dict` (class name -> row indices). Already decoded: not cached.

Every split is a uint8 array [classes, images per class, 3, 84, 84], classes sorted by name. The
real counts are not required here (generated data has fewer); `maml-bench data check` compares.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import pickle
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maml_bench.errors import UserError
from maml_bench.results import file_mode
from maml_bench.tasks.fewshot.data_root import cache_dir

SPLITS = ("train", "val", "test")
REAL_CLASSES = {"train": 64, "val": 16, "test": 20}
REAL_IMAGES = 600
SIZE = 84
FORMS = ("csv", "pickle")
#: preprocessing -> its cache key part (bump one when its decoding changes). suite: Pillow's
#: decoder (libjpeg's accurate integer IDCT); reference: libjpeg's fast integer IDCT without
#: fancy upsampling, TensorFlow's decode_jpeg default, with which the reference code read them
#: (simplejpeg's fastdct=True, fastupsample=False reproduces it bit for bit; Pillow's pixels
#: differ from it by up to 23 levels)
PREPROCESSINGS = {"suite": "lanczos-84-v1", "reference": "libjpeg-ifast-84-v1"}
CSV_LAYOUT = ("images/ (or images.zip holding images/) with the JPEGs and train.csv, val.csv, "
              "test.csv with the header filename,label (rows like n0153282900000005.jpg,n01532829)")
PICKLE_LAYOUT = ("mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl, each a dict with "
                 "image_data (uint8 N x 84 x 84 x 3) and class_dict (class name -> row indices)")
LAYOUT = f"expected {CSV_LAYOUT}; or {PICKLE_LAYOUT}"


@dataclass(frozen=True)
class Split:
    """images: uint8 [classes, images per class, 3, 84, 84]; classes: their names, sorted."""

    images: np.ndarray
    classes: tuple[str, ...]


@dataclass
class SplitScan:
    """What reading one split's file found; `images` is None when a problem stops them (or when
    only checking). Problems name the file relative to the dataset folder."""

    split: str
    file: str
    classes: tuple[str, ...] = ()
    counts: tuple[int, ...] = ()  # images per class, in class order
    sizes: Counter = field(default_factory=Counter)  # (width, height) of the readable images
    problems: list[str] = field(default_factory=list)
    images: np.ndarray | None = None


class ImageSource:
    """The JPEGs of the csv form, by file name: the `images/` folder, else `images.zip`."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "images"
        self.zip_path = root / "images.zip"
        self.problem: str | None = None  # why no image can be read at all
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        if self.folder.is_dir():
            self.label = "images/"
        elif self.zip_path.is_file():
            self.label = "images.zip"
            try:
                self._zip = zipfile.ZipFile(self.zip_path)
            except (OSError, zipfile.BadZipFile, zlib.error, ValueError, EOFError) as err:
                self.problem = (f"images.zip is not a readable zip ({str(err)[:60]}): a "
                                "truncated or damaged copy; fetch it again")
                return
            self._members = {i.filename[len("images/"):]: i for i in self._zip.infolist()
                             if i.filename.startswith("images/") and not i.is_dir()}
            if not self._members:
                self.problem = "images.zip holds no images/ folder of JPEGs"
        else:
            self.label = "images/"
            self.problem = "images/ (the folder of the JPEGs the CSVs name) is missing"

    def has(self, name: str) -> bool:
        if self._zip is not None:
            return name in self._members
        return (self.folder / name).is_file()

    def read(self, name: str) -> bytes:
        """The file's bytes; a damaged zip member raises OSError."""
        if self._zip is None:
            return (self.folder / name).read_bytes()
        try:
            return self._zip.read(self._members[name])
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
            raise OSError(f"damaged in images.zip ({str(err)[:50]})") from None

    def fingerprint(self) -> Iterator[bytes]:
        """What identifies the images: names, sizes and times of the folder's files; names,
        CRCs and sizes of the zip's members (a copy of the zip keeps its key)."""
        if self._zip is not None:
            for name in sorted(self._members):
                info = self._members[name]
                yield f"{name}:{info.CRC}:{info.file_size}\n".encode()
            return
        with os.scandir(self.folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                stat = entry.stat()
                yield f"{entry.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _images_readable(root: Path) -> bool:
    source = ImageSource(root)
    source.close()
    return source.problem is None


def csv_name(split: str) -> str:
    return f"{split}.csv"


def pickle_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def present_forms(root: Path) -> list[str]:
    """The forms with at least one of their files in `root`."""
    found = []
    if ((root / "images").exists() or (root / "images.zip").exists()
            or any((root / csv_name(s)).exists() for s in SPLITS)):
        found.append("csv")
    if any((root / pickle_name(s)).exists() for s in SPLITS):
        found.append("pickle")
    return found


def _examples(items: list[str]) -> str:
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


def _check_counts(scan: SplitScan) -> None:
    """A split is one array, so every class needs the same number of images."""
    if not scan.classes:
        scan.problems.append(f"{scan.file} lists no classes")
        return
    usual = Counter(scan.counts).most_common(1)[0][0]
    odd = [f"{c}: {n}" for c, n in zip(scan.classes, scan.counts, strict=True) if n != usual]
    if odd:
        scan.problems.append(f"{scan.file}: {len(odd)} classes do not have {usual} images like "
                             f"the others ({_examples(odd)})")
    elif usual == 0:
        scan.problems.append(f"{scan.file}: its classes have no images")


def _read_csv(root: Path, scan: SplitScan) -> dict[str, list[str]] | None:
    """class -> image file names in row order, or None with the problem recorded."""
    path = root / scan.file
    if not path.is_file():
        scan.problems.append(f"{scan.file} is missing")
        return None
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        scan.problems.append(f"{scan.file} is not a readable CSV ({err})")
        return None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        head = ",".join(rows[0])[:60] if rows else "an empty file"
        scan.problems.append(f"{scan.file} does not start with the header filename,label "
                             f"(found {head!r})")
        return None
    by_class: dict[str, list[str]] = {}
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        name, label = row if len(row) == 2 else ("", "")
        if not name or not label or "/" in name or "\\" in name:
            scan.problems.append(f"{scan.file} line {number} is not filename,label: "
                                 f"{','.join(row)[:60]!r}")
            return None
        if name in seen:
            scan.problems.append(f"{scan.file} line {number} repeats {name}")
            return None
        seen.add(name)
        by_class.setdefault(label, []).append(name)
    return by_class


def _decode(data: bytes, preprocessing: str = "suite") -> tuple[np.ndarray, tuple[int, int]]:
    """RGB [3, 84, 84] and the source size. Grey and CMYK JPEGs (ImageNet has some) become RGB;
    other sizes are resized with Lanczos, as the MAML code's proc_images.py."""
    from PIL import Image

    if preprocessing == "reference":
        import simplejpeg

        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True,
                                            fastupsample=False)
        except ValueError as err:  # simplejpeg's error for a file libjpeg cannot decode
            raise OSError(str(err)) from None
        rgb = Image.fromarray(pixels)
        size = rgb.size
    else:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
            rgb = image.convert("RGB")  # decodes the whole file: a truncated one fails here
    if rgb.size != (SIZE, SIZE):
        rgb = rgb.resize((SIZE, SIZE), resample=Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1), size


def scan_csv(root: Path, split: str, keep: bool = True,
             source: ImageSource | None = None, progress: _DecodeProgress | None = None,
             preprocessing: str = "suite") -> SplitScan:
    """Read one split of the csv form: the CSV, then every JPEG it names."""
    from PIL import Image

    scan = SplitScan(split, csv_name(split))
    by_class = _read_csv(root, scan)
    if by_class is None:
        return scan
    scan.classes = tuple(sorted(by_class))
    scan.counts = tuple(len(by_class[c]) for c in scan.classes)
    _check_counts(scan)
    if source is None or source.problem:  # no images at all: reported once by scan()
        return scan
    uniform = not scan.problems
    out = (np.empty((len(scan.classes), scan.counts[0], 3, SIZE, SIZE), dtype=np.uint8)
           if keep and uniform else None)
    missing: list[str] = []
    unreadable: list[str] = []
    other_size: list[str] = []
    for c, name in enumerate(scan.classes):
        for i, file in enumerate(by_class[name]):
            if progress is not None:
                progress.step()
            if not source.has(file):
                missing.append(file)
                continue
            try:
                pixels, size = _decode(source.read(file), preprocessing)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                unreadable.append(f"{file}: {str(err)[:60]}")
                continue
            scan.sizes[size] += 1
            if size != (SIZE, SIZE):
                other_size.append(f"{file} is {size[0]} x {size[1]}")
            if out is not None:
                out[c, i] = pixels
    if missing:
        scan.problems.append(f"{scan.file}: {len(missing)} rows name images missing from "
                             f"{source.label} ({_examples(missing)})")
    if unreadable:
        scan.problems.append(f"{scan.file}: {len(unreadable)} unreadable JPEGs in "
                             f"{source.label} ({_examples(unreadable)})")
    if other_size and scan.sizes[(SIZE, SIZE)]:
        # 84 x 84 images beside others: not a copy of the originals (resized as a whole) but a
        # damaged or mixed one, which training would silently blur
        scan.problems.append(f"{scan.file}: {len(other_size)} images in {source.label} are not "
                             f"{SIZE} x {SIZE} like the others ({_examples(other_size)}); "
                             "replace them from a good copy")
    if not scan.problems:
        scan.images = out
    return scan


class _DecodeProgress:
    """Decoding 60,000 JPEGs takes a minute or more: a bar on a terminal, lines in a log."""

    def __init__(self, total: int, label: str) -> None:
        from maml_bench.progress import IterationProgress, terminal

        self.done = 0
        self.bar = IterationProgress(f"decoding MiniImagenet {label}", total, 0,
                                     "bar" if terminal() else "lines", unit="image")

    def step(self) -> None:
        self.done += 1
        self.bar.update(self.done)

    def close(self) -> None:
        self.bar.close(finished=False)


class _ArrayUnpickler(pickle.Unpickler):
    """Only what a dict of numpy arrays and lists needs: a pickle can run any code otherwise."""

    def find_class(self, module: str, name: str) -> object:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in (
                "_reconstruct", "scalar"):
            try:  # numpy 2 moved numpy.core to numpy._core
                return super().find_class("numpy._core.multiarray", name)
            except ImportError:
                return super().find_class("numpy.core.multiarray", name)
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, not only numpy arrays")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {' x '.join(map(str, value.shape))}"
    return type(value).__name__


def _read_pickle(root: Path, scan: SplitScan) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(image_data, class -> row indices), or None with the problem recorded."""
    path = root / scan.file
    if not path.is_file():
        scan.problems.append(f"{scan.file} is missing")
        return None
    try:
        with path.open("rb") as handle:
            # latin1: numpy arrays pickled by Python 2 (older copies of these files)
            data = _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as err:  # a malformed pickle can fail in many ways; all mean the same
        scan.problems.append(f"{scan.file} is not a readable pickle ({type(err).__name__}: "
                             f"{str(err)[:80]})")
        return None
    keys = ("image_data", "class_dict")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        lacking = [k for k in keys if not isinstance(data, dict) or k not in data]
        scan.problems.append(f"{scan.file} has no {' and no '.join(lacking)}")
        return None
    images, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
            and images.shape[1:] == (SIZE, SIZE, 3)):
        scan.problems.append(f"{scan.file}: image_data is {_describe(images)}, not uint8 "
                             f"N x {SIZE} x {SIZE} x 3")
        return None
    if not isinstance(class_dict, dict):
        scan.problems.append(f"{scan.file}: class_dict is a {type(class_dict).__name__}, not a "
                             "dict of class name -> row indices")
        return None
    rows: dict[str, np.ndarray] = {}
    for name, value in class_dict.items():
        try:
            index = np.asarray(value, dtype=np.int64)
        except (TypeError, ValueError):
            index = np.zeros((0, 0))
        if not isinstance(name, str) or index.ndim != 1:
            scan.problems.append(f"{scan.file}: class_dict[{name!r}] is not a list of row "
                                 "indices")
            return None
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            scan.problems.append(f"{scan.file}: class_dict[{name!r}] has rows outside "
                                 f"0..{len(images) - 1} of image_data")
            return None
        rows[name] = index
    used = np.concatenate(list(rows.values())) if rows else np.zeros(0)
    if len(np.unique(used)) != len(used):
        scan.problems.append(f"{scan.file}: class_dict gives some image_data rows to more "
                             "than one class (or twice to one)")
        return None
    return images, rows


def scan_pickle(root: Path, split: str, keep: bool = True) -> SplitScan:
    """Read one split of the pickle form."""
    scan = SplitScan(split, pickle_name(split))
    found = _read_pickle(root, scan)
    if found is None:
        return scan
    images, rows = found
    scan.classes = tuple(sorted(rows))
    scan.counts = tuple(len(rows[c]) for c in scan.classes)
    scan.sizes[(SIZE, SIZE)] = int(sum(scan.counts))
    _check_counts(scan)
    if keep and not scan.problems:
        out = np.empty((len(scan.classes), scan.counts[0], 3, SIZE, SIZE), dtype=np.uint8)
        for c, name in enumerate(scan.classes):
            out[c] = images[rows[name]].transpose(0, 3, 1, 2)
        scan.images = out
    return scan


def scan(root: Path, form: str, keep: bool = True, show_progress: bool = False,
         preprocessing: str = "suite") -> list[SplitScan]:
    """Every split of one form, with the problems across splits (a class in two splits)."""
    if form == "csv":
        source = ImageSource(root)
        progress = None
        if show_progress and not source.problem:
            rows = sum(max(0, len((root / csv_name(s)).read_text(errors="replace").splitlines())
                           - 1) for s in SPLITS if (root / csv_name(s)).is_file())
            progress = _DecodeProgress(rows, source.label)
        try:
            scans = [scan_csv(root, s, keep, source, progress, preprocessing) for s in SPLITS]
        finally:
            source.close()
            if progress is not None:
                progress.close()
        if source.problem:
            scans[0].problems.insert(0, source.problem)
    else:
        scans = [scan_pickle(root, s, keep) for s in SPLITS]
    owner: dict[str, str] = {}
    for item in scans:
        shared = sorted(c for c in item.classes if c in owner)
        if shared:
            item.problems.append(f"{item.file}: {len(shared)} classes are also in "
                                 f"{owner[shared[0]]} ({_examples(shared)}); splits share no "
                                 "class")
            item.images = None
        owner.update((c, item.file) for c in item.classes)
    return scans


def source_key(root: Path, preprocessing: str = "suite") -> str:
    """A hash of the CSVs' bytes, the JPEGs' names, sizes and times, and the preprocessing."""
    digest = hashlib.sha256(PREPROCESSINGS[preprocessing].encode())
    for split in SPLITS:
        path = root / csv_name(split)
        digest.update(path.read_bytes() if path.is_file() else b"-")
    source = ImageSource(root)
    try:
        digest.update(source.label.encode())
        for line in source.fingerprint():
            digest.update(line)
    finally:
        source.close()
    return digest.hexdigest()[:16]


def _load_cache(path: Path) -> dict[str, Split] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            return {s: Split(saved[s], tuple(saved[f"{s}_classes"].tolist())) for s in SPLITS}
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)  # a damaged cache is rebuilt from the source
        return None


def _save_cache(path: Path, splits: dict[str, Split]) -> None:
    """Uncompressed (the pixels barely compress) and atomic, through a temp file: the train
    split is about 800 MB, too large to hold twice in memory as bytes."""
    arrays: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        arrays[name] = split.images
        arrays[f"{name}_classes"] = np.array(split.classes)
    with contextlib.suppress(OSError):  # no writable cache: decode again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), file_mode())  # shared: readable as the umask allows
                np.savez(handle, **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def load_miniimagenet(root: Path, form: str | None = None, preprocessing: str = "suite"
                      ) -> dict[str, Split]:
    """The train, val and test splits from `root` in `form` (default: pickle when its files are
    there, as nothing needs decoding, else csv), from the cache when decoded before, with the
    JPEG decoder of `preprocessing` (PREPROCESSINGS; the pickles hold decoded pixels)."""
    hint = "point --data-root (or MAML_BENCH_DATA) at the folder holding miniimagenet/"
    if not root.is_dir():
        raise UserError(f"no MiniImagenet folder {root}: {LAYOUT}; {hint}")
    if form is None:
        found = present_forms(root)
        if not found:
            raise UserError(f"MiniImagenet not found in {root}: {LAYOUT}; {hint}")
        # the pickles hold decoded pixels: the reference's decoder needs the JPEGs
        prefer = "pickle" if preprocessing == "suite" else "csv"
        form = prefer if prefer in found else found[0]
    if form == "pickle" and preprocessing != "suite":
        raise UserError(f"preprocessing={preprocessing} decodes the JPEGs, and {root} holds "
                        "only the pickles (decoded already): give the csv form (images/ or "
                        "images.zip and the CSVs), or drop --set preprocessing")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    cache = None
    if form == "csv" and _images_readable(root):
        cache = cache_dir() / f"miniimagenet-{source_key(root, preprocessing)}.npz"
        cached = _load_cache(cache)
        if cached is not None:
            return cached
        logging.getLogger(__name__).info("decoding the MiniImagenet JPEGs in %s once (cached "
                                         "in %s)", root, cache)
    scans = scan(root, form, show_progress=cache is not None, preprocessing=preprocessing)
    problems = [p for item in scans for p in item.problems]
    if problems:
        more = (f" (and {len(problems) - 1} more problems: see `maml-bench data check "
                f"miniimagenet {root}`)" if len(problems) > 1 else "")
        layout = CSV_LAYOUT if form == "csv" else PICKLE_LAYOUT
        raise UserError(f"MiniImagenet in {root}: {problems[0]}{more}; expected {layout}")
    splits = {item.split: Split(item.images, item.classes) for item in scans}
    if cache is not None:
        _save_cache(cache, splits)
    return splits
