"""The paper's Figure 2: what a method's fit looks like after 1 and 10 fine-tuning steps on K
points, one panel per (K, method), beside the true function and the K points."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from maml_bench.report.plots import _title, save_png  # noqa: E402

#: line style per curve; colours follow the step count, as in the paper's figure
_STEP_STYLES = {0: ("tab:gray", ":"), 1: ("tab:green", "-"), 10: ("tab:red", "--")}


def plot_fits(fits: dict[str, pd.DataFrame], out_path: Path, method_labels: dict[str, str],
              shots: list[int], steps: list[int], title: str | None = None, scale: str = "",
              task: int = 0) -> Path:
    """Write a PNG: rows = K, columns = methods (the keys of `fits`, each a `fits.csv.gz` of
    one run); in each panel the true function, the fit before adapting and after each of
    `steps` steps, and the K points used to adapt, for fixed test task `task`."""
    methods = list(fits)
    fig, axes = plt.subplots(len(shots), len(methods), figsize=(4.2 * len(methods),
                             3.2 * len(shots)), sharex=True, squeeze=False)
    try:
        for row, k in enumerate(shots):
            for col, method in enumerate(methods):
                ax = axes[row][col]
                frame = fits[method]
                frame = frame[(frame["shots"] == k) & (frame["task"] == task)]
                _panel(ax, frame, [0, *steps])
                ax.set_title(f"{method_labels.get(method, method)}, K = {k}")
                if col == 0:
                    ax.set_ylabel("y")
                if row == len(shots) - 1:
                    ax.set_xlabel("x")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize="small", loc="center left",
                   bbox_to_anchor=(1.0, 0.5))
        _title(fig, title, scale)
    except BaseException:
        plt.close(fig)
        raise
    return save_png(fig, out_path)


def _panel(ax: plt.Axes, frame: pd.DataFrame, steps: list[int]) -> None:
    truth = frame[frame["kind"] == "truth"].sort_values("x")
    ax.plot(truth["x"], truth["y"], color="black", lw=2, label="ground truth")
    for step in steps:
        curve = frame[(frame["kind"] == "prediction") & (frame["step"] == step)].sort_values("x")
        if curve.empty:
            continue
        color, style = _STEP_STYLES.get(step, ("tab:blue", "-."))
        name = "before adapting" if step == 0 else f"after {step} step{'s' * (step > 1)}"
        ax.plot(curve["x"], curve["y"], color=color, ls=style, label=name)
    points = frame[frame["kind"] == "support"]
    ax.scatter(points["x"], points["y"], marker="^", color="tab:purple", zorder=3,
               label="points used for the gradient")
    # The truth sets the scale: a fit that diverges must not flatten the panel.
    span = max(float(truth["y"].abs().max()), 1.0) if len(truth) else 5.0
    ax.set_ylim(-1.6 * span, 1.6 * span)
    ax.grid(alpha=0.3)
