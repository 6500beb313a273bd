"""`maml-bench data check`: read every file of a dataset folder and compare it with the real
release, so a bad or partial copy is found before a run spends hours on it.

`expect="real"` requires the real release's counts; `expect="any"` only a well-formed dataset
(every file readable, the sizes the loader takes, equal images per class), e.g. a generated one.
Omniglot's loader takes only the real release's 1,623 characters, so check it with `real`.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from maml_bench.errors import UserError
from maml_bench.tasks.fewshot import miniimagenet as mini
from maml_bench.tasks.fewshot import omniglot

EXPECTS = ("real", "any")
DATASETS = ("omniglot", "miniimagenet")
#: The official Omniglot release: alphabets and characters per set.
OMNIGLOT_REAL = {"images_background": (30, 964), "images_evaluation": (20, 659)}


@dataclass
class Report:
    """lines: what was found (printed); problems: one line each, empty when the check passes."""

    title: str
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check(dataset: str, root: Path, expect: str = "real") -> Report:
    if dataset not in DATASETS or expect not in EXPECTS:
        raise ValueError(f"dataset must be one of {DATASETS} and expect one of {EXPECTS}")
    if not root.is_dir():
        raise UserError(f"no folder {root} to check; give the folder holding the {dataset} "
                        "files")
    return (check_omniglot if dataset == "omniglot" else check_miniimagenet)(root, expect)


def _sizes(sizes: Counter) -> str:
    if not sizes:
        return "none readable"
    shown = ", ".join(f"{w} x {h}: {n}" for (w, h), n in sizes.most_common(3))
    return shown + (f" and {len(sizes) - 3} other sizes" if len(sizes) > 3 else "")


def check_miniimagenet(root: Path, expect: str) -> Report:
    report = Report(f"MiniImagenet in {root}")
    forms = mini.present_forms(root)
    if not forms:
        report.problems.append(f"no MiniImagenet files: {mini.LAYOUT}")
    for form in forms:
        images = "images/" if (root / "images").is_dir() else "images.zip"
        files = (f"{images} + train.csv, val.csv, test.csv" if form == "csv" else
                 "mini-imagenet-cache-{train,val,test}.pkl")
        report.lines.append(f"{form} form ({files}):")
        scans = mini.scan(root, form, keep=False, show_progress=True)
        for item in scans:
            report.problems += [f"{form} form: {p}" for p in item.problems]
            if not item.classes:
                report.lines.append(f"  {item.split:<5} {item.file}: unreadable")
                continue
            counts = Counter(item.counts)
            per_class = " or ".join(str(n) for n in sorted(counts))
            report.lines.append(
                f"  {item.split:<5} {len(item.classes)} classes x {per_class} images (real "
                f"release: {mini.REAL_CLASSES[item.split]} x {mini.REAL_IMAGES}); image sizes "
                f"{_sizes(item.sizes)}")
            real = mini.REAL_CLASSES[item.split]
            if expect == "real" and (len(item.classes) != real or set(counts) != {
                    mini.REAL_IMAGES}):
                report.problems.append(f"{form} form: {item.file} has {len(item.classes)} "
                                       f"classes x {per_class} images, the real release {real} "
                                       f"x {mini.REAL_IMAGES}")
        resized = sum(n for item in scans for s, n in item.sizes.items()
                      if s != (mini.SIZE, mini.SIZE))
        if resized:
            report.lines.append(f"  {resized} images are not {mini.SIZE} x {mini.SIZE}: resized "
                                "with Lanczos on load, as the MAML code")
    return report


def _omniglot_source(root: Path, name: str) -> Path | None:
    for path in (root / name, root / f"{name}.zip"):
        if path.is_dir() or path.is_file():
            return path
    return None


def check_omniglot(root: Path, expect: str) -> Report:
    """Every PNG of both sets decoded (a few seconds), counted per alphabet and character."""
    from PIL import Image

    report = Report(f"Omniglot in {root}")
    drawings: dict[str, int] = {}
    sizes: Counter = Counter()
    unreadable: list[str] = []
    for name, (real_alphabets, real_characters) in OMNIGLOT_REAL.items():
        source = _omniglot_source(root, name)
        if source is None:
            report.problems.append(f"{name}.zip (or the folder {name}/) is missing: "
                                   f"{omniglot.LAYOUT}")
            continue
        characters: Counter = Counter()
        try:
            for rel, blob in omniglot._files(source):
                try:
                    with Image.open(io.BytesIO(blob)) as image:
                        image.load()
                        sizes[image.size] += 1
                except omniglot.unreadable_image_errors() as err:
                    unreadable.append(f"{name}/{rel} ({str(err)[:50]})")
                characters[rel.rsplit("/", 1)[0]] += 1
        except UserError as err:  # not a readable zip
            report.problems.append(str(err).split("; ")[0])
            continue
        alphabets = {c.split("/")[0] for c in characters}
        drawings.update((f"{name}/{c}", n) for c, n in characters.items())
        report.lines.append(f"  {name} ({'folder' if source.is_dir() else 'zip'}): "
                            f"{len(alphabets)} alphabets, {len(characters)} characters (real "
                            f"release: {real_alphabets}, {real_characters})")
        if expect == "real" and (len(alphabets), len(characters)) != (real_alphabets,
                                                                        real_characters):
            report.problems.append(f"{name} has {len(alphabets)} alphabets and "
                                   f"{len(characters)} characters, the real release "
                                   f"{real_alphabets} and {real_characters}")
    counts = Counter(drawings.values())
    report.lines.append("  drawings per character: " + ", ".join(
        f"{n}: {k} characters" for n, k in sorted(counts.items())) + f" (real release: "
        f"{omniglot.DRAWINGS})")
    report.lines.append(f"  image sizes: {_sizes(sizes)} (real release: {omniglot.SOURCE_SIZE}"
                        f" x {omniglot.SOURCE_SIZE}); unreadable files: {len(unreadable)}")
    # The loader takes only the real layout: these are problems whatever `expect` says.
    odd = sorted(c for c, n in drawings.items() if n != omniglot.DRAWINGS)
    if odd:
        report.problems.append(f"{len(odd)} characters do not have {omniglot.DRAWINGS} drawings "
                               f"(e.g. {odd[0]}: {drawings[odd[0]]})")
    other = [s for s in sizes if s != (omniglot.SOURCE_SIZE, omniglot.SOURCE_SIZE)]
    if other:
        report.problems.append(f"{sum(sizes[s] for s in other)} images are not "
                               f"{omniglot.SOURCE_SIZE} x {omniglot.SOURCE_SIZE} (e.g. "
                               f"{other[0][0]} x {other[0][1]})")
    if unreadable:
        report.problems.append(f"{len(unreadable)} unreadable PNGs ({', '.join(unreadable[:3])})")
    return report
