"""Reports name the scale of their runs (from run.json) and compare only paper-scale runs with
the paper; `compare` labels rows with what was actually run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maml_bench.config import config_dict, config_hash
from maml_bench.experiments import EXPERIMENTS
from maml_bench.report.experiment import (
    build_comparison,
    build_tables,
    experiment_records,
    experiment_runs,
    scale_of,
)
from maml_bench.results import RECORD_COLUMNS, seal, write_json, write_records
from maml_bench.runner import resolve_config

EXPERIMENT = "sinusoid-table2-v1"


def write_run(out: Path, experiment_id: str, method: str, seed: int, config: object,
              level: float, tasks: int = 20, train_log: pd.DataFrame | None = None) -> Path:
    """A finished run as the runner writes it: records (K = 5, steps 0-10, MSE around `level`,
    spread so the 95% CI is about +-0.1) and run.json; optionally train_log.csv."""
    directory = out / experiment_id / "raw" / method / f"seed-{seed}"
    rng = np.random.default_rng(seed)
    rows = [
        (f"{experiment_id}/{method}/seed-{seed}", experiment_id, method, seed, 1000 + seed, 5,
         task, step, "mse", level * (1 + 0.5 * rng.standard_normal()) if step else 3.0)
        for task in range(tasks)
        for step in range(11)
    ]
    frame = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    frame["config_hash"] = config_hash(config)
    write_records(directory / "records.csv.gz", frame)
    write_json(directory / "run.json", {
        "run_id": f"{experiment_id}/{method}/seed-{seed}", "experiment": experiment_id,
        "method": method, "repetition": seed, "config": config_dict(config),
        "config_hash": config_hash(config), "iterations": config.iterations,
        **seal(directory / "records.csv.gz"),
    })
    if train_log is not None:
        train_log.to_csv(directory / "train_log.csv", index=False)
    return directory


def config_at(scale: str, overrides: list[str] | None = None,
              experiment_id: str = EXPERIMENT) -> object:
    return resolve_config(EXPERIMENTS.get(experiment_id), scale, overrides or [])


def test_scale_of_names_the_scale_whose_config_hash_matches() -> None:
    experiment = EXPERIMENTS.get(EXPERIMENT)
    for scale in ("paper", "quick", "tiny"):
        assert scale_of(experiment, config_hash(config_at(scale))) == scale
    assert scale_of(experiment, config_hash(config_at("quick", ["inner_lr=0.001"]))) == "custom"
    # The same settings under another experiment (other defaults) are not that one's paper.
    other = EXPERIMENTS.get("sinusoid-table2-codelr-v1")
    assert scale_of(other, config_hash(config_at("paper"))) == "custom"


def test_records_carry_each_runs_scale(tmp_path) -> None:
    write_run(tmp_path, EXPERIMENT, "maml", 0, config_at("paper"), 0.67)
    write_run(tmp_path, EXPERIMENT, "maml", 1, config_at("quick"), 0.67)
    runs = experiment_runs(EXPERIMENT, tmp_path).set_index("run_id")
    assert runs.loc[f"{EXPERIMENT}/maml/seed-1", "scale"] == "quick"
    assert runs.loc[f"{EXPERIMENT}/maml/seed-1", "iterations"] == 4_000
    records = experiment_records(EXPERIMENT, tmp_path)
    assert dict(records.groupby("seed")["scale"].first()) == {0: "paper", 1: "quick"}


def _table(out: Path) -> tuple[str, str, pd.DataFrame, pd.DataFrame]:
    build_tables(EXPERIMENT, out)
    tables = out / EXPERIMENT / "tables"
    return ((tables / "table2.md").read_text(), (tables / "table2.tex").read_text(),
            pd.read_csv(tables / "table2.csv"), pd.read_csv(tables / "summary.csv"))


def _body(markdown: str) -> str:
    return "\n".join(line for line in markdown.splitlines() if line.startswith("|"))


def test_quick_scale_tables_say_so_and_print_no_marks(tmp_path) -> None:
    # Our MAML mean ~0.67 with the paper's 0.67 inside the interval: a ✓ at paper scale.
    for seed in range(2):
        write_run(tmp_path, EXPERIMENT, "maml", seed, config_at("quick"), 0.67)
    md, tex, csv, summary = _table(tmp_path)
    caption = md.splitlines()[0]
    assert caption.endswith("Scale: quick. NOT the paper's protocol: the paper's values are "
                            "shown for orientation only, not compared (no ✓ / ✗).")
    assert "✓" not in _body(md) and "✗" not in _body(md)
    assert "| 0.67 " in _body(md)  # the paper's value stays, for orientation
    assert "Scale: quick" in tex and r"\checkmark" not in tex.split(r"\midrule")[1]
    for frame in (csv, summary):
        ran = frame[frame["n"] > 0]
        assert set(ran["scale"]) == {"quick"} and ran["paper_in_ci"].isna().all()


def test_paper_scale_tables_keep_marks_and_state_the_scale(tmp_path) -> None:
    for seed in range(2):
        write_run(tmp_path, EXPERIMENT, "maml", seed, config_at("paper"), 0.67)
    md, _, csv, _ = _table(tmp_path)
    assert md.splitlines()[0].endswith("Scale: paper.")
    assert "✓" in _body(md)
    maml = csv[(csv["method"] == "maml") & (csv["steps"] == 1)].iloc[0]
    assert maml["scale"] == "paper" and maml["paper_in_ci"]


def test_mixed_scales_are_named_and_only_paper_rows_marked(tmp_path) -> None:
    write_run(tmp_path, EXPERIMENT, "maml", 0, config_at("paper"), 0.67)
    write_run(tmp_path, EXPERIMENT, "pretrain", 0, config_at("paper", ["meta_lr=0.01"]), 2.41)
    md, _, csv, _ = _table(tmp_path)
    assert md.splitlines()[0].endswith(
        "(meta-trained with K = 10). Scales: paper (maml); custom (pretrain) (custom: settings "
        "changed with --set). Not all at the paper's protocol: only paper-scale rows are "
        "compared with the paper (✓ / ✗).")
    rows = {line.split("|")[1].strip(): line for line in _body(md).splitlines()[2:]}
    assert "✓" in rows["MAML"]
    assert "✓" not in rows["pretrain on all tasks"] and "✗" not in rows["pretrain on all tasks"]
    pretrain = csv[(csv["method"] == "pretrain") & (csv["steps"] == 1)].iloc[0]
    assert pretrain["scale"] == "custom" and pd.isna(pretrain["paper_in_ci"])


def test_seeds_at_several_scales_are_not_paper_scale(tmp_path) -> None:
    write_run(tmp_path, EXPERIMENT, "maml", 0, config_at("paper"), 0.67)
    write_run(tmp_path, EXPERIMENT, "maml", 1, config_at("quick"), 0.67)
    md, _, csv, _ = _table(tmp_path)
    assert set(csv.loc[csv["n"] > 0, "scale"]) == {"paper+quick"}
    assert "✓" not in _body(md) and "Scale: paper+quick" in md


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_compare_labels_rows_with_what_the_runs_ran(tmp_path, scale) -> None:
    ids = [EXPERIMENT, "sinusoid-table2-codelr-v1"]
    for experiment_id in ids:
        for seed in range(2):
            write_run(tmp_path, experiment_id, "maml", seed,
                      config_at(scale, experiment_id=experiment_id), 0.67)
    paths = build_comparison(ids, "maml", tmp_path, 5, [1, 5, 10], "cmp")
    md = next(p for p in paths if p.suffix == ".md").read_text()
    iterations = "4,000" if scale == "quick" else "70,000"
    assert f"{EXPERIMENT} ({scale} scale: alpha=0.01, {iterations} iterations, init=torch)" in md
    assert (f"sinusoid-table2-codelr-v1 ({scale} scale: alpha=0.001, {iterations} iterations, "
            "init=torch)") in md
    if scale == "quick":
        assert "70,000" not in md and "✓" not in _body(md) and "Scale: quick" in md


def test_compare_lists_settings_that_differ_between_seeds(tmp_path) -> None:
    paper = config_at("paper")
    write_run(tmp_path, EXPERIMENT, "maml", 0, paper, 0.67)
    write_run(tmp_path, EXPERIMENT, "maml", 1, dataclasses.replace(paper, inner_lr=0.001), 0.67)
    md = next(p for p in build_comparison([EXPERIMENT], "maml", tmp_path, 5, [1], "c")
              if p.suffix == ".md").read_text()
    assert "sinusoid-table2-v1 (paper/custom scale: alpha=0.01/0.001, 70,000 iterations" in md
    assert "Scale: custom+paper (custom: settings changed with --set; a+b: seeds run" in md


def test_a_methods_own_settings_apply_to_it_alone_and_keep_its_scale(monkeypatch, tmp_path):
    """MethodSpec.overrides: the method's paper defaults, under the scale and --set."""
    import dataclasses

    from maml_bench.runner import plan_runs

    base = EXPERIMENTS.get("omniglot-5w1s-v1")
    methods = tuple(dataclasses.replace(m, overrides={"meta_lr": 0.005})
                    if m.algorithm == "fomaml" else m for m in base.methods)
    patched = dataclasses.replace(base, methods=methods)
    monkeypatch.setattr(EXPERIMENTS, "get", lambda name: patched)
    runs = {r.method: r for r in plan_runs(base.id, "quick", [], ["maml", "fomaml"], None,
                                           tmp_path)}
    assert runs["fomaml"].config.meta_lr == 0.005 and runs["maml"].config.meta_lr == 1e-3
    assert runs["fomaml"].config.iterations == 1_000  # the scale still applies over it
    (user,) = plan_runs(base.id, "quick", ["meta_lr=0.002"], ["fomaml"], None, tmp_path)
    assert user.config.meta_lr == 0.002  # and --set over both
    assert scale_of(patched, config_hash(runs["fomaml"].config), "fomaml") == "quick"
    assert scale_of(patched, config_hash(runs["fomaml"].config)) == "custom"


@pytest.mark.parametrize("experiment_id,iterations", [
    ("omniglot-5w5s-v1", 10_000), ("omniglot-20w1s-v1", 4_000), ("omniglot-20w5s-v1", 1_500)])
def test_long_scale_is_planned_and_labelled_as_such(experiment_id, iterations) -> None:
    """The Omniglot cells whose paper scale would take days here have a `long` scale; the
    others refuse it with the scales they do have."""
    from maml_bench.config import config_hash
    from maml_bench.errors import UserError
    from maml_bench.report.experiment import scale_of
    from maml_bench.runner import plan_runs

    runs = plan_runs(experiment_id, "long", [], ["maml"])
    assert [r.config.iterations for r in runs] == [iterations]
    assert runs[0].config.test_tasks == 600 and runs[0].config.val_every == iterations // 10
    experiment = EXPERIMENTS.get(experiment_id)
    assert scale_of(experiment, config_hash(runs[0].config), "maml") == "long"
    with pytest.raises(UserError, match="unknown scale 'long'; choose one of paper, quick"):
        plan_runs("omniglot-5w1s-v1", "long", [], ["maml"])


@pytest.mark.parametrize("experiment_id", ["cheetah-dir-v1", "cheetah-vel-v1", "ant-dir-v1"])
def test_locomotion_long_scale_keeps_the_paper_protocol_but_its_length(experiment_id) -> None:
    from maml_bench.runner import plan_runs

    long, paper = (plan_runs(experiment_id, scale, [], ["maml-trpo"])[0].config
                   for scale in ("long", "paper"))
    assert long.iterations == 100 and paper.iterations == 500
    assert dataclasses.replace(long, iterations=500) == paper
