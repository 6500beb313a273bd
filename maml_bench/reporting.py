"""Builds an experiment's paper-vs-ours tables and learning-curve figures from its records."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.results import atomic_write_text, find_record_files, load_records

log = logging.getLogger(__name__)


def experiment_records(experiment_id: str, out: Path) -> pd.DataFrame:
    files = find_record_files(out, experiment_id)
    if not files:
        raise UserError(
            f"no records for {experiment_id} under {out}; run `maml-bench run {experiment_id} "
            f"--out {out}` first"
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
