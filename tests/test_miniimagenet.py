"""MiniImagenet from its two real on-disk forms, proven on generated data in exactly those forms
(the real set cannot be downloaded here): equal arrays from both, the cache, one-line errors for
broken copies, and N-way K-shot episodes of the benchmark."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.tasks.fewshot import pools
from maml_bench.tasks.fewshot.data_root import DATA_ENV
from maml_bench.tasks.fewshot.miniimagenet import SPLITS, load_miniimagenet, scan
from maml_bench.tasks.fewshot.synth import synth_miniimagenet


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """One generated set per form (default sizes: 10/5/5 classes of 20 images), made once."""
    base = tmp_path_factory.mktemp("generated")
    roots = {}
    for form in ("csv", "pickle", "both"):
        roots[form] = base / form / "miniimagenet"
        roots[form].mkdir(parents=True)
        synth_miniimagenet(roots[form], form=form)
    return roots


@pytest.fixture(autouse=True)
def _private_cache(private_cache):
    """Every test here: decoded copies in a temporary cache (conftest.py)."""


def copy_of(generated: dict[str, Path], form: str, tmp_path: Path) -> Path:
    """A copy of one generated form; "zip": the csv form with images/ zipped as images.zip."""
    root = tmp_path / "data" / "miniimagenet"
    shutil.copytree(generated["csv" if form == "zip" else form], root)
    if form == "zip":
        zip_images(root)
    return root


def zip_images(root: Path) -> None:
    """images/ -> images.zip holding images/<name>.jpg, as the shared copy is laid out."""
    with zipfile.ZipFile(root / "images.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images/", "")
        for image in sorted((root / "images").iterdir()):
            archive.write(image, f"images/{image.name}")
    shutil.rmtree(root / "images")


def _zip_member_damaged(root: Path) -> None:
    """Flip bytes inside the first member's data: its CRC no longer matches."""
    path = root / "images.zip"
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("images/" + _first_name(root))
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 20
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    path.write_bytes(bytes(data))


def _zip_without_first(root: Path) -> None:
    path = root / "images.zip"
    name = "images/" + _first_name(root)
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(root / "new.zip", "w") as new:
        for info in old.infolist():
            if info.filename != name:
                new.writestr(info, old.read(info))
    (root / "new.zip").replace(path)


def _first_name(root: Path) -> str:
    return (root / "val.csv").read_text().splitlines()[1].split(",")[0]


def _one_image_resized(root: Path) -> None:
    from PIL import Image

    Image.new("RGB", (500, 375), (200, 10, 10)).save(_first_image(root), format="JPEG")


def rewrite_pickle(root: Path, split: str, change) -> None:
    path = root / f"mini-imagenet-cache-{split}.pkl"
    data = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(change(data)))


class RunsCode:
    """A pickle of this runs eval(...) when loaded: the loader must refuse it unrun. (eval, not
    print: Ray, once imported by the engine tests, replaces builtins.print with its own.)"""

    def __reduce__(self):
        return (eval, ("print('a pickle ran code')",))


def _drop_row(root: Path, split: str) -> None:
    path = root / f"{split}.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + lines[2:]))  # the first class loses one image


def _first_image(root: Path) -> Path:
    return root / "images" / (root / "val.csv").read_text().splitlines()[1].split(",")[0]


#: (form, what breaks the copy, text the one-line message must hold)
BROKEN = {
    "missing-csv": ("csv", lambda r: (r / "val.csv").unlink(), "val.csv is missing"),
    "missing-images-folder": ("csv", lambda r: shutil.rmtree(r / "images"), "images/"),
    "bad-header": ("csv", lambda r: (r / "test.csv").write_text("file,class\na.jpg,n1\n"),
                   "test.csv does not start with the header filename,label"),
    "bad-row": ("csv", lambda r: (r / "test.csv").write_text("filename,label\na.jpg\n"),
                "test.csv line 2 is not filename,label"),
    "row-names-missing-image": ("csv", lambda r: _first_image(r).unlink(),
                                "val.csv: 1 rows name images missing from images/ (n9"),
    "truncated-jpeg": ("csv", lambda r: _first_image(r).write_bytes(
        _first_image(r).read_bytes()[:1500]), "val.csv: 1 unreadable JPEGs in images/ (n9"),
    "corrupt-jpeg": ("csv", lambda r: _first_image(r).write_bytes(b"not a jpeg" * 50),
                     "val.csv: 1 unreadable JPEGs"),
    "too-few-images": ("csv", lambda r: _drop_row(r, "train"),
                       "train.csv: 1 classes do not have 20 images like the others "
                       "(n90000000: 19)"),
    "image-of-another-size": ("csv", _one_image_resized,
                              "val.csv: 1 images in images/ are not 84 x 84 like the others (n9"),
    "truncated-zip": ("zip", lambda r: (r / "images.zip").write_bytes(
        (r / "images.zip").read_bytes()[:5000]), "images.zip is not a readable zip"),
    "html-instead-of-zip": ("zip", lambda r: (r / "images.zip").write_text(
        "<html>quota exceeded</html>"), "images.zip is not a readable zip"),
    "corrupt-zip-member": ("zip", _zip_member_damaged,
                           "val.csv: 1 unreadable JPEGs in images.zip (n9"),
    "row-names-image-missing-from-zip": ("zip", _zip_without_first,
                                         "val.csv: 1 rows name images missing from images.zip"),
    "class-in-two-splits": ("csv", lambda r: (r / "test.csv").write_text(
        (r / "test.csv").read_text().replace(",n90000015\n", ",n90000000\n")),
        "test.csv: 1 classes are also in train.csv (n90000000)"),
    "missing-pickle": ("pickle", lambda r: (r / "mini-imagenet-cache-test.pkl").unlink(),
                       "mini-imagenet-cache-test.pkl is missing"),
    "wrong-image-size": ("pickle", lambda r: rewrite_pickle(r, "val", lambda d: {
        **d, "image_data": np.ascontiguousarray(d["image_data"][:, :80, :80])}),
        "mini-imagenet-cache-val.pkl: image_data is uint8 100 x 80 x 80 x 3, not uint8 "
        "N x 84 x 84 x 3"),
    "pickle-without-class-dict": ("pickle", lambda r: rewrite_pickle(
        r, "train", lambda d: {"image_data": d["image_data"]}),
        "mini-imagenet-cache-train.pkl has no class_dict"),
    "truncated-pickle": ("pickle", lambda r: (r / "mini-imagenet-cache-val.pkl").write_bytes(
        (r / "mini-imagenet-cache-val.pkl").read_bytes()[:1000]),
        "mini-imagenet-cache-val.pkl is not a readable pickle"),
    "pickle-that-runs-code": ("pickle", lambda r: (r / "mini-imagenet-cache-val.pkl"
                                                   ).write_bytes(pickle.dumps(RunsCode())),
                              "refers to builtins.eval, not only numpy arrays"),
    "pickle-rows-out-of-range": ("pickle", lambda r: rewrite_pickle(r, "test", lambda d: {
        **d, "class_dict": {**d["class_dict"], "n90000015": list(range(90, 110))}}),
        "class_dict['n90000015'] has rows outside 0..99 of image_data"),
}


def test_both_forms_load_to_identical_arrays(generated):
    from_csv = load_miniimagenet(generated["both"], "csv")
    from_pickle = load_miniimagenet(generated["both"], "pickle")
    assert {s: len(from_csv[s].classes) for s in SPLITS} == {"train": 10, "val": 5, "test": 5}
    for split in SPLITS:
        images = from_csv[split].images
        assert images.dtype == np.uint8 and images.shape[1:] == (20, 3, 84, 84)
        assert np.array_equal(images, from_pickle[split].images), split
        assert from_csv[split].classes == from_pickle[split].classes
        assert list(from_csv[split].classes) == sorted(from_csv[split].classes)
    # pickles are preferred when both are there (nothing to decode)
    auto = load_miniimagenet(generated["both"])
    assert all(np.array_equal(auto[s].images, from_csv[s].images) for s in SPLITS)
    # and each form alone loads the same
    for form in ("csv", "pickle"):
        alone = load_miniimagenet(generated[form])
        assert all(np.array_equal(alone[s].images, from_csv[s].images) for s in SPLITS)


def test_decoded_jpegs_are_cached_by_source(generated, tmp_path, monkeypatch):
    root = copy_of(generated, "csv", tmp_path)
    first = load_miniimagenet(root)
    (cached,) = (tmp_path / "cache").glob("miniimagenet-*.npz")
    with monkeypatch.context() as patch:  # from the cache now: no file is read again
        patch.setattr("maml_bench.tasks.fewshot.miniimagenet.scan", None)
        again = load_miniimagenet(root)
    assert all(np.array_equal(first[s].images, again[s].images) for s in SPLITS)
    _drop_row(root, "val")  # a changed source is a new key: decoded again, and refused
    with pytest.raises(UserError, match="val.csv: 1 classes do not have 20 images"):
        load_miniimagenet(root)
    assert [p.name for p in (tmp_path / "cache").glob("miniimagenet-*.npz")] == [cached.name]


def test_zip_form_loads_as_the_folder_and_keeps_its_cache_key_when_copied(generated, tmp_path):
    folder = load_miniimagenet(generated["csv"])
    root = copy_of(generated, "zip", tmp_path)
    assert not (root / "images").exists()
    zipped = load_miniimagenet(root)
    assert all(np.array_equal(folder[s].images, zipped[s].images) for s in SPLITS)
    assert all(folder[s].classes == zipped[s].classes for s in SPLITS)
    # the key is the zip's content (names, CRCs, sizes), not its file time: a copy hits the cache
    from maml_bench.tasks.fewshot.miniimagenet import source_key

    moved = tmp_path / "elsewhere" / "miniimagenet"
    shutil.copytree(root, moved, copy_function=shutil.copy)
    assert source_key(moved) == source_key(root)


def test_original_size_jpegs_are_resized_and_grey_ones_made_rgb(generated, tmp_path):
    """A copy of the originals (no image 84 x 84) is resized, as the MAML code's proc_images.py;
    one image of another size among 84 x 84 ones is a damaged copy (BROKEN above)."""
    from PIL import Image

    root = copy_of(generated, "csv", tmp_path)
    for image in (root / "images").iterdir():  # the originals are larger than 84 x 84
        Image.open(image).convert("RGB").resize((100, 90)).save(image, format="JPEG")
    Image.new("RGB", (500, 375), (200, 10, 10)).save(_first_image(root), format="JPEG")
    second = root / "images" / (root / "val.csv").read_text().splitlines()[2].split(",")[0]
    Image.new("L", (120, 100), 128).save(second, format="JPEG")
    val = load_miniimagenet(root)["val"]
    assert val.images.shape == (5, 20, 3, 84, 84)
    red = val.images[0, 0].reshape(3, -1).mean(1)
    assert red[0] > 180 and red[1] < 40 and red[2] < 40
    assert (np.abs(val.images[0, 1].astype(int) - 128) <= 1).all()
    sizes = Counter()
    for item in scan(root, "csv", keep=False):
        sizes.update(item.sizes)
    assert sizes == {(500, 375): 1, (120, 100): 1, (100, 90): 398}


def test_real_counts_are_not_required(tmp_path):
    root = tmp_path / "miniimagenet"
    root.mkdir()
    synth_miniimagenet(root, (3, 2, 2), 7, seed=5, form="pickle")
    data = load_miniimagenet(root)
    assert [data[s].images.shape[:2] for s in SPLITS] == [(3, 7), (2, 7), (2, 7)]


def test_generation_is_seeded(tmp_path):
    made = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        root = tmp_path / name
        root.mkdir()
        synth_miniimagenet(root, (2, 2, 2), 3, seed=seed, form="pickle")
        made.append(load_miniimagenet(root)["train"].images)
    assert np.array_equal(made[0], made[1]) and not np.array_equal(made[0], made[2])
    with pytest.raises(UserError, match="already holds"):
        synth_miniimagenet(tmp_path / "a", form="csv")


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copy_is_one_line_naming_the_problem(case, generated, tmp_path):
    form, breaker, message = BROKEN[case]
    root = copy_of(generated, form, tmp_path)
    breaker(root)
    with pytest.raises(UserError) as err:
        load_miniimagenet(root)
    text = str(err.value)
    assert "\n" not in text and message in text, text
    assert str(root) in text and "expected" in text  # the folder and the layout


@pytest.fixture
def data_root_with(generated, tmp_path, monkeypatch):
    root = copy_of(generated, "csv", tmp_path)
    monkeypatch.setenv(DATA_ENV, str(root.parent))
    return root


def test_episode_benchmark_on_generated_miniimagenet(data_root_with):
    from maml_bench.tasks.fewshot.episodes import FewShot, FewShotConfig

    config = FewShotConfig(dataset="miniimagenet", ways=5, train_shots=1, train_query=2,
                           eval_shots=(1,), filters=4, test_tasks=4, val_tasks=2)
    bench = FewShot(config)
    assert {s: p.shape[0] for s, p in bench.pools.items()} == {"train": 10, "val": 5, "test": 5}
    batch = bench.train_batch(torch.Generator().manual_seed(0), 3, 1, 2)
    assert batch.x_support.shape == (3, 5, 3, 84, 84)
    assert batch.x_query.shape == (3, 10, 3, 84, 84)
    assert batch.x_support.dtype == torch.float32 and batch.x_support.max() <= 1
    test = bench.eval_sets("test")[1]
    assert test.x_support.shape == (4, 5, 3, 84, 84) and test.x_query.shape == (4, 5, 3, 84, 84)
    model = bench.make_model()
    assert model(batch.x_support[0]).shape == (5, 5)
    # the classes are learnable: 1-shot nearest neighbour on raw pixels beats chance (20%)
    many = bench.train_batch(torch.Generator().manual_seed(1), 50, 1, 4)
    distance = torch.cdist(many.x_query.flatten(2), many.x_support.flatten(2))
    guess = many.y_support.gather(1, distance.argmin(-1))
    assert (guess == many.y_query).float().mean() > 0.5


def test_more_ways_than_a_split_has_is_one_line(data_root_with):
    from maml_bench.tasks.fewshot.episodes import FewShot, FewShotConfig

    with pytest.raises(UserError) as err:
        FewShot(FewShotConfig(dataset="miniimagenet", ways=6, train_shots=1, train_query=2,
                              eval_shots=(1,), filters=4, test_tasks=4, val_tasks=2))
    assert "\n" not in str(err.value) and "val split has 5 classes" in str(err.value)
    assert "6-way" in str(err.value)


def test_missing_dataset_names_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(UserError, match="no MiniImagenet folder .*train.csv.*--data-root"):
        pools.load("miniimagenet", "maml")
    (tmp_path / "miniimagenet").mkdir()
    with pytest.raises(UserError, match="MiniImagenet not found in .*mini-imagenet-cache"):
        load_miniimagenet(tmp_path / "miniimagenet")


#: maml-authors needs the real network (32 filters, 5 ways): tested on the real data below
MINI_PAIRS = [(e, m.algorithm) for e in EXPERIMENTS.names() if e.startswith("miniimagenet-")
              for m in EXPERIMENTS.get(e).methods if m.algorithm != "maml-authors"]
#: every pair from the CSV form; the pickle form (the same pools once loaded) for the paper's
#: Table 1 methods, which keeps the suite's time in bounds
#: (the v2 experiments decode the JPEGs as the reference code did: the csv form only)
MINI_CASES = [(e, m, "csv") for e, m in MINI_PAIRS] + [
    (e, m, "pickle") for e, m in MINI_PAIRS
    if m in ("maml", "fomaml", "finetune", "nearest-neighbour")
    and EXPERIMENTS.get(e).config.preprocessing == "suite"]


@pytest.fixture(scope="module")
def data_roots(generated, tmp_path_factory) -> dict[str, Path]:
    """Per form, a data root holding the generated set under both folder names the real and
    the demo experiments read (runs only read their data: one copy serves every case)."""
    roots = {}
    for form in ("csv", "pickle"):
        roots[form] = tmp_path_factory.mktemp(f"root-{form}")
        for name in ("miniimagenet", "miniimagenet-demo"):
            shutil.copytree(generated[form], roots[form] / name)
    return roots


@pytest.mark.parametrize(("experiment", "method", "form"), MINI_CASES)
def test_every_miniimagenet_experiment_runs_end_to_end(experiment, method, form, data_roots,
                                                       tmp_path, monkeypatch):
    """Each algorithm x MiniImagenet experiment at tiny scale on generated data in each real
    format (the real and the demo experiments read the same formats)."""
    from maml_bench.runner import execute, plan_runs

    monkeypatch.setenv(DATA_ENV, str(data_roots[form]))
    (run,) = plan_runs(experiment, "tiny", [], [method], None, tmp_path / "out")
    records = pd.read_csv(execute(run, progress=False) / "records.csv.gz")
    assert len(records) == run.config.test_tasks * (run.config.eval_steps + 1)
    assert records["value"].between(0, 100).all()


def test_one_and_five_shot_pretrain_the_same_baseline_network(data_roots, monkeypatch):
    """With its own pre-training batch (Ravi & Larochelle's protocol) the baselines' training
    reads none of the settings in which the 1-shot and 5-shot experiments differ: the same seed
    trains the same network (what `--trained-by` relies on)."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.algorithms.finetune import PRETRAINING_SETTINGS
    from maml_bench.runner import plan_runs
    from maml_bench.tasks.fewshot.episodes import FewShot

    monkeypatch.setenv(DATA_ENV, str(data_roots["csv"]))
    states = []
    for experiment in ("miniimagenet-5w1s-v2", "miniimagenet-5w5s-v2"):
        (run,) = plan_runs(experiment, "tiny", [], ["finetune"], None, Path("unused"))
        algo = ALGORITHMS.get("finetune")(FewShot(run.config), run.config, seed=3)
        for i in range(3):
            algo.train_step(i)
        states.append(algo.model.state_dict())
        assert ALGORITHMS.get("finetune").training_settings(run.config) == PRETRAINING_SETTINGS
    (one, five), runs = states, [plan_runs(e, "tiny", [], ["finetune"], None, Path("u"))[0]
                                 for e in ("miniimagenet-5w1s-v2", "miniimagenet-5w5s-v2")]
    assert [k for k in PRETRAINING_SETTINGS
            if getattr(runs[0].config, k) != getattr(runs[1].config, k)] == []
    assert runs[0].config.train_shots != runs[1].config.train_shots  # they do differ
    for name, value in one.items():
        assert torch.equal(value, five[name]), name


def test_nearest_neighbour_and_five_shot_evaluated_from_the_finetune_run(data_roots, tmp_path,
                                                                        monkeypatch, capsys):
    """`--evaluate-from DIR --trained-by EXPERIMENT/METHOD`: one pre-training serves the other
    baseline and the other K, in the same --out; a method with another training is refused in
    one line, and so is --trained-by alone."""
    from maml_bench.cli import main
    from maml_bench.run_spec import derive_seed

    monkeypatch.setenv(DATA_ENV, str(data_roots["csv"]))
    out = str(tmp_path / "out")
    tiny = ["--scale", "tiny", "--no-report"]
    assert main(["run", "miniimagenet-5w1s-v2", "--method", "finetune", *tiny, "--out", out]) == 0
    source = tmp_path / "out/miniimagenet-5w1s-v2/raw/finetune/seed-0"
    for experiment, method, extra in (("miniimagenet-5w1s-v2", "nearest-neighbour", []),
                                      ("miniimagenet-5w5s-v2", "finetune", []),
                                      # a setting the pre-training does not read: its own
                                      ("miniimagenet-5w5s-v2", "nearest-neighbour",
                                       ["--set", "eval_steps=3"])):
        assert main(["run", experiment, "--method", method, *tiny, "--out", out, *extra,
                     "--evaluate-from", out, "--trained-by", "miniimagenet-5w1s-v2/finetune"]) == 0
        done = tmp_path / "out" / experiment / "raw" / method / "seed-0"
        info = json.loads((done / "run.json").read_text())
        assert info["evaluated_from"] == str(source)
        assert info["trained_run"] == "miniimagenet-5w1s-v2/finetune/seed-0"
        assert info["trained_seed"] == derive_seed("miniimagenet-5w1s-v2", "finetune", 0)
        assert not (done / "checkpoint.pt").exists()
        records = pd.read_csv(done / "records.csv.gz")
        assert len(records) == info["config"]["test_tasks"] * (info["config"]["eval_steps"] + 1)
    capsys.readouterr()
    for args, message in (
            (["--method", "maml", "--evaluate-from", out, "--trained-by",
              "miniimagenet-5w1s-v2/finetune"], "its training is not"),
            (["--method", "nearest-neighbour", "--trained-by", "miniimagenet-5w1s-v2/finetune"],
             "give --evaluate-from too"),
            (["--method", "nearest-neighbour", "--evaluate-from", out, "--trained-by",
              "miniimagenet-5w1s-v2"], "expected EXPERIMENT/METHOD"),
            (["--method", "nearest-neighbour", "--evaluate-from", out, "--trained-by",
              "sinusoid-table2-v1/pretrain"], "its training is not"),
            (["--method", "nearest-neighbour", "--evaluate-from", out, "--trained-by",
              "miniimagenet-5w1s-v2/finetune", "--set", "filters=8"],
             "trained with other settings"),
            (["--method", "nearest-neighbour", "--evaluate-from", out, "--trained-by",
              "miniimagenet-5w1s-v2/finetune", "--set", "pretrain_batch=0"],
             "--set pretrain_batch")):
        assert main(["run", "miniimagenet-5w5s-v2", *tiny, "--out", str(tmp_path / "o2"),
                     *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
