"""Tests for the summary tables and learning-curve plots in maml_bench.report."""

import logging
import math

import numpy as np
import pandas as pd
import pytest

from maml_bench.report.plots import plot_learning_curves
from maml_bench.report.tables import (
    SUMMARY_COLUMNS,
    TOO_WIDE,
    format_table,
    summarize,
    write_table,
)
from maml_bench.stats import CI_METHODS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(rows: list[tuple[str, int, int, int, float]]) -> pd.DataFrame:
    """rows: (method, seed, step, task, value) for experiment "exp", shots 5, metric mse."""
    frame = pd.DataFrame(rows, columns=["method", "seed", "step", "task", "value"])
    frame["experiment"] = "exp"
    frame["run_id"] = "exp/" + frame["method"] + "/seed-" + frame["seed"].astype(str)
    frame["run_seed"] = 1000 + frame["seed"]
    frame["shots"] = 5
    frame["metric"] = "mse"
    frame["scale"] = "paper"
    return frame


@pytest.fixture
def records() -> pd.DataFrame:
    rows = []
    # maml, step 1: seed 0 gives tasks 1, 2, 3 and seed 1 gives 3, 4, 5, so the per-task means
    # are 2, 3, 4 (mean 3, n 3) and the per-seed means are 2 and 4 (seed_std 1).
    for seed, vals in enumerate([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]):
        rows += [("maml", seed, 1, task, v) for task, v in enumerate(vals)]
        rows += [("maml", seed, 5, task, v / 10) for task, v in enumerate(vals)]  # mean 0.3
        rows += [("maml", seed, 10, task, 0.1) for task in range(3)]
    # "alpha" is not in the paper frame; one diverged task makes its mean NaN.
    rows += [("alpha", 0, 1, 0, 1.0), ("alpha", 0, 1, 1, np.nan), ("alpha", 0, 1, 2, 1.0)]
    rows += [("zeta", 0, 1, task, 9.0) for task in range(3)]
    return _records(rows)


@pytest.fixture
def paper() -> pd.DataFrame:
    return pd.DataFrame(
        [
            ("exp", "zeta", 5, 1, "mse", 9.0, np.nan),
            ("exp", "maml", 5, 1, "mse", 2.5, 0.1),  # inside [2.076, 3.924]
            ("exp", "maml", 5, 5, "mse", 0.9, np.nan),  # outside [0.208, 0.392]
            ("exp", "alpha", 5, 1, "mse", 1.0, np.nan),  # our mean is NaN -> NA
            ("exp", "multitask", 5, 1, "mse", 4.19, np.nan),  # never run
        ],
        columns=["experiment", "method", "shots", "steps", "metric", "paper", "paper_ci"],
    )


def _row(summary: pd.DataFrame, method: str, steps: int) -> pd.Series:
    hit = summary[(summary["method"] == method) & (summary["steps"] == steps)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_summarize_averages_seeds_per_task(records, paper) -> None:
    summary = summarize(records, paper)
    assert list(summary.columns) == SUMMARY_COLUMNS
    r = _row(summary, "maml", 1)
    assert (r["n"], r["n_seeds"]) == (3, 2)
    assert (r["seed_min"], r["seed_max"]) == (2.0, 4.0)
    assert r["mean"] == pytest.approx(3.0)
    # Interval over the 3 per-task means (2, 3, 4), not over the 6 raw values.
    half = 1.959964 * math.sqrt(2 / 3) / math.sqrt(3)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((3 - half, 3 + half), abs=1e-5)
    assert r["seed_std"] == pytest.approx(1.0)
    assert r["paper"] == 2.5 and r["paper_ci"] == 0.1
    assert r["ci_method"] == "normal"
    assert summary["paper_in_ci"].dtype == "boolean"
    assert bool(r["paper_in_ci"]) is True
    assert bool(_row(summary, "maml", 5)["paper_in_ci"]) is False
    assert pd.isna(_row(summary, "maml", 10)["paper_in_ci"])  # no paper value
    assert math.isnan(_row(summary, "maml", 10)["paper"])
    alpha = _row(summary, "alpha", 1)
    assert math.isnan(alpha["mean"]) and pd.isna(alpha["paper_in_ci"])  # NaN not dropped
    assert _row(summary, "zeta", 1)["seed_std"] == 0.0
    # Paper order (zeta, maml), then methods the paper lacks; "multitask" has no records.
    assert list(dict.fromkeys(summary["method"])) == ["zeta", "maml", "alpha"]
    assert list(summary.loc[summary["method"] == "maml", "steps"]) == [1, 5, 10]


def test_summarize_t_interval_and_paper_only_rows(records, paper) -> None:
    normal = _row(summarize(records, paper), "maml", 1)
    summary = summarize(records, paper, ci="t", include_paper_only=True)
    t = _row(summary, "maml", 1)
    assert t["ci_method"] == "t"
    assert t["ci_high"] - t["ci_low"] > normal["ci_high"] - normal["ci_low"]
    extra = _row(summary, "multitask", 1)
    assert extra["n"] == 0 and math.isnan(extra["mean"]) and extra["paper"] == 4.19
    assert summarize(records, None)["paper"].isna().all()
    with pytest.raises(ValueError, match="CI method"):
        summarize(records, paper, ci="bootstrap")


def test_format_and_write_table(records, paper, tmp_path) -> None:
    summary = summarize(records, paper, include_paper_only=True)
    labels = {"maml": "MAML", "multitask": "multi-task_no reg"}
    wide = format_table(summary, shots=5, steps=[1, 5], method_labels=labels)
    assert list(wide.columns) == [
        "method",
        "1 step ours",
        "1 step seeds: min-max",
        "1 step paper",
        "5 steps ours",
        "5 steps seeds: min-max",
        "5 steps paper",
    ]
    maml = wide.set_index("method").loc["MAML"]
    assert maml["1 step ours"] == "3.00 ± 0.92 ✓"
    assert maml["1 step paper"] == "2.50 ± 0.10"
    assert maml["5 steps ours"] == "0.30 ± 0.09 ✗"
    multitask = wide.set_index("method").loc["multi-task_no reg"]
    assert (multitask["1 step ours"], multitask["1 step paper"]) == ("–", "4.19")
    assert wide.set_index("method").loc["zeta", "5 steps ours"] == "–"
    # a diverged task is counted in the cell, not only shown as nan
    assert wide.set_index("method").loc["alpha", "1 step ours"] == "nan ± nan (1/3 non-finite)"

    paths = write_table(summary, wide, tmp_path, "table2", "Sinusoid, 5-shot MSE.")
    assert set(paths) == {"csv", "md", "tex"} and all(p.exists() for p in paths.values())
    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == SUMMARY_COLUMNS and len(csv) == len(summary)
    md = paths["md"].read_text()
    assert md.startswith("Sinusoid, 5-shot MSE. Scale: paper.\n\n")
    assert CI_METHODS["normal"] in md and "3.00 ± 0.92 ✓" in md and "| 2.50 ± 0.10" in md
    tex = paths["tex"].read_text()
    assert r"\checkmark" in tex and r"$\pm$" in tex and r"$\times$" in tex
    assert "±" not in tex and "✓" not in tex
    assert r"multi-task\_no reg" in tex and r"\label{tab:table2}" in tex


def _curves(methods: list[str], shots_list: list[int]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        (m, seed, step, task, (3.0 - step) * (1 + i) + rng.normal(0, 0.3))
        for i, m in enumerate(methods)
        for seed in range(2)
        for step in range(3)
        for task in range(20)
    ]
    frame = pd.concat([_records(rows).assign(shots=k) for k in shots_list], ignore_index=True)
    return frame


def test_plot_learning_curves_writes_png(tmp_path, paper) -> None:
    records = _curves(["maml", "pretrain"], [5, 10])
    paper = paper.assign(shots=5, steps=[1, 1, 2, 0, 2])
    out = plot_learning_curves(
        records,
        tmp_path / "fig" / "curves.png",
        methods=["maml", "pretrain"],
        method_labels={"maml": "MAML", "pretrain": "pretrained"},
        shots_list=[5, 10],
        title="Sinusoid",
        paper=paper,
    )
    data = out.read_bytes()
    assert out == tmp_path / "fig" / "curves.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_plot_learning_curves_skips_missing_method(tmp_path, caplog) -> None:
    records = _curves(["maml", "pretrain"], [5, 10])
    with caplog.at_level(logging.WARNING, logger="maml_bench.report.plots"):
        out = plot_learning_curves(
            records,
            tmp_path / "curves.png",
            methods=["maml", "oracle", "pretrain"],
            method_labels={"maml": "MAML"},
            shots_list=[5, 10, 20],
        )
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert "oracle" in caplog.text and "K = 20" in caplog.text


def test_summarize_counts_diverged_tasks_and_gives_robust_median(records, paper) -> None:
    summary = summarize(records, paper)
    alpha = _row(summary, "alpha", 1)
    assert alpha["nonfinite"] == 1 and alpha["median"] == 1.0 and math.isnan(alpha["mean"])
    maml = _row(summary, "maml", 1)
    assert maml["nonfinite"] == 0 and maml["median"] == 3.0


def test_table_shows_spread_between_training_seeds(records, paper, tmp_path) -> None:
    # maml step 1: per-seed means 2 and 4; zeta has one seed; a NaN seed shows as max "nan".
    nan_seed = records[(records["method"] == "maml") & (records["step"] == 10)].copy()
    nan_seed["method"], nan_seed["seed"] = "beta", nan_seed["seed"].astype(int)
    nan_seed.loc[(nan_seed["seed"] == 1) & (nan_seed["task"] == 0), "value"] = np.nan
    nan_seed["step"] = 1
    summary = summarize(pd.concat([records, nan_seed], ignore_index=True), paper)
    beta = _row(summary, "beta", 1)
    assert (beta["n_seeds"], beta["seed_min"]) == (2, pytest.approx(0.1))
    assert math.isnan(beta["seed_max"])
    wide = format_table(summary, shots=5, steps=[1]).set_index("method")
    assert wide.loc["maml", "1 step seeds: min-max"] == "2.00–4.00 (2 seeds)"
    assert wide.loc["zeta", "1 step seeds: min-max"] == "1 seed"
    assert wide.loc["beta", "1 step seeds: min-max"] == "0.10–nan (2 seeds)"
    paths = write_table(summary, format_table(summary, shots=5, steps=[1]), tmp_path, "t", "T")
    csv = pd.read_csv(paths["csv"])
    assert {"n_seeds", "seed_min", "seed_max", "scale"} <= set(csv.columns)
    assert "min-max over training seeds" in paths["md"].read_text()


def test_records_without_scale_are_never_compared_with_the_paper(records, paper) -> None:
    summary = summarize(records.drop(columns="scale"), paper)
    assert set(summary["scale"]) == {"unknown"}
    assert summary["paper_in_ci"].isna().all()
    wide = format_table(summary, shots=5, steps=[1, 5])
    assert not wide.map(lambda cell: "✓" in cell or "✗" in cell).any().any()
    assert wide.set_index("method").loc["maml", "1 step paper"] == "2.50 ± 0.10"


def test_an_interval_too_wide_to_tell_is_not_marked() -> None:
    """Table 2's `185.62 ± 362.34 ✓`: an interval wider than the value holds nearly any paper
    number, so it is not compared; one just narrow enough is."""
    wide_rows = [("maml", 0, 1, task, v) for task, v in enumerate([-400.0, 10.0, 950.0])]
    narrow_rows = [("fomaml", 0, 1, task, v) for task, v in enumerate([9.0, 10.0, 11.0])]
    paper = pd.DataFrame([("exp", "maml", 5, 1, "mse", 0.38, np.nan),
                          ("exp", "fomaml", 5, 1, "mse", 20.0, np.nan)],
                         columns=["experiment", "method", "shots", "steps", "metric", "paper",
                                  "paper_ci"])
    summary = summarize(_records(wide_rows + narrow_rows), paper)
    maml, fomaml = _row(summary, "maml", 1), _row(summary, "fomaml", 1)
    assert maml["ci_high"] - maml["mean"] >= TOO_WIDE * abs(maml["mean"])
    assert pd.isna(maml["paper_in_ci"])  # 0.38 is inside, but the interval cannot tell
    assert bool(fomaml["paper_in_ci"]) is False  # half width 1.31 on 10: 20 is outside
    cells = format_table(summary, shots=5, steps=[1]).set_index("method")["1 step ours"]
    assert cells["maml"].endswith("(too wide to compare)") and "✓" not in cells["maml"]
    assert cells["fomaml"].endswith("✗")
