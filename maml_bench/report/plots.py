"""Figures: learning curves in the style of the MAML paper's Figures 3 and 6, and meta-training
loss curves.

Learning curves: one panel per K (shared y), metric against gradient steps at meta-test, one line
per method (its own colour, line style and hollow marker, so overlapping curves stay apart) with
the tables' 95% CI band over test tasks (each task averaged over seeds first, as in `summarize`).
A mean that is NaN/inf or leaves the axis is marked where it does, and the method's legend entry
says "diverged". Every title names the runs' scale.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from maml_bench.report.tables import PAPER_SCALE, UNKNOWN_SCALE, describe_scales  # noqa: E402
from maml_bench.results import atomic_write_bytes  # noqa: E402
from maml_bench.stats import mean_ci, mean_keep_nan  # noqa: E402

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
# The RL methods in the colours of their supervised counterparts.
METHOD_COLORS |= {"maml-trpo": "tab:blue", "fomaml-trpo": "tab:red", "rl-pretrained": "tab:orange",
                  "rl-oracle": "tab:green", "rl-random": "tab:gray",
                  "rl-context-vector": "tab:olive"}
_SPARE_COLORS = ["tab:pink", "tab:cyan", "black", "gold", "navy", "teal", "maroon", "lime"]

_DENSE_DASH = (0, (5, 1))
_DASH_DOT_DOT = (0, (3, 1, 1, 1, 1, 1))
#: Fixed (line style, marker) per method: curves that lie on top of each other (the three
#: multi-task baselines) still show every method's marker and dash pattern.
METHOD_STYLES: dict[str, tuple[object, str]] = {
    "maml": ("-", "o"),
    "fomaml": ("--", "s"),
    "metasgd": ("-.", "v"),
    "reptile": (":", "P"),
    "pretrain": (_DENSE_DASH, "X"),
    "oracle": (_DASH_DOT_DOT, "*"),
    "multitask-noreg": ("-", "h"),
    "multitask-l2": ("--", "<"),
    "multitask-mean": (":", ">"),
    "random": ("-.", "p"),
    "context": (_DENSE_DASH, "d"),
}
METHOD_STYLES |= {"maml-trpo": METHOD_STYLES["maml"], "fomaml-trpo": METHOD_STYLES["fomaml"],
                  "rl-pretrained": METHOD_STYLES["pretrain"], "rl-oracle": METHOD_STYLES["oracle"],
                  "rl-random": METHOD_STYLES["random"],
                  "rl-context-vector": METHOD_STYLES["context"]}
# "^" marks a diverged curve and "D" the paper's values, so no method uses them.
_SPARE_STYLES = [(ls, mk) for mk in ("o", "s", "v", "P", "X", "*", "h", "<", ">", "p", "d")
                 for ls in ("-", "--", "-.", ":", _DENSE_DASH, _DASH_DOT_DOT)]
_DIVERGED_MARKER = "^"
#: legends with more entries than this go under the panels
LEGEND_BESIDE_MAX = 9
#: training curves leave out a method whose runs are this many times shorter than the longest
SHORT_RUN_RATIO = 50
_DIVERGED_TEXT = "diverged: mean NaN/inf or above the axis from here"


def _palette(methods: list[str], everyone: list[str] | None = None) -> dict[str, str]:
    """A colour per method of `methods`, assigned over `everyone` (the experiment's methods,
    in its order) so that a method has one colour in every figure of the experiment, whichever
    of them a figure draws."""
    spare = iter(c for c in _SPARE_COLORS if c not in METHOD_COLORS.values())
    pool = list(dict.fromkeys([*(everyone or []), *methods]))
    colors = {m: METHOD_COLORS.get(m) or next(spare, "black") for m in pool}
    return {m: colors[m] for m in methods}


def method_styles(methods: list[str], everyone: list[str] | None = None
                  ) -> dict[str, tuple[object, str]]:
    """(line style, marker) per method, distinct within `everyone` + `methods` and the same
    in every figure drawn with the same `everyone`."""
    pool = list(dict.fromkeys([*(everyone or []), *methods]))
    used = {METHOD_STYLES[m] for m in pool if m in METHOD_STYLES}
    spare = iter(s for s in _SPARE_STYLES if s not in used)
    styles = {m: METHOD_STYLES.get(m) or next(spare) for m in pool}
    return {m: styles[m] for m in methods}


def scale_title(frame: pd.DataFrame, methods: list[str]) -> str:
    """The scale line of a figure title, from `frame`'s `scale` column (one value per run)."""
    present = [m for m in methods if (frame["method"] == m).any()]
    if "scale" in frame.columns:
        scale = frame["scale"].fillna(UNKNOWN_SCALE).astype(str)
        scales = {m: "+".join(sorted(set(scale[frame["method"] == m]))) for m in present}
    else:
        scales = dict.fromkeys(present, UNKNOWN_SCALE)
    if not scales:
        return ""
    text = describe_scales(scales)
    if all(s == PAPER_SCALE for s in scales.values()):
        return "scale: paper"
    if PAPER_SCALE in scales.values():
        return f"scales: {text}: not all at the paper's protocol"
    return f"scale: {text}: NOT the paper's protocol"


def learning_curve_stats(records: pd.DataFrame, metric: str = "mse") -> pd.DataFrame:
    """Per (method, shots, step): mean, 95% CI (low, high) over test tasks as in the tables
    (NaN and inf kept: a diverged task makes the mean non-finite) and `nonfinite` tasks."""
    data = records[records["metric"] == metric]
    per_task = (mean_keep_nan(data, ["method", "shots", "step", "task"])
                .rename("value").reset_index())
    rows = []
    for (method, shots, step), values in per_task.groupby(["method", "shots", "step"])["value"]:
        mean, low, high, n = mean_ci(values.to_numpy())
        bad = int((~np.isfinite(values.to_numpy())).sum())
        rows.append((method, shots, step, mean, low, high, n, bad))
    return pd.DataFrame(rows, columns=["method", "shots", "step", "mean", "low", "high", "n",
                                       "nonfinite"])


def y_axis(curves: pd.DataFrame, paper_max: float | None = None) -> tuple[str, float, float]:
    """(scale, bottom, top) of a lower-is-better axis.

    Top: a little above the worst mean before adaptation (step 0), so that one diverging curve
    does not flatten the others. Log scale when the curves in view span more than two decades
    (an oracle's 0.001 beside errors of 1 would lie on the zero line otherwise); else linear
    from 0.
    """
    start = curves[curves["step"] == curves["step"].min()]["mean"]
    start = start[np.isfinite(start)]
    top = 1.25 * float(start.max()) if len(start) and start.max() > 0 else 1.0
    if paper_max is not None and math.isfinite(paper_max):
        top = max(top, 1.1 * paper_max)  # keep the paper's marks in view
    means = curves["mean"]
    shown = means[np.isfinite(means) & (means <= top)]
    if len(shown) and (shown > 0).all() and shown.min() < top / 100:
        return "log", float(shown.min()) / 2, top
    return "linear", 0.0, top


def _leaves_axis(curve: pd.DataFrame, top: float | None) -> int | None:
    """First step at which the mean is NaN/inf or above `top`, else None."""
    bad = ~np.isfinite(curve["mean"])
    if top is not None:
        bad |= curve["mean"] > top
    return int(curve.loc[bad, "step"].min()) if bad.any() else None


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
    everyone: list[str] | None = None,
) -> Path:
    """Write a PNG (dpi 150) of `metric` against gradient steps, one panel per shots value.

    Methods are drawn in the order of `methods`; those absent from `records` are skipped with a
    warning. `paper` (columns experiment, method, shots, steps, metric, paper) adds the paper's
    numbers as unconnected hollow diamonds. `records` must hold a single experiment; its
    `scale` column (see `report.experiment.experiment_records`) is named in the title.

    Where lower is better, the y axis is capped (see `y_axis`) and may be logarithmic; a mean
    that is NaN/inf or above the cap is marked with a triangle at the top edge where it leaves,
    and the panel says how many tasks were not finite.
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
    curves = learning_curve_stats(data, metric)
    curves = curves[curves["shots"].isin(shots_list)]
    colors, styles = _palette(drawn, everyone), method_styles(drawn, everyone)

    if paper is not None:
        paper = paper[(paper["metric"] == metric) & paper["method"].isin(drawn)]
        if experiments:
            paper = paper[paper["experiment"].isin(experiments)]
        paper = paper[paper["shots"].isin(shots_list)].dropna(subset=["paper"])
    axis = None
    if lower_is_better and len(curves):
        axis = y_axis(curves, float(paper["paper"].max()) if paper is not None and len(paper)
                      else None)
    top = axis[2] if axis else None
    diverged: dict[str, list[int]] = {}
    for (m, shots), c in curves.groupby(["method", "shots"]):
        if _leaves_axis(c, top) is not None:
            diverged.setdefault(m, []).append(int(shots))
    labels = {m: method_labels.get(m, m) + (
        f" (diverged: K = {', '.join(map(str, sorted(diverged[m])))})" if m in diverged else "")
        for m in drawn}

    n = max(len(shots_list), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
    try:
        handles: dict[str, object] = {}
        for ax, shots in zip(axes[0], shots_list, strict=False):
            panel = curves[curves["shots"] == shots]
            if panel.empty:
                log.warning("no records for K = %s in %s", shots, out_path.name)
            leaving = []
            for i, m in enumerate(drawn):
                curve = panel[panel["method"] == m].sort_values("step")
                if curve.empty:
                    continue
                # Long curves mark every third step, each method at another offset, so that
                # curves lying on top of each other still show each method's marker.
                every = (i % 3, 3) if len(curve) > 6 else None
                _draw_curve(ax, curve, labels[m], colors[m], styles[m], axis, every)
                step = _leaves_axis(curve, top)
                if step is not None:
                    leaving.append((m, step, curve))
            if paper is not None:
                for m in drawn:
                    pts = paper[(paper["method"] == m) & (paper["shots"] == shots)]
                    if len(pts):
                        ax.plot(pts["steps"], pts["paper"], linestyle="none", marker="D",
                                markersize=6, markerfacecolor="white", markeredgecolor=colors[m],
                                label=f"{method_labels.get(m, m)} (paper)")
            if axis:
                ax.set_yscale(axis[0])
                ax.set_ylim(axis[1], axis[2])
            notes = _mark_leaving(ax, leaving, colors, method_labels)
            ax.set_title(f"K = {shots}")
            ax.set_xlabel("number of gradient steps")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3, which="both" if axis and axis[0] == "log" else "major")
            for h, lb in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lb, h)
            if notes:  # below the x label: inside the panel they would cover a curve
                ax.annotate("\n".join(notes), xy=(0.0, 0.0),
                            xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -3),
                            textcoords="offset points", va="top", fontsize="x-small",
                            color="dimgray")
        if diverged:
            handles[_DIVERGED_TEXT] = Line2D([], [], linestyle="none", marker=_DIVERGED_MARKER,
                                             color="gray", markeredgecolor="black")
        _legend(fig, handles, [labels[m] for m in drawn])
        _title(fig, title, scale_title(data, drawn))
    except BaseException:
        plt.close(fig)
        raise
    return save_png(fig, out_path)


def _draw_curve(ax: plt.Axes, curve: pd.DataFrame, label: str, color: str,
                style: tuple[object, str], axis: tuple[str, float, float] | None,
                markevery: tuple[int, int] | None) -> None:
    finite = np.isfinite(curve["mean"])
    # Values above the axis are drawn and clipped (the line visibly leaves); NaN/inf end it.
    ax.plot(curve["step"], curve["mean"].where(finite), color=color, linestyle=style[0],
            marker=style[1], markerfacecolor="none", markersize=5, linewidth=1.4,
            markevery=markevery, label=label)
    # The band only where the mean is in view: a diverged step's +-1e3 band would cover the
    # panel, and a negative lower bound has no place on a log axis.
    shown = finite & (curve["mean"] <= axis[2]) if axis else finite
    low = curve["low"].clip(lower=axis[1]) if axis else curve["low"]
    ax.fill_between(curve["step"], low.where(shown), curve["high"].where(shown), color=color,
                    alpha=0.15, linewidth=0)


def _mark_leaving(ax: plt.Axes, leaving: list[tuple[str, int, pd.DataFrame]],
                  colors: dict[str, str], labels: dict[str, str]) -> list[str]:
    """A triangle on the top edge where each curve leaves the axis; a note per method."""
    top = ax.get_ylim()[1]
    notes = []
    for m, step, curve in leaving:
        ax.plot([step], [top], linestyle="none", marker=_DIVERGED_MARKER, markersize=9,
                color=colors[m], markeredgecolor="black", clip_on=False, zorder=5)
        bad = int(curve["nonfinite"].max())
        what = f"; up to {bad} task(s) NaN/inf" if bad else ""
        notes.append(f"{labels.get(m, m)}: off the axis from step {step}{what}")
    return notes


def _legend(fig: plt.Figure, handles: dict[str, object], order: list[str]) -> None:
    """One legend for the whole figure, methods in the requested order, then paper marks."""
    if not handles:
        return
    keys = [k for k in order if k in handles] + [k for k in handles if k not in order]
    # Outside the panels: inside one, a legend hides curves. A long one goes under them in
    # columns, where beside them it would be taller than the panels and as wide as one.
    if len(keys) > LEGEND_BESIDE_MAX:
        fig.legend([handles[k] for k in keys], keys, fontsize="small", loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(4, math.ceil(len(keys) / 4)),
                   frameon=False)
        return
    fig.legend([handles[k] for k in keys], keys, fontsize="small", loc="center left",
               bbox_to_anchor=(1.0, 0.5))


def save_png(fig: plt.Figure, out_path: Path) -> Path:
    """Lay out, render (dpi 150) and close `fig`, then write the PNG atomically (a temp file in
    the same folder renamed over `out_path`)."""
    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(out_path), buf.getvalue())
    return Path(out_path)


def _title(fig: plt.Figure, title: str | None, scale: str) -> None:
    text = "\n".join(t for t in (title, scale) if t)
    if text:
        fig.suptitle(text)


def plot_training_curves(
    logs: pd.DataFrame,
    out_path: Path,
    methods: list[str],
    method_labels: dict[str, str],
    title: str | None = None,
    val_label: str = "validation metric",
    loss_label: str = "training loss (mean over the logging interval)",
    sign: float = 1.0,
    log_y: bool = True,
    everyone: list[str] | None = None,
) -> Path:
    """Write a PNG of meta-training loss against iteration, one line per (method, seed), log y
    (RL: `sign=-1`, `log_y=False` draw the average return that its train_loss negates);
    where runs recorded a validation curve (column `val_metric`), a second panel shows it, so a
    reader sees whether training had converged.

    `logs` has columns method, seed, iteration, train_loss (and `scale`, named in the title).
    `everyone` (both functions): the experiment's methods, over which colours and line styles
    are assigned, so a method looks the same in all of its figures.
    Methods follow the order of `methods` (others after them). A NaN/inf loss cannot be drawn
    on a log axis: the line ends and a cross on the top edge marks the first such iteration.
    """
    out_path = Path(out_path)
    present = list(dict.fromkeys(logs["method"]))
    order = [m for m in methods if m in present] + sorted(set(present) - set(methods))
    colors, styles = _palette(order, everyone), method_styles(order, everyone)
    # A baseline trained a few iterations next to runs of thousands is a lone dot at the left
    # edge that says nothing: named under the figure instead.
    last = logs.groupby("method")["iteration"].max()
    brief = brief_methods(logs, order)
    order = [m for m in order if m not in brief]
    logs = logs[logs["method"].isin(order)]
    has_val = "val_metric" in logs.columns and logs["val_metric"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(13 if has_val else 8, 4.5),
                             squeeze=False)
    ax = axes[0][0]
    try:
        bad: list[tuple[float, str]] = []
        for m in order:
            runs = logs[logs["method"] == m]
            n_seeds = runs["seed"].nunique()
            label = f"{method_labels.get(m, m)} ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
            for i, (_, run) in enumerate(runs.groupby("seed", sort=True)):
                run = run.sort_values("iteration")
                loss = sign * run["train_loss"].astype(float)
                finite = np.isfinite(loss)
                drawn = finite & (loss > 0) if log_y else finite
                if log_y and (finite & (loss <= 0)).any():
                    log.warning("%s: non-positive training losses are not drawn (log axis)", m)
                ax.plot(run["iteration"], loss.where(drawn), color=colors[m],
                        linestyle=styles[m][0], marker=styles[m][1], markerfacecolor="none",
                        markersize=5, markevery=max(1, len(run) // 8), linewidth=1.2,
                        alpha=0.85, label=label if i == 0 else "_nolegend_")
                if not finite.all():
                    bad.append((float(run.loc[~finite, "iteration"].min()), colors[m]))
        if log_y:
            ax.set_yscale("log")
        top = ax.get_ylim()[1]
        for iteration, color in bad:
            ax.plot([iteration], [top], linestyle="none", marker="X", markersize=9, color=color,
                    markeredgecolor="black", clip_on=False, zorder=5)
        handles, names = ax.get_legend_handles_labels()
        if bad:
            handles.append(Line2D([], [], linestyle="none", marker="X", color="gray",
                                  markeredgecolor="black"))
            names.append("NaN/inf training loss from here")
        # Beside the last panel, so it covers no curve.
        axes[0][-1].legend(handles, names, fontsize="small", loc="center left",
                           bbox_to_anchor=(1.0, 0.5))
        ax.set_xlabel("meta-training iteration")
        ax.set_ylabel(loss_label)
        ax.grid(alpha=0.3, which="both")
        if has_val:
            _validation_panel(axes[0][1], logs, order, colors, styles, val_label)
        _title(fig, title, scale_title(logs, order))
        if brief:
            fig.text(0.01, 0.005, "not drawn (trained for at most "
                     f"{int(last[brief].max()):,} iterations): "
                     + ", ".join(method_labels.get(m, m) for m in brief),
                     fontsize="small", ha="left", va="bottom")
    except BaseException:
        plt.close(fig)
        raise
    return save_png(fig, out_path)


def brief_methods(logs: pd.DataFrame, order: list[str]) -> list[str]:
    """The methods of `order` whose runs are SHORT_RUN_RATIO times shorter than the longest."""
    last = logs.groupby("method")["iteration"].max()
    return [m for m in order if last[m] * SHORT_RUN_RATIO < last.max()]


def _validation_panel(ax: plt.Axes, logs: pd.DataFrame, order: list[str],
                      colors: dict[str, str], styles: dict[str, tuple[object, str]],
                      label: str) -> None:
    """The validation metric against iteration, one line per (method, seed)."""
    for m in order:
        for _, run in logs[logs["method"] == m].groupby("seed", sort=True):
            run = run.dropna(subset=["val_metric"]).sort_values("iteration")
            if len(run):
                ax.plot(run["iteration"], run["val_metric"], color=colors[m],
                        linestyle=styles[m][0], marker=styles[m][1], markerfacecolor="none",
                        markersize=5, markevery=max(1, len(run) // 8), linewidth=1.2)
    ax.set_xlabel("meta-training iteration")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
