"""`maml-bench data check|synth` and `--data-root`: reports, exit codes, one line per problem,
and every bad option refused before any work (as tests/test_validation.py for the others)."""

from __future__ import annotations

import io
import zipfile

import pytest
import test_miniimagenet as generated_data
from test_validation import assert_refused, run_cli

from maml_bench import cli
from maml_bench.tasks.fewshot.data_root import DATA_ENV, data_root

# The generated sets and the broken copies of tests/test_miniimagenet.py, checked by the CLI.
BROKEN, copy_of = generated_data.BROKEN, generated_data.copy_of
generated = generated_data.generated
_private_cache = generated_data._private_cache  # autouse: a temporary cache, fresh pools

OMNIGLOT = data_root() / "omniglot"


def problem_lines(err: str) -> list[str]:
    """The problems under the summary line, which must come first."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("maml-bench: error: "), err
    return [line.strip() for line in lines[1:]]


def test_a_generated_copy_passes_any_and_fails_real_with_the_counts(generated, capsys):
    code, err = run_cli(capsys, ["data", "check", "miniimagenet", str(generated["both"]),
                                 "--expect", "any"])
    assert code == 0, err
    code, err = run_cli(capsys, ["data", "check", "miniimagenet", str(generated["both"])])
    assert code == 2
    assert "does not match the real release: 6 problems; --expect any" in err
    problems = problem_lines(err)
    assert "csv form: train.csv has 10 classes x 20 images, the real release 64 x 600" in problems
    assert ("pickle form: mini-imagenet-cache-test.pkl has 5 classes x 20 images, the real "
            "release 20 x 600") in problems
    assert len(problems) == 6


def test_report_names_what_is_there(generated, capsys):
    assert cli.main(["data", "check", "miniimagenet", str(generated["csv"]),
                     "--expect", "any"]) == 0
    out = capsys.readouterr().out
    assert "csv form (images/ + train.csv, val.csv, test.csv):" in out
    assert "train 10 classes x 20 images (real release: 64 x 600); image sizes 84 x 84: 200" in out
    assert "pickle form" not in out and out.strip().endswith("--expect any)")


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_is_one_line_naming_the_problem(case, generated, tmp_path, capsys):
    form, breaker, message = BROKEN[case]
    root = copy_of(generated, form, tmp_path)
    breaker(root)
    code, err = run_cli(capsys, ["data", "check", "miniimagenet", str(root), "--expect", "any"])
    assert code == 2, err
    assert "is not well-formed: 1 problem" in err.splitlines()[0]
    (problem,) = problem_lines(err)
    label = "csv" if form == "zip" else form  # the zip is the csv form's images/ zipped
    assert problem.startswith(f"{label} form: ") and message in problem, err


def test_missing_folder_or_dataset_is_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, ["data", "check", "miniimagenet", str(tmp_path / "none")])
    assert_refused(code, err, "no folder", str(tmp_path / "none"))
    code, err = run_cli(capsys, ["data", "check", "miniimagenet", str(tmp_path)])
    assert code == 2 and problem_lines(err) == [
        "no MiniImagenet files: expected images/ (or images.zip holding images/) with the JPEGs "
        "and train.csv, val.csv, test.csv with the header filename,label (rows like "
        "n0153282900000005.jpg,n01532829); "
        "or mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl, each a dict with "
        "image_data (uint8 N x 84 x 84 x 3) and class_dict (class name -> row indices)"]


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason=f"real Omniglot not found at {OMNIGLOT}: put "
                    "images_background.zip and images_evaluation.zip there (or set "
                    "MAML_BENCH_DATA to a folder holding omniglot/)")
def test_real_omniglot_passes(capsys):
    assert cli.main(["data", "check", "omniglot", str(OMNIGLOT)]) == 0
    out = capsys.readouterr().out
    assert "images_background (zip): 30 alphabets, 964 characters" in out
    assert "images_evaluation (zip): 20 alphabets, 659 characters" in out
    assert "drawings per character: 20: 1623 characters" in out
    assert "105 x 105: 32460" in out and "unreadable files: 0" in out
    assert out.strip().endswith("OK: matches the real release")


def _png(size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (size, size), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_broken_omniglot_says_what_is_wrong(tmp_path, capsys):
    character = tmp_path / "images_background" / "Latin" / "character01"
    character.mkdir(parents=True)
    for i in range(1, 21):
        (character / f"0001_{i:02d}.png").write_bytes(_png(105))
    (character / "0001_03.png").write_bytes(_png(28))
    (character / "0001_04.png").write_bytes(b"not a png")
    with zipfile.ZipFile(tmp_path / "images_evaluation.zip", "w") as archive:
        archive.writestr("images_evaluation/Greek/character01/0002_01.png", _png(105))
    code, err = run_cli(capsys, ["data", "check", "omniglot", str(tmp_path)])
    assert code == 2
    assert "does not match the real release: 5 problems" in err
    problems = problem_lines(err)
    assert problems[:4] == [
        "images_background has 1 alphabets and 1 characters, the real release 30 and 964",
        "images_evaluation has 1 alphabets and 1 characters, the real release 20 and 659",
        "1 characters do not have 20 drawings (e.g. images_evaluation/Greek/character01: 1)",
        "1 images are not 105 x 105 (e.g. 28 x 28)"]
    assert problems[4].startswith("1 unreadable PNGs (images_background/Latin/character01/"
                                  "0001_04.png (cannot identify image file")
    assert len(problems) == 5
    (tmp_path / "images_evaluation.zip").write_bytes(b"not a zip")
    code, err = run_cli(capsys, ["data", "check", "omniglot", str(tmp_path), "--expect", "any"])
    assert code == 2 and "images_evaluation.zip is not a readable zip" in problem_lines(err)[0]


def test_synth_writes_each_form(tmp_path, capsys):
    for form, files in (("csv", {"images", "train.csv", "val.csv", "test.csv"}),
                        ("pickle", {f"mini-imagenet-cache-{s}.pkl" for s in
                                    ("train", "val", "test")})):
        out = tmp_path / form / "miniimagenet"
        assert cli.main(["data", "synth", "miniimagenet", str(out), "--format", form,
                         "--classes-per-split", "3,2,2", "--images-per-class", "4",
                         "--seed", "7"]) == 0
        assert {p.name for p in out.iterdir()} == files
        assert f"wrote {out}: 3/2/2 classes x 4 images" in capsys.readouterr().out
        assert cli.main(["data", "check", "miniimagenet", str(out), "--expect", "any"]) == 0
    code, err = run_cli(capsys, ["data", "synth", "miniimagenet", str(out)])
    assert_refused(code, err, "already holds mini-imagenet-cache-train.pkl", "give another DIR")


def test_data_root_reaches_the_run_and_its_workers(generated, tmp_path, monkeypatch, capsys):
    """A MiniImagenet run from --data-root alone, in two worker processes."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    root = copy_of(generated, "csv", tmp_path)
    out = tmp_path / "out"
    assert cli.main(["run", "miniimagenet-5w1s-v2", "--scale", "tiny", "--method", "maml",
                     "--method", "fomaml", "--jobs", "2", "--data-root", str(root.parent),
                     "--no-report", "--out", str(out)]) == 0
    for method in ("maml", "fomaml"):
        assert (out / "miniimagenet-5w1s-v2" / "raw" / method / "seed-0" / "run.json").is_file()
    assert cli.main(["data", "check", "miniimagenet", "--data-root", str(root.parent),
                     "--expect", "any"]) == 0
    assert f"MiniImagenet in {root}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["data", "synth", "miniimagenet", "DIR", "--format", "zip"],
    ["data", "synth", "omniglot", "DIR"],
    ["data", "check", "cifar", "DIR"],
    ["data", "check", "miniimagenet", "DIR", "--expect", "some"],
    ["data", "frobnicate"],
    ["data"],
])
def test_bad_choice_is_one_line(argv, capsys, tmp_path):
    out = tmp_path / "dir"
    code, err = run_cli(capsys, [str(out) if a == "DIR" else a for a in argv])
    assert_refused(code, err, "maml-bench data")
    assert not out.exists()


@pytest.mark.parametrize("command", [["run", "--scale", "tiny", "--no-report"],
                                     ["data", "check", "omniglot"]])
def test_bad_data_root_is_refused_before_any_work(command, capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = tmp_path / "out"
    for bad in (tmp_path / "none", a_file, "", a_file / "below"):
        code, err = run_cli(capsys, [*command, "--data-root", str(bad), "--out", str(out)]
                            if command[0] == "run" else [*command, "--data-root", str(bad)])
        assert_refused(code, err, "--data-root", "is not an existing directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_help_teaches(capsys):
    for argv in (["data", "--help"], ["data", "check", "--help"], ["data", "synth", "--help"]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text and "maml-bench data synth miniimagenet" in text
