"""The profile's files: a markdown report and a CSV (one row per configuration, meta-batch and
inner steps), time and memory figures, and the operator tables. All written atomically."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from maml_bench.profile.measure import ORDERS, PATHS, OpsProfile
from maml_bench.profile.peak import Peak
from maml_bench.results import atomic_write_text

ORDER_NAMES = {"so": "second order", "fo": "first order"}


@dataclass
class Report:
    rows: list[dict[str, Any]]
    ops: list[OpsProfile]
    peak: Peak
    device: str  # for people
    slug: str  # for file names
    memory_measure: str
    repeats: int
    budget_s: float
    warmup: int
    command: str
    skipped_ops: list[str] = field(default_factory=list)
    note: str = ""  # e.g. that the run was interrupted


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    return a / b.where(b > 0)


def build_frame(rows: list[dict[str, Any]], peak: Peak) -> pd.DataFrame:
    """The measured columns plus what follows from them: FLOP/s, fraction of the measured peak,
    second/first-order and loop/ours ratios (exact ratios of the time and memory columns)."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # Second order before first, ours before loop (the sweep measures them the other way).
    measured = [f"{o}_{p}_{what}" for o in ORDERS for p in PATHS
                for what in ("ms", "median_ms", "peak_mib", "repeats", "skipped")]
    frame = frame[[c for c in frame.columns if c not in measured] + measured]
    for order in ORDERS:
        for path in PATHS:
            seconds = frame[f"{order}_{path}_ms"] / 1e3
            frame[f"{order}_{path}_gflops_s"] = frame[f"flops_{order}"] / seconds / 1e9
            frame[f"{order}_{path}_peak_frac"] = frame[f"flops_{order}"] / seconds / peak.best
        frame[f"{order}_loop_over_ours"] = _ratio(frame[f"{order}_loop_ms"],
                                                     frame[f"{order}_ours_ms"])
    for path in PATHS:
        suffix = "" if path == "ours" else "_loop"
        frame[f"so_over_fo_time{suffix}"] = _ratio(frame[f"so_{path}_ms"], frame[f"fo_{path}_ms"])
        frame[f"so_over_fo_memory{suffix}"] = _ratio(frame[f"so_{path}_peak_mib"],
                                                     frame[f"fo_{path}_peak_mib"])
    frame["so_over_fo_flops"] = _ratio(frame["flops_so"], frame["flops_fo"])
    return frame


def write_report(report: Report, out: Path) -> list[Path]:
    """Write profile-<device>.md/.csv, -time.png, -memory.png and -ops.md under `out`."""
    frame = build_frame(report.rows, report.peak)
    stem = f"profile-{report.slug}"
    paths = [out / f"{stem}.csv", out / f"{stem}.md"]
    atomic_write_text(paths[0], frame.to_csv(index=False))
    atomic_write_text(paths[1], render_markdown(report, frame))
    memory = ("growth of the resident set (see the .md)" if report.slug == "cpu"
              else "torch.cuda.max_memory_allocated above the start")
    paths += [plot(frame, "ms", "ms per meta-iteration", out / f"{stem}-time.png", report,
                   f"time: minimum of up to {report.repeats} steps"),
              plot(frame, "peak_mib", "peak memory of a meta-iteration (MiB)",
                   out / f"{stem}-memory.png", report, f"memory: {memory}")]
    paths.append(out / f"{stem}-ops.md")
    atomic_write_text(paths[-1], render_ops(report))
    return paths


def _num(value: float, fmt: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, fmt) + suffix


def _ms(value: float) -> str:
    """Three significant figures, whole numbers from 100 on (ms and MiB)."""
    if not math.isfinite(value):
        return "–"
    return format(value, "#.3g" if value < 100 else ",.0f")


def _when(part: pd.DataFrame) -> str:
    """When a configuration was measured and how busy the machine was meanwhile."""
    if "measured_at" not in part or "load_1min" not in part:
        return ""
    dates = sorted(set(part["measured_at"].astype(str)))
    low, high = part["load_1min"].min(), part["load_1min"].max()
    return (f"Measured {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")
            + f"; 1-minute load average {low:.2f}-{high:.2f} (the profile itself counts about "
            "1 on a CPU: higher means other work shared the machine).")


def render_markdown(report: Report, frame: pd.DataFrame) -> str:
    peak = report.peak
    lines = [
        f"# What second order costs: MAML meta-iteration profile, {report.slug}", "",
        f"{report.device}; {time.strftime('%Y-%m-%d %H:%M')}; `{report.command}`.", "",
        *([f"**{report.note}**", ""] if report.note else []),
        "A meta-iteration is the meta-gradient of one meta-batch: forward, inner steps and "
        "outer backward (no optimizer step), on random inputs of the paper's shapes with the "
        "real networks. *ours*: the default backend (`--set path=auto`: tasks batched, one "
        "baddbmm per layer for the MLP, tasks as groups of one grouped convolution for Conv4, "
        "with hand-written second derivatives (`fused`) for Conv4's second order), in the "
        "tasks per pass `task_chunk=auto` takes (on the CPU: as many as keep a pass's "
        "first-layer activations in cache, core/chunking.py); *loop*: the "
        "per-task autograd loop (`reference_meta_loss`, the learn2learn / `higher` way). SO / "
        "FO: second / first order (FOMAML).", "",
        f"* Time: the minimum over up to {report.repeats} timed steps after {report.warmup} "
        "warm-up step(s) (median in the CSV); " + (
            "CUDA events, the queue synchronized before and after each step."
            if report.slug != "cpu" else "time.perf_counter.") +
        f" A measurement that would take more than {report.budget_s:g} s (or, predicted "
        "from the smaller ones, more memory than is free) is skipped with its reason.",
        f"* Memory: {report.memory_measure}.",
        "* FLOPs: torch.utils.flop_counter.FlopCounterMode over the whole meta-step, double "
        "backward included, counted on the meta device in the per-task form for one task times "
        "the tasks (the counter ignores groups in a grouped convolution's weight gradient). "
        "Matmuls and convolutions only; elementwise work (batch norm, ReLU) is not counted.",
        f"* Measured peak: matmul {peak.matmul_flops_s / 1e9:,.1f} GFLOP/s "
        f"({peak.matmul_shape}), 3x3 convolution {peak.conv_flops_s / 1e9:,.1f} GFLOP/s "
        f"({peak.conv_shape}); \"% peak\" is achieved FLOP/s over the higher of the two.", "",
    ]
    if frame.empty:
        return "\n".join([*lines, "Nothing was measured.", ""])
    lines += paper_summary(frame)
    head = ("| meta-batch | steps | SO ms | FO ms | SO/FO time | SO MiB | FO MiB | SO/FO memory "
            "| loop SO ms | loop FO ms | loop/ours SO | loop/ours FO | SO GFLOP | FO GFLOP "
            "| forward GFLOP | SO GFLOP/s (% peak) |")
    for name, part in frame.groupby("config", sort=False):
        first = part.iloc[0]
        lines += [f"## {name}: {first['title']}, {first['model']}", "",
                  f"Paper: meta-batch {first['paper_meta_batch']}, {first['paper_inner_steps']} "
                  f"inner step(s) of {first['inner_lr']:g} (**bold**: the paper's setting). "
                  + _when(part), "",
                  head, "|" + "---|" * head.count(" | ") + "---|"]
        for _, r in part.iterrows():
            mark = "**" if r["is_paper"] else ""
            cells = [f"{mark}{r['meta_batch']}{mark}", f"{mark}{r['inner_steps']}{mark}",
                     _ms(r["so_ours_ms"]), _ms(r["fo_ours_ms"]),
                     _num(r["so_over_fo_time"], ".2f", "x"),
                     _ms(r["so_ours_peak_mib"]), _ms(r["fo_ours_peak_mib"]),
                     _num(r["so_over_fo_memory"], ".2f", "x"),
                     _ms(r["so_loop_ms"]), _ms(r["fo_loop_ms"]),
                     _num(r["so_loop_over_ours"], ".2f", "x"),
                     _num(r["fo_loop_over_ours"], ".2f", "x"),
                     _num(r["flops_so"] / 1e9, ".3g"), _num(r["flops_fo"] / 1e9, ".3g"),
                     _num(r["flops_forward"] / 1e9, ".3g"),
                     _num(r["so_ours_gflops_s"], ".3g") + " ("
                     + _num(100 * r["so_ours_peak_frac"], ".1f", "%") + ")"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    skipped = [f"* {r['config']}, meta-batch {r['meta_batch']}, {r['inner_steps']} inner step(s), "
               f"{ORDER_NAMES[o]}, {p}: {r[f'{o}_{p}_skipped']}"
               for _, r in frame.iterrows() for o in ORDERS for p in PATHS
               if r[f"{o}_{p}_skipped"]]
    if skipped:
        lines += ["## Skipped", "", *skipped, ""]
    return "\n".join(lines)


PAPER_SPEEDUP = ("The paper (MiniImagenet): first-order MAML gave \"roughly 33% "
                 "speed-up in network computation\", i.e. second / first order time about 1.33x "
                 "(1.5x if read as a third less time).")


def paper_summary(frame: pd.DataFrame) -> list[str]:
    """What second order costs at each configuration's paper setting (meta-batch and inner
    steps): the table docs/profile.md quotes next to the paper's 33%."""
    paper = frame[frame["is_paper"].astype(bool)]
    lines = ["## Second against first order at the paper's settings", "", PAPER_SPEEDUP, ""]
    if paper.empty:
        return [*lines, "No configuration was measured at its paper setting (meta-batch and "
                "inner steps); see the tables below.", ""]
    head = ("| configuration | meta-batch | steps | SO ms | FO ms | SO/FO time | SO/FO memory "
            "| SO/FO FLOPs | loop/ours SO | SO % peak | ours' tasks per pass |")
    lines += [head, "|" + "---|" * head.count(" | ") + "---|"]
    for _, r in paper.iterrows():
        lines.append("| " + " | ".join([
            str(r["config"]), str(r["meta_batch"]), str(r["inner_steps"]),
            _ms(r["so_ours_ms"]), _ms(r["fo_ours_ms"]), _num(r["so_over_fo_time"], ".2f", "x"),
            _num(r["so_over_fo_memory"], ".2f", "x"),
            _num(r["so_over_fo_flops"], ".2f", "x"),
            _num(r["so_loop_over_ours"], ".2f", "x"),
            _num(100 * r["so_ours_peak_frac"], ".1f", "%"), _tasks_per_pass(r)]) + " |")
    return [*lines, "", "SO/FO FLOPs is the arithmetic second order adds (matmuls and "
            "convolutions); where SO/FO time exceeds it, the extra time is spent outside them "
            "(batch norm's double backward, memory traffic; see the operator tables).", ""]


def _tasks_per_pass(r: pd.Series) -> str:
    """Ours' tasks per pass (task_chunk=auto); "whole" for the whole batch, an en dash for
    parts measured before the column existed (whole batch then)."""
    n = r.get("tasks_per_pass")
    if n is None or pd.isna(n):
        return "–"
    return "whole" if int(n) >= int(r["meta_batch"]) else str(int(n))


def render_ops(report: Report) -> str:
    cuda = report.slug != "cpu"
    what = "self device (CUDA) time" if cuda else "self CPU time"
    lines = [f"# Operators of the second-order meta-step, {report.slug}", "",
             f"{report.device}. torch.profiler `key_averages()`, top 10 by {what}, of one "
             "second-order meta-step on our default path at the measured setting nearest the "
             "paper's, and of its outer backward alone (the backward through the inner "
             "gradients: the double backward). Share: of the profiled region's total self time. "
             "Times are under the profiler (its overhead included).", ""]
    for p in report.ops:
        share = p.backward_ms / p.step_ms if p.step_ms > 0 else float("nan")
        lines += [f"## {p.config}: meta-batch {p.meta_batch}, {p.steps} inner step(s)", "",
                  f"Step {p.step_ms:.2f} ms; outer backward alone {p.backward_ms:.2f} ms "
                  f"({_num(100 * share, '.0f', '%')} of the step).", ""]
        for title, rows in (("Whole meta-step", p.step_ops),
                            ("Outer backward (double backward)", p.backward_ops)):
            lines += [f"### {title}", "", "| operator | calls | self ms | share |",
                      "|---|---|---|---|"]
            lines += [f"| `{o.name}` | {o.calls} | {o.self_ms:.3f} | {100 * o.share:.1f}% |"
                      for o in rows]
            lines.append("")
    if report.skipped_ops:
        lines += ["## Not profiled", "", *[f"* {s}" for s in report.skipped_ops], ""]
    return "\n".join(lines)


def plot(frame: pd.DataFrame, column: str, ylabel: str, out_path: Path, report: Report,
         note: str) -> Path:
    """One panel per configuration: `column` of our default path against inner steps, second
    order solid and first order dashed, one colour per meta-batch."""
    import matplotlib.pyplot as plt

    from maml_bench.report.plots import save_png  # sets the headless backend

    configs = list(dict.fromkeys(frame["config"])) if not frame.empty else []
    cols = max(1, min(4, len(configs)))
    rows = max(1, math.ceil(len(configs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, name in zip(axes.flat, configs, strict=False):
        part = frame[frame["config"] == name]
        batches = sorted(part["meta_batch"].unique())
        for i, meta_batch in enumerate(batches):
            sel = part[part["meta_batch"] == meta_batch].sort_values("inner_steps")
            color = colors(i / max(1, len(batches) - 1) * 0.85)
            for order, style, marker in (("so", "-", "o"), ("fo", "--", "s")):
                ax.plot(sel["inner_steps"], sel[f"{order}_ours_{column}"], style,
                        marker=marker, color=color, markerfacecolor="none",
                        label=f"T={meta_batch} {order.upper()}")
        ax.set_title(f"{name} (paper T={part['paper_meta_batch'].iloc[0]})", fontsize="medium")
        ax.set_xlabel("inner steps")
        ax.set_ylabel(ylabel, fontsize="small")
        ax.set_xticks(sorted(part["inner_steps"].unique()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in list(axes.flat)[len(configs):]:
        ax.axis("off")
    fig.suptitle(f"{report.slug}: default path, second order (solid) vs first order (dashed); "
                 f"missing points were skipped\n{note}", fontsize="medium")
    return save_png(fig, out_path)
