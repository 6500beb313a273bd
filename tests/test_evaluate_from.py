"""`run --evaluate-from`: a finished run meta-tested again under other evaluation-only settings,
with its trained parameters and no training; anything else is refused in one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from maml_bench.cli import main
from maml_bench.tasks.fewshot.data_root import data_root

RECORDS = "sinusoid-table2-v1/raw/maml/seed-0/records.csv.gz"
TINY = ["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml", "--no-report"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    src = tmp_path_factory.mktemp("trained")
    assert main([*TINY, "--out", str(src)]) == 0
    return src


def evaluate(src, out, *extra: str) -> int:
    return main([*TINY, "--evaluate-from", str(src), "--out", str(out), *extra])


def test_same_settings_give_the_same_numbers(trained, tmp_path):
    assert evaluate(trained, tmp_path) == 0
    before = pd.read_csv(trained / RECORDS)
    again = pd.read_csv(tmp_path / RECORDS)
    assert len(again) == len(before)
    assert (again["value"].to_numpy() == before["value"].to_numpy()).all()


def test_other_test_episodes_are_evaluated_once_and_recorded_as_such(trained, tmp_path):
    assert evaluate(trained, tmp_path, "--set", "test_seed=7") == 0
    info = json.loads((tmp_path / RECORDS).with_name("run.json").read_text())
    assert info["changed"] == ["test_seed"] and info["config"]["test_seed"] == 7
    assert info["evaluated_from"] == str(trained / "sinusoid-table2-v1/raw/maml/seed-0")
    assert not (tmp_path / RECORDS).with_name("checkpoint.pt").exists()  # nothing trained
    first = pd.read_csv(tmp_path / RECORDS)
    assert not (first["value"].to_numpy() == pd.read_csv(trained / RECORDS)["value"]
                .to_numpy()).all()
    assert evaluate(trained, tmp_path, "--set", "test_seed=7") == 0  # done: skipped
    assert pd.read_csv(tmp_path / RECORDS).equals(first)


@pytest.mark.parametrize("extra, message", [
    (["--set", "inner_lr=0.5"], "was trained with other settings"),
    (["--method", "fomaml"], "no finished sinusoid-table2-v1/fomaml/seed-0"),
])
def test_what_cannot_be_evaluated_again_is_one_line(trained, tmp_path, capsys, extra, message):
    args = [*TINY, "--evaluate-from", str(trained), "--out", str(tmp_path), *extra]
    if "--method" in extra:
        args = [a for a in args if a != "maml"]
        args.remove("--method")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_evaluating_into_the_trained_runs_own_folder_is_refused(trained, capsys):
    assert evaluate(trained, trained, "--set", "test_seed=7") == 2
    assert "needs its own --out" in capsys.readouterr().err


@pytest.mark.skipif(not (data_root() / "omniglot" / "images_background.zip").exists(),
                    reason="real Omniglot not found: put images_background.zip and "
                    "images_evaluation.zip under ../shared/data/omniglot/")
def test_omniglot_with_more_test_queries(tmp_path):
    base = ["run", "omniglot-5w1s-v1", "--scale", "tiny", "--method", "maml", "--no-report"]
    assert main([*base, "--out", str(tmp_path / "src")]) == 0
    assert main([*base, "--evaluate-from", str(tmp_path / "src"), "--out", str(tmp_path / "q"),
                 "--set", "test_query=3"]) == 0
    records = pd.read_csv(tmp_path / "q/omniglot-5w1s-v1/raw/maml/seed-0/records.csv.gz")
    # 5 ways x 3 queries: an episode's accuracy (percent) is a multiple of 1/15, not of 1/5
    correct = records["value"] / 100 * 15
    assert ((correct - correct.round()).abs() < 1e-4).all()
    assert not (((correct / 3) - (correct / 3).round()).abs() < 1e-4).all()
