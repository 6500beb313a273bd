"""Builds an experiment's paper-vs-ours tables and learning-curve figures from its records."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.results import atomic_write_text, find_record_files, load_records
from maml_bench.stats import mean_keep_nan

log = logging.getLogger(__name__)


def experiment_records(experiment_id: str, out: Path) -> pd.DataFrame:
    files = find_record_files(out, experiment_id)
    if not files:
        raise UserError(
            f"no records for {experiment_id} under {out}; run `maml-bench run {experiment_id} "
            f"--out {out}` first, or pass the --out of an earlier run (quick runs: runs/quick)"
        )
    return load_records(files)


def build_tables(experiment_id: str, out: Path, ci: str = "normal", level: float = 0.95
                 ) -> list[Path]:
    from maml_bench.report.tables import format_table, summarize, write_table

    experiment = EXPERIMENTS.get(experiment_id)
    records = experiment_records(experiment_id, out)
    summary = summarize(records, experiment.paper_frame(), level=level, ci=ci,
                        include_paper_only=True)
    written = []
    table_dir = out / experiment_id / "tables"
    for spec in experiment.tables:
        rows = summary[summary["shots"] == spec.shots]
        if spec.methods:
            rows = rows[rows["method"].isin(spec.methods)]
        if rows.empty:
            log.warning("table %s: no rows for K=%d", spec.name, spec.shots)
            continue
        wide = format_table(rows, spec.shots, list(spec.steps), experiment.labels(),
                            metric=experiment.metric, experiment=experiment_id)
        paths = write_table(rows, wide, table_dir, spec.name, spec.caption, level=level)
        written.extend(paths.values())
    # Every method, K and step in one long CSV, for scripts and CI checks.
    summary_path = table_dir / "summary.csv"
    atomic_write_text(summary_path, summary.to_csv(index=False, float_format="%.6g"))
    written.append(summary_path)
    return written


def build_figures(experiment_id: str, out: Path) -> list[Path]:
    from maml_bench.report.plots import plot_learning_curves

    experiment = EXPERIMENTS.get(experiment_id)
    records = experiment_records(experiment_id, out)
    paths = []
    for spec in experiment.figures:
        path = out / experiment_id / "figures" / f"{spec.name}.png"
        paths.append(plot_learning_curves(
            records, path, list(spec.methods), experiment.labels(), list(spec.shots),
            metric=experiment.metric, ylabel=spec.ylabel, title=spec.title,
            paper=experiment.paper_frame()))
    return paths


def build_comparison(experiment_ids: list[str], method: str, out: Path, shots: int,
                     steps: list[int], name: str, ci: str = "normal") -> list[Path]:
    """One method across protocol variants (one row per experiment), beside the paper, with the
    median and worst test task after the last step: what a protocol detail moves."""
    from maml_bench.report.tables import format_table, summarize, write_table

    summaries, labels, tails = [], {}, {}
    for experiment_id in experiment_ids:
        experiment = EXPERIMENTS.get(experiment_id)
        records = experiment_records(experiment_id, out)
        records = records[(records["method"] == method) & (records["shots"] == shots)]
        if records.empty:
            raise UserError(f"no {method} records with K={shots} for {experiment_id} under {out}")
        summary = summarize(records, experiment.paper_frame(), ci=ci)
        summary["method"] = experiment_id
        summary["experiment"] = "comparison"
        summaries.append(summary)
        labels[experiment_id] = f"{experiment_id} ({_protocol(experiment.config)})"
        tails[experiment_id] = _tail(records, max(steps))
    combined = pd.concat(summaries, ignore_index=True)
    wide = format_table(combined, shots, steps, labels)
    last = max(steps)
    wide[f"median after {last}"] = [tails[e][0] for e in experiment_ids]
    wide[f"worst task after {last}"] = [tails[e][1] for e in experiment_ids]
    caption = (f"{method}, K = {shots}: the paper's number against protocol variants "
               f"({', '.join(experiment_ids)})")
    paths = write_table(combined, wide, out / "comparisons", name, caption)
    return list(paths.values())


def _protocol(config: object) -> str:
    parts = [f"alpha={config.inner_lr:g}", f"{config.iterations:,} iterations"]
    parts.append(f"init={getattr(config, 'weight_init', 'torch')}")
    return ", ".join(parts)


def _tail(records: pd.DataFrame, step: int) -> tuple[str, str]:
    """(median, worst) over test tasks after `step` steps, each task averaged over seeds, NaN
    kept: a few diverging tasks dominate the mean; these two show whether that happened."""
    per_task = mean_keep_nan(records[records["step"] == step], ["task"])
    worst = "nan" if per_task.isna().any() else f"{per_task.max():.3g}"
    return f"{per_task.median():.3g}", worst
