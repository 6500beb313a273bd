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


CHANGED = {"test_seed": 5, "test_tasks": 3, "eval_chunk": 1, "test_query": 2,
           "eval_shots": (1, 2), "evaluate_checkpoint": "last", "render": False,
           "test_lr": 0.3, "test_lr_later": 0.25, "test_min_steps": 30,
           # lake-runs -> episodes (omniglot-20w1s-lake-v1); the Lake runs need the background
           # split and 20-way 1-shot, so the other Omniglot cases keep their episodes
           "test_set": "episodes"}


@pytest.mark.parametrize(("experiment", "method"), [
    ("sinusoid-table2-v1", "maml"), ("sinusoid-table2-v1", "pretrain"),
    ("omniglot-5w1s-v1", "maml"), ("omniglot-5w1s-v1", "protonets"),
    ("omniglot-5w1s-v1", "metalstm"), ("omniglot-20w1s-lake-v1", "fomaml"),
    ("navigation2d-v1", "maml-trpo")])
def test_evaluation_only_settings_do_not_change_what_is_trained(experiment, method, tmp_path):
    """The claim `--evaluate-from` rests on: every setting declared evaluation-only, changed
    all at once, leaves the trained parameters bit for bit as they were."""
    import torch

    from maml_bench.domains import evaluation_only
    from maml_bench.runner import execute, plan_runs

    if experiment.startswith("omniglot") and not (data_root() / "omniglot").is_dir():
        pytest.skip("real Omniglot not found: put the two zips under ../shared/data/omniglot/")
    if experiment.startswith("navigation"):
        pytest.importorskip("gymnasium")
    (base,) = plan_runs(experiment, "tiny", [], [method], 1, tmp_path / "a")
    keys = evaluation_only(base.config)
    assert keys <= set(CHANGED), f"give {sorted(keys - set(CHANGED))} a value in CHANGED"
    overrides = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                 for k, v in CHANGED.items() if k in keys]
    (other,) = plan_runs(experiment, "tiny", overrides, [method], 1, tmp_path / "b")
    states = [torch.load(execute(run, progress=False) / "checkpoint.pt",
                         weights_only=False)["algorithm"] for run in (base, other)]

    def tensors(state, prefix=""):
        if isinstance(state, torch.Tensor):
            yield prefix, state
        elif isinstance(state, dict):
            for k, v in state.items():
                yield from tensors(v, f"{prefix}.{k}")
        elif isinstance(state, list | tuple):
            for i, v in enumerate(state):
                yield from tensors(v, f"{prefix}.{i}")

    a, b = dict(tensors(states[0])), dict(tensors(states[1]))
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
