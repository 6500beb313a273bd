"""Learning-curve figures in the style of the MAML paper's Figures 3 and 6.

One panel per K (shared y), metric against gradient steps at meta-test, one line per method with
a bootstrap 95% CI band over test tasks (each task averaged over seeds first, as in `summarize`).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from maml_bench.results import atomic_write_bytes  # noqa: E402
from maml_bench.stats import mean_keep_nan  # noqa: E402

log = logging.getLogger(__name__)

#: Fixed colours so a method looks the same in every figure; others get the rest in order.
METHOD_COLORS: dict[str, str] = {
    "maml": "tab:blue",
    "pretrain": "tab:orange",
    "oracle": "tab:green",
    "fomaml": "tab:red",
    "reptile": "tab:purple",
    "metasgd": "tab:brown",
    "random": "tab:gray",
    "context": "tab:olive",
}
_SPARE_COLORS = ["tab:pink", "tab:cyan", "black", "gold", "navy", "teal", "maroon", "lime"]


def _palette(methods: list[str]) -> dict[str, str]:
    spare = iter(c for c in _SPARE_COLORS if c not in METHOD_COLORS.values())
    return {m: METHOD_COLORS.get(m) or next(spare, "black") for m in methods}


def plot_learning_curves(
    records: pd.DataFrame,
    out_path: Path,
    methods: list[str],
    method_labels: dict[str, str],
    shots_list: list[int],
    metric: str = "mse",
    ylabel: str = "mean squared error",
    title: str | None = None,
    paper: pd.DataFrame | None = None,
    lower_is_better: bool = True,
) -> Path:
    """Write a PNG (dpi 150) of `metric` against gradient steps, one panel per shots value.

    Methods are drawn in the order of `methods`; those absent from `records` are skipped with a
    warning. `paper` (columns experiment, method, shots, steps, metric, paper) adds the paper's
    numbers as unconnected markers. `records` must hold a single experiment.

    Where lower is better, the y axis runs from 0 to a little above the worst error before
    adaptation, so that one diverging curve does not flatten the others; curves that leave the
    axis and tasks whose value is not finite (not drawn) are named in the panel.
    """
    out_path = Path(out_path)
    data = records[records["metric"] == metric]
    experiments = sorted(data["experiment"].unique())
    if len(experiments) > 1:
        raise ValueError(f"records mix experiments {experiments}; plot one at a time")

    present = set(data["method"])
    for m in methods:
        if m not in present:
            log.warning("no %r records for method %r; left out of %s", metric, m, out_path.name)
    drawn = [m for m in methods if m in present]
    data = data[data["method"].isin(drawn)]
    if data["value"].isna().any():
        bad = sorted(data.loc[data["value"].isna(), "method"].unique())
        log.warning("NaN values (divergence?) for %s are not drawn in %s", bad, out_path.name)

    # Average over seeds per task: the CI band is over test tasks, as in the tables.
    # A task that is NaN for any seed stays NaN (and is not drawn) rather than being hidden.
    per_task = (mean_keep_nan(data, ["method", "shots", "step", "task"])
                .rename("value").reset_index())
    finite = per_task["value"].map(math.isfinite)
    per_task.loc[~finite, "value"] = float("nan")
    per_task["label"] = per_task["method"].map(lambda m: method_labels.get(m, m))
    labels = [method_labels.get(m, m) for m in drawn]
    colors = _palette(drawn)
    palette = {method_labels.get(m, m): colors[m] for m in drawn}

    if paper is not None:
        paper = paper[(paper["metric"] == metric) & paper["method"].isin(drawn)]
        if experiments:
            paper = paper[paper["experiment"].isin(experiments)]
        paper = paper.dropna(subset=["paper"])

    n = max(len(shots_list), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    try:
        handles: dict[str, object] = {}
        for ax, shots in zip(axes[0], shots_list, strict=False):
            panel = per_task[per_task["shots"] == shots]
            if panel.empty:
                log.warning("no records for K = %s in %s", shots, out_path.name)
            else:
                sns.lineplot(
                    data=panel,
                    x="step",
                    y="value",
                    hue="label",
                    hue_order=[lb for lb in labels if lb in set(panel["label"])],
                    palette=palette,
                    errorbar=("ci", 95),
                    n_boot=1000,
                    seed=0,
                    ax=ax,
                )
            if paper is not None:
                for m in drawn:
                    pts = paper[(paper["method"] == m) & (paper["shots"] == shots)]
                    if len(pts):
                        ax.plot(
                            pts["steps"],
                            pts["paper"],
                            linestyle="none",
                            marker="D",
                            markersize=6,
                            markerfacecolor="white",
                            markeredgecolor=colors[m],
                            label=f"{method_labels.get(m, m)} (paper)",
                        )
            notes = _panel_notes(per_task[per_task["shots"] == shots], finite, method_labels)
            ax.set_title(f"K = {shots}")
            ax.set_xlabel("number of gradient steps")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            for h, lb in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lb, h)
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            if lower_is_better and len(per_task):
                cap = _y_cap(per_task)
                if paper is not None and len(paper):
                    cap = max(cap, 1.1 * float(paper["paper"].max()))  # keep paper marks in view
                ax.set_ylim(0, cap)
                notes += _off_scale(per_task[per_task["shots"] == shots], cap, method_labels)
            if notes:
                ax.text(0.02, 0.98, "\n".join(notes), transform=ax.transAxes, va="top",
                        fontsize="x-small", color="dimgray")
        if handles:
            # One legend for the whole figure, in the last panel; method order as requested.
            order = labels + [f"{lb} (paper)" for lb in labels]
            keys = [k for k in order if k in handles] + [k for k in handles if k not in order]
            entries = ([handles[k] for k in keys], keys)
            if len(keys) <= 6:
                axes[0][-1].legend(*entries, fontsize="small", loc="best")
            else:  # a long legend would hide a panel: put it beside the figure
                fig.legend(*entries, fontsize="small", loc="center left",
                           bbox_to_anchor=(1.0, 0.5))
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    # atomic_write_bytes writes a temp file in the same folder and renames it over out_path.
    atomic_write_bytes(out_path, buf.getvalue())
    return out_path


def _y_cap(per_task: pd.DataFrame) -> float:
    """A little above the largest mean error before adaptation (step 0) of any method."""
    start = per_task[per_task["step"] == per_task["step"].min()]
    worst = start.groupby(["method", "shots"])["value"].mean().max()
    return 1.25 * float(worst) if math.isfinite(worst) and worst > 0 else 1.0


def _panel_notes(panel: pd.DataFrame, finite: pd.Series, labels: dict[str, str]) -> list[str]:
    bad = panel[~finite.loc[panel.index]]
    notes = []
    for method, rows in bad.groupby("method"):
        notes.append(f"{labels.get(method, method)}: {rows['task'].nunique()} task(s) diverged "
                     "(not drawn)")
    return notes


def _off_scale(panel: pd.DataFrame, cap: float, labels: dict[str, str]) -> list[str]:
    means = panel.groupby(["method", "step"])["value"].mean()
    above = means[means > cap]
    return [f"{labels.get(m, m)}: above the axis from step "
            f"{int(rows.index.get_level_values(1).min())}" for m, rows in above.groupby(level=0)]
