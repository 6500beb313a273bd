"""Lake et al.'s 20 one-shot runs (all_runs.zip) as a held-out test: the reader, the background
split, the runs' images made as the pools' are, one-line errors, and the experiment end to end."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from maml_bench.errors import UserError
from maml_bench.tasks.fewshot.data_root import data_root

OMNIGLOT_ROOT = data_root() / "omniglot"
needs_runs = pytest.mark.skipif(
    not (OMNIGLOT_ROOT / "all_runs.zip").is_file()
    or not (OMNIGLOT_ROOT / "images_evaluation.zip").is_file(),
    reason=f"real Omniglot not found at {OMNIGLOT_ROOT}: put images_background.zip, "
           "images_evaluation.zip and all_runs.zip there (or set MAML_BENCH_DATA to a folder "
           "holding omniglot/)")
EXPERIMENT = "omniglot-20w1s-lake-v1"


@pytest.fixture(scope="module")
def runs():
    from maml_bench.tasks.fewshot.lake_runs import load_runs

    return load_runs(OMNIGLOT_ROOT)


@pytest.fixture(scope="module")
def omniglot():
    from maml_bench.tasks.fewshot.omniglot import load_omniglot

    return load_omniglot(OMNIGLOT_ROOT)


@needs_runs
def test_twenty_runs_of_twenty_training_and_twenty_test_drawings(runs):
    assert runs.support.shape == (20, 20, 28, 28) and runs.query.shape == (20, 20, 28, 28)
    assert runs.support.dtype == np.uint8 and runs.query_labels.shape == (20, 20)
    for labels in runs.query_labels:  # one test drawing per class
        assert sorted(labels.tolist()) == list(range(20))
    # strokes bright on a dark background, as the pools
    assert runs.support.mean() < 60 and runs.support.max() == 255
    # run01's answers as class_labels.txt states them
    with zipfile.ZipFile(OMNIGLOT_ROOT / "all_runs.zip") as archive:
        first = archive.read("run01/class_labels.txt").decode().split()
    assert first[:2] == ["run01/test/item01.png", "run01/training/class08.png"]
    assert runs.query_labels[0, 0] == 7


@needs_runs
def test_the_background_split_holds_no_evaluation_character(omniglot):
    from maml_bench.tasks.fewshot.omniglot import background_split

    split = background_split(omniglot.names)
    assert {k: len(v) for k, v in split.items()} == {"train": 845, "val": 119, "test": 659}
    for part in ("train", "val"):
        assert all(omniglot.names[i].startswith("images_background/") for i in split[part])
    assert all(omniglot.names[i].startswith("images_evaluation/") for i in split["test"])
    alphabet = {part: {omniglot.names[i].split("/")[1] for i in index}
                for part, index in split.items()}
    assert not alphabet["train"] & alphabet["val"]  # validation: whole new alphabets
    assert len(alphabet["val"]) == 4 and len(alphabet["train"]) == 26


def _member(archive: zipfile.ZipFile, name: str, drawing: int) -> str:
    """The zip member of pool image `drawing` of character `name` ('set/alphabet/character'):
    `omniglot.preprocess` keeps a character's PNGs in sorted order."""
    folder = name + "/"
    return sorted(n for n in archive.namelist() if n.startswith(folder) and n.endswith(".png")
                  )[drawing]


@needs_runs
def test_run_drawings_are_the_release_drawings_made_the_same_way(runs, omniglot):
    """Each run drawing, processed by the reader, equals a pool image of images_evaluation,
    and that drawing's 105 x 105 pixels in the release equal the run's PNG: the same drawing
    through the same function (`omniglot.drawing`), for both preprocessings."""
    from PIL import Image

    from maml_bench.tasks.fewshot.lake_runs import load_runs
    from maml_bench.tasks.fewshot.omniglot import drawing

    evaluation = [i for i, n in enumerate(omniglot.names) if n.startswith("images_evaluation/")]
    pool = omniglot.images[evaluation]  # [659, 20, 28, 28]
    checks = [(0, "training", c) for c in range(20)] + [(0, "test", q) for q in range(20)] + [
        (r, "training", 0) for r in range(1, 20)]
    reference = load_runs(OMNIGLOT_ROOT, "reference")
    alphabets = set()
    with zipfile.ZipFile(OMNIGLOT_ROOT / "all_runs.zip") as lake, \
            zipfile.ZipFile(OMNIGLOT_ROOT / "images_evaluation.zip") as release:
        for run, part, i in checks:
            ours = (runs.support if part == "training" else runs.query)[run, i]
            hits = np.argwhere((pool == ours).all(axis=(2, 3)))
            assert len(hits) == 1, f"run {run + 1} {part} {i + 1}: {len(hits)} matches"
            character, index = hits[0]
            name = omniglot.names[evaluation[character]]
            if run == 0:
                alphabets.add(name.split("/")[1])
            png = (f"run{run + 1:02d}/training/class{i + 1:02d}.png" if part == "training"
                   else _answer_item(runs, run, i))
            with Image.open(io.BytesIO(lake.read(png))) as a, \
                    Image.open(io.BytesIO(release.read(_member(release, name, index)))) as b:
                assert np.array_equal(np.asarray(a.convert("L")), np.asarray(b.convert("L")))
                assert np.array_equal(drawing(b, "reference"),
                                      (reference.support if part == "training"
                                       else reference.query)[run, i])
    assert len(alphabets) == 1  # a run is within one alphabet


def _answer_item(runs, run: int, i: int) -> str:
    return f"run{run + 1:02d}/test/item{i + 1:02d}.png"  # query i is item i + 1 (sorted)


def _copy_without(tmp_path, skip: str, damage: str | None = None,
                  replace: dict[str, bytes] | None = None):
    source = OMNIGLOT_ROOT / "all_runs.zip"
    root = tmp_path / "omniglot"
    root.mkdir()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(root / "all_runs.zip", "w") as new:
        for info in old.infolist():
            if info.filename != skip:
                new.writestr(info, (replace or {}).get(info.filename)
                             or old.read(info.filename))
    if damage:  # flip bytes inside one member's compressed data
        data = bytearray((root / "all_runs.zip").read_bytes())
        with zipfile.ZipFile(root / "all_runs.zip") as z:
            info = z.getinfo(damage)
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for k in range(start, start + info.compress_size):
            data[k] ^= 0x55
        (root / "all_runs.zip").write_bytes(bytes(data))
    return root


@needs_runs
@pytest.mark.parametrize(("skip", "damage", "named"), [
    ("run03/test/item07.png", None, "run03/test/item07.png"),
    ("", "run05/class_labels.txt", "run05/class_labels.txt"),
    ("", "run02/training/class04.png", "run02/training/class04.png"),
])
def test_a_damaged_or_incomplete_zip_is_one_line_naming_it(tmp_path, skip, damage, named):
    from maml_bench.tasks.fewshot.lake_runs import load_runs

    root = _copy_without(tmp_path, skip, damage)
    with pytest.raises(UserError) as err:
        load_runs(root)
    assert "\n" not in str(err.value) and named in str(err.value)
    (root / "all_runs.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="all_runs.zip is not a readable zip"):
        load_runs(root)
    (root / "all_runs.zip").unlink()
    with pytest.raises(UserError, match="all_runs.zip not found") as err:
        load_runs(root)
    assert "\n" not in str(err.value)


def test_lake_runs_are_refused_off_their_protocol():
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.tasks.fewshot.episodes import FewShotConfig

    config = EXPERIMENTS.get(EXPERIMENT).config
    config.validate()
    for bad in ({"split": "maml"}, {"ways": 5}, {"eval_shots": (5,)}, {"test_tasks": 21},
                {"test_query": 2}):
        with pytest.raises(UserError, match="for test_set=lake-runs"):
            FewShotConfig(**{**config.__dict__, **bad}).validate()


@needs_runs
def test_the_experiment_tests_on_the_twenty_runs_end_to_end(tmp_path, runs):
    import pandas as pd
    import torch

    from maml_bench.report.experiment import build_tables
    from maml_bench.runner import execute, plan_runs
    from maml_bench.tasks.fewshot.episodes import FewShot

    (run,) = plan_runs(EXPERIMENT, "tiny", [], ["fomaml"], None, tmp_path)
    batch = FewShot(run.config).eval_sets("test")[1]
    assert torch.equal((batch.x_support[:, :, 0] * 255).round().byte(),
                       torch.from_numpy(runs.support))
    assert torch.equal(batch.y_query, torch.from_numpy(runs.query_labels))
    directory = execute(run, progress=False)
    records = pd.read_csv(directory / "records.csv.gz")
    assert sorted(records["task"].unique()) == list(range(20))
    assert len(records) == 20 * (run.config.eval_steps + 1)
    build_tables(EXPERIMENT, tmp_path)
    table = (tmp_path / EXPERIMENT / "tables" / "lake.md").read_text()
    assert "people (Lake et al. 2015" in table and "95.50" in table and "96.70" in table


@needs_runs
def test_a_missing_all_runs_zip_is_refused_before_training(tmp_path, monkeypatch):
    from maml_bench.preflight import check_runs
    from maml_bench.runner import plan_runs
    from maml_bench.tasks.fewshot import episodes, pools
    from maml_bench.tasks.fewshot.data_root import DATA_ENV

    root = tmp_path / "data" / "omniglot"
    root.mkdir(parents=True)
    for name in ("images_background.zip", "images_evaluation.zip"):
        (root / name).symlink_to(OMNIGLOT_ROOT / name)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    pools.load.cache_clear()
    try:
        runs = plan_runs(EXPERIMENT, "tiny", [], ["maml"], None, tmp_path / "out")
        with pytest.raises(UserError, match="all_runs.zip not found"):
            check_runs(runs)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))
    finally:
        pools.load.cache_clear()
        episodes._cached_episodes.cache_clear()


@needs_runs
@pytest.mark.parametrize("kind", ["short-header", "bomb"])
def test_a_damaged_png_in_an_intact_zip_is_one_line_naming_it(tmp_path, kind):
    from test_faults import _broken_pngs

    from maml_bench.tasks.fewshot.lake_runs import load_runs

    member = "run02/training/class04.png"
    root = _copy_without(tmp_path, "", replace={member: _broken_pngs()[kind]})
    with pytest.raises(UserError, match=f"{member} is not a readable PNG") as err:
        load_runs(root)
    assert "\n" not in str(err.value)
