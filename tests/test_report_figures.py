"""Figures that cannot be misread: every method visible, divergence shown, the scale named,
and the meta-training curves drawn from each run's train_log.csv."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from test_report_scale import EXPERIMENT, config_at, write_run

from maml_bench.report import plots
from maml_bench.report.experiment import build_figures
from maml_bench.report.plots import learning_curve_stats, plot_learning_curves, y_axis


@pytest.fixture
def figures(monkeypatch) -> list[plt.Figure]:
    """Every figure the plot functions draw, kept for inspection after they close it."""
    drawn: list[plt.Figure] = []
    close = plt.close

    def keep(fig: plt.Figure) -> None:
        drawn.append(fig)
        close(fig)

    monkeypatch.setattr(plots.plt, "close", keep)
    return drawn


def _curves(levels: dict[str, list[float]], scale: str = "quick") -> pd.DataFrame:
    """Records (K = 5, 10 tasks, 1 seed) whose per-step mean for each method is `levels`."""
    rows = [(m, step, task, level + 0.01 * level * (task - 4.5))
            for m, values in levels.items() for step, level in enumerate(values)
            for task in range(10)]
    frame = pd.DataFrame(rows, columns=["method", "step", "task", "value"])
    return frame.assign(experiment="exp", seed=0, shots=5, metric="mse", scale=scale)


LEVELS = {
    "maml": [3.0, 0.6, 1e6, 2e6],  # leaves the axis at step 2; 2 tasks inf at step 3
    "pretrain": [3.0, 2.5, 2.4, 2.4],
    "oracle": [0.0012] * 4,  # flat on the zero line of a linear axis
    "multitask-noreg": [4.0, 4.0, 4.0, 4.0],  # two baselines on top of each other
    "multitask-l2": [4.0, 4.0, 4.0, 4.0],
}
LABELS = {"maml": "MAML", "pretrain": "pretrained", "oracle": "oracle"}


def _legend_texts(fig: plt.Figure) -> list[str]:
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_learning_curves_show_every_method_divergence_and_the_oracle(tmp_path, figures) -> None:
    records = _curves(LEVELS)
    records.loc[(records["method"] == "maml") & (records["step"] == 3) & (records["task"] > 7),
                "value"] = np.inf
    plot_learning_curves(records, tmp_path / "f.png", list(LEVELS), LABELS, [5], title="Sin")
    (fig,) = figures
    ax = fig.axes[0]
    # The oracle's 0.0012 is in view, on a log axis; the cap is not moved by MAML's 1e6.
    assert ax.get_yscale() == "log"
    low, high = ax.get_ylim()
    assert low < 0.0012 and high == pytest.approx(1.25 * 4.0)
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    styles = {(str(ln.get_linestyle()), ln.get_marker()) for ln in lines.values()}
    assert len(styles) == len(LEVELS)  # every method its own line style and marker
    assert len({ln.get_marker() for ln in lines.values()}) == len(LEVELS)
    noreg, l2 = lines["multitask-noreg"], lines["multitask-l2"]
    assert noreg.get_markevery() != l2.get_markevery() or noreg.get_marker() != l2.get_marker()
    # MAML is named as diverged, and a triangle on the top edge marks where it leaves.
    texts = _legend_texts(fig)
    assert "MAML (diverged: K = 5)" in texts and "pretrained" in texts
    assert any(t.startswith("diverged") for t in texts)
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "^" and not ln.get_clip_on()]
    assert [(ln.get_xdata()[0], ln.get_ydata()[0]) for ln in marks] == [(2, high)]
    assert "MAML: off the axis from step 2; up to 2 task(s) NaN/inf" in [
        t.get_text() for t in ax.texts]
    assert fig.get_suptitle() == "Sin\nscale: quick: NOT the paper's protocol"


def test_learning_curve_titles_name_mixed_scales(tmp_path, figures) -> None:
    records = pd.concat([_curves({"maml": LEVELS["pretrain"]}, "paper"),
                         _curves({"pretrain": LEVELS["pretrain"]}, "custom")])
    plot_learning_curves(records, tmp_path / "f.png", ["maml", "pretrain"], {}, [5], title="T")
    assert figures[0].get_suptitle() == (
        "T\nscales: paper (maml); custom (pretrain): not all at the paper's protocol")
    plot_learning_curves(records[records["method"] == "maml"], tmp_path / "g.png", ["maml"],
                         {}, [5], title="T")
    assert figures[1].get_suptitle() == "T\nscale: paper"


def test_y_axis_is_linear_from_zero_unless_curves_span_two_decades() -> None:
    close = learning_curve_stats(_curves({"a": [3.0, 1.0, 0.5], "b": [3.0, 2.0, 0.1]}))
    assert y_axis(close) == ("linear", 0.0, pytest.approx(3.75))
    assert y_axis(close, paper_max=5.0) == ("linear", 0.0, pytest.approx(5.5))
    wide = learning_curve_stats(_curves({"a": [3.0, 1.0], "oracle": [0.001, 0.001]}))
    scale, low, high = y_axis(wide)
    assert scale == "log" and low == pytest.approx(0.0005, rel=0.05) and high == 3.75


def _train_log(losses: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"iteration": 100 * np.arange(1, len(losses) + 1), "train_loss": losses})


def test_build_figures_draws_meta_training_curves(tmp_path, figures) -> None:
    quick = config_at("quick")
    for seed in range(2):
        write_run(tmp_path, EXPERIMENT, "maml", seed, quick, 0.67,
                  train_log=_train_log([2.0, 1.0, 0.5, 0.3]))
    write_run(tmp_path, EXPERIMENT, "fomaml", 0, quick, 0.8,
              train_log=_train_log([2.0, 1.5, np.inf, np.nan]))
    paths = build_figures(EXPERIMENT, tmp_path)
    path = tmp_path / EXPERIMENT / "figures" / "training-curves.png"
    assert path in paths and path.read_bytes().startswith(b"\x89PNG")
    (fig,) = [f for f in figures if "meta-training loss" in f.get_suptitle()]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    runs = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 4]
    assert len(runs) == 3  # one line per method and seed
    texts = _legend_texts(fig)
    assert {"MAML (2 seeds)", "first-order MAML (1 seed)"} <= set(texts)
    assert "NaN/inf training loss from here" in texts
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "X" and not ln.get_clip_on()]
    assert [ln.get_xdata()[0] for ln in crosses] == [300]
    assert "scale: quick" in fig.get_suptitle()


def test_build_figures_without_train_logs_warns(tmp_path, caplog) -> None:
    write_run(tmp_path, EXPERIMENT, "maml", 0, config_at("quick"), 0.67)
    with caplog.at_level(logging.WARNING, logger="maml_bench.report.experiment"):
        paths = build_figures(EXPERIMENT, tmp_path)
    assert "training-curves.png not drawn" in caplog.text
    assert not (tmp_path / EXPERIMENT / "figures" / "training-curves.png").exists()
    assert all(p.exists() for p in paths)


def test_figure_without_any_of_its_methods_is_not_drawn(tmp_path, caplog):
    from maml_bench.cli import main

    out = tmp_path / "out"
    assert main(["run", "--scale", "tiny", "--method", "multitask-l2", "--no-report",
                 "--out", str(out)]) == 0
    assert main(["plot", "--out", str(out)]) == 0
    figures = out / "sinusoid-table2-v1" / "figures"
    assert not (figures / "figure3.png").exists()  # maml, pretrain, oracle: none ran
    assert (figures / "all-methods.png").exists()
    assert "figure3: none of its methods has records" in caplog.text


def test_training_curves_show_the_validation_curve_when_recorded(tmp_path, figures) -> None:
    logs = pd.DataFrame({"method": "maml", "seed": 0, "scale": "quick",
                         "iteration": [10, 20, 30], "train_loss": [1.0, 0.5, 0.3],
                         "val_metric": [60.0, float("nan"), 80.0]})
    plots.plot_training_curves(logs, tmp_path / "t.png", ["maml"], {"maml": "MAML"},
                               val_label="validation accuracy")
    fig = figures[-1]
    val = fig.axes[1]
    assert val.get_ylabel() == "validation accuracy"
    (line,) = val.get_lines()
    assert list(line.get_xdata()) == [10, 30] and list(line.get_ydata()) == [60.0, 80.0]
    plots.plot_training_curves(logs.drop(columns="val_metric"), tmp_path / "u.png", ["maml"],
                               {"maml": "MAML"})
    assert len(figures[-1].axes) == 1  # no validation curve recorded: one panel


def test_a_method_has_one_colour_and_style_in_every_figure_of_its_experiment():
    """Navigation's oracle was navy in curves.png and yellow in training-curves.png: colours
    came from the methods each figure drew. Assigned over the experiment's methods, a subset
    keeps them."""
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.report.plots import _palette, method_styles

    everyone = [m.algorithm for m in EXPERIMENTS.get("navigation2d-v1").methods]
    full = _palette(everyone, everyone), method_styles(everyone, everyone)
    for subset in (everyone[::-1], everyone[2:], ["rl-oracle"], [everyone[-1], everyone[0]]):
        colors, styles = _palette(subset, everyone), method_styles(subset, everyone)
        assert colors == {m: full[0][m] for m in subset}
        assert styles == {m: full[1][m] for m in subset}
    assert len(set(full[0].values())) == len(everyone)  # and distinct


def test_baselines_trained_a_few_iterations_are_named_not_drawn(tmp_path):
    """A baseline of 10 iterations beside runs of 70,000 was a lone dot at the left edge."""
    from maml_bench.report.plots import brief_methods, plot_training_curves

    rows = [("maml", 0, it, 1.0 / it) for it in range(100, 70_001, 100)]
    rows += [("multitask-noreg", 0, it, 4.0) for it in (5, 10)]
    logs = pd.DataFrame(rows, columns=["method", "seed", "iteration", "train_loss"])
    assert brief_methods(logs, ["maml", "multitask-noreg"]) == ["multitask-noreg"]
    assert brief_methods(logs[logs["method"] == "maml"], ["maml"]) == []
    path = plot_training_curves(logs, tmp_path / "t.png", ["maml", "multitask-noreg"], {})
    assert path.read_bytes().startswith(b"\x89PNG")
