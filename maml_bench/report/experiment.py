"""Builds an experiment's paper-vs-ours tables and figures from its records and run.json files.

Each run's scale ("paper", "quick", ..., or "custom" after --set) is derived from the config
hash in its run.json, so tables and figures can say which scale they show and compare only
paper-scale numbers with the paper.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from maml_bench.config import config_hash
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS, Experiment
from maml_bench.experiments.base import FigureSpec
from maml_bench.fits import FITS_FILE
from maml_bench.report.tables import UNKNOWN_SCALE
from maml_bench.results import (
    RUN_INFO_FILE,
    atomic_write_text,
    find_record_files,
    load_records,
    read_run_info,
)
from maml_bench.runner import TRAIN_LOG_FILE, resolve_config
from maml_bench.stats import mean_keep_nan
from maml_bench.tasks import BENCHMARKS

log = logging.getLogger(__name__)

CUSTOM_SCALE = "custom"
RUN_COLUMNS = ["run_id", "method", "seed", "scale", "config_hash", "iterations", "config",
               "directory"]


def scale_of(experiment: Experiment, run_config_hash: str, method: str | None = None) -> str:
    """The name of the experiment scale whose resolved config has this hash, else "custom"
    (settings changed with --set). Derived from the hash rather than stored, so it holds for
    runs written before reports knew about scales too."""
    for name in experiment.scales:  # the first of equal scales wins (paper comes first)
        if config_hash(resolve_config(experiment, name, [], method)) == run_config_hash:
            return name
    return CUSTOM_SCALE


def experiment_runs(experiment_id: str, out: Path) -> pd.DataFrame:
    """One row per run with records and a readable run.json (RUN_COLUMNS): what was run."""
    experiment = EXPERIMENTS.get(experiment_id)
    scales: dict[str, str] = {}
    rows = []
    for records_file in find_record_files(out, experiment_id):
        info = _read_json(records_file.parent / RUN_INFO_FILE)
        if info is None:
            continue
        chash = str(info.get("config_hash"))
        if chash not in scales:
            known = info.get("method") in {m.algorithm for m in experiment.methods}
            scales[chash] = scale_of(experiment, chash, info.get("method") if known else None)
        rows.append({
            "run_id": f"{experiment_id}/{info.get('method')}/seed-{info.get('repetition')}",
            "method": info.get("method"),
            "seed": info.get("repetition"),
            "scale": scales[chash],
            "config_hash": chash,
            "iterations": info.get("iterations"),
            "config": info.get("config") or {},
            "directory": records_file.parent,
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_run_info(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); its run's scale is unknown", path, err)
        return None


def measured_pace(experiment_id: str, results: Path, method: str = "maml"
                  ) -> tuple[float, Path, dict[str, Any]] | None:
    """Seconds per meta-iteration of `method`'s committed run of this experiment that trained
    longest under `results` (any output folder in it), with its run.json path and content; None
    without one. What `show` scales its time estimates by: a measurement, not a guess."""
    best: tuple[float, Path, dict[str, Any]] | None = None
    for info_file in sorted(results.glob(f"**/{experiment_id}/raw/{method}/seed-*/"
                                         f"{RUN_INFO_FILE}")):
        try:
            info = _read_json(info_file)
        except UserError:  # not a run.json this suite wrote: no measurement
            continue
        if not info or not info.get("iterations") or not info.get("train_seconds"):
            continue
        if best is None or int(info["iterations"]) > int(best[2]["iterations"]):
            best = (float(info["train_seconds"]) / int(info["iterations"]), info_file, info)
    return best


def experiment_records(experiment_id: str, out: Path) -> pd.DataFrame:
    """Every record of the experiment, with a `scale` column per run (see `scale_of`)."""
    files = find_record_files(out, experiment_id)
    if not files:
        raise UserError(
            f"no records for {experiment_id} under {out}; run `maml-bench run {experiment_id} "
            f"--out {out}` first, or pass the --out of an earlier run (quick runs: runs/quick)"
        )
    records = load_records(files)  # each verified against its run.json
    runs = experiment_runs(experiment_id, out)
    scales = dict(zip(runs["run_id"], runs["scale"], strict=True))
    records["scale"] = records["run_id"].map(scales).fillna(UNKNOWN_SCALE)
    return records


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
                            metric=experiment.metric, experiment=experiment_id,
                            method_steps=dict(spec.method_steps) or None)
        paths = write_table(rows, wide, table_dir, spec.name, spec.caption, level=level)
        written.extend(paths.values())
    # Every method, K and step in one long CSV, for scripts and CI checks.
    summary_path = table_dir / "summary.csv"
    atomic_write_text(summary_path, summary.to_csv(index=False, float_format="%.6g"))
    written.append(summary_path)
    return written


def build_figures(experiment_id: str, out: Path) -> list[Path]:
    """The experiment's learning-curve figures and `training-curves.png` (meta-training loss
    of every run, from its train_log.csv; skipped with a warning when there is none)."""
    from maml_bench.report.plots import plot_learning_curves, plot_training_curves

    experiment = EXPERIMENTS.get(experiment_id)
    records = experiment_records(experiment_id, out)
    figure_dir = out / experiment_id / "figures"
    paths = []
    present = set(records["method"])
    everyone = [m.algorithm for m in experiment.methods]  # one colour per method throughout
    for spec in experiment.figures:
        if spec.kind == "fits":
            path = _fits_figure(experiment, spec, out, figure_dir)
            paths.extend([path] if path else [])
            continue
        if not present & set(spec.methods):  # e.g. a one-method sweep: no empty figure
            log.warning("%s: none of its methods has records under %s; not drawn", spec.name,
                        out)
            continue
        paths.append(plot_learning_curves(
            records, figure_dir / f"{spec.name}.png", list(spec.methods), experiment.labels(),
            list(spec.shots), metric=experiment.metric, ylabel=spec.ylabel, title=spec.title,
            paper=experiment.paper_frame(), everyone=everyone,
            lower_is_better=not BENCHMARKS.get(experiment.benchmark).higher_is_better))
    logs = training_logs(experiment_runs(experiment_id, out))
    if logs.empty:
        log.warning("no %s under %s/%s: training-curves.png not drawn", TRAIN_LOG_FILE, out,
                    experiment_id)
    else:
        order = [m.algorithm for m in experiment.methods]
        bench = BENCHMARKS.get(experiment.benchmark)
        curve = getattr(bench, "training_curve", None)  # RL: the return its loss negates
        paths.append(plot_training_curves(
            logs, figure_dir / "training-curves.png", order, experiment.labels(),
            title=f"{experiment.title}: meta-training {curve[0] if curve else 'loss'}",
            val_label=f"validation {experiment.metric} after fine-tuning",
            everyone=everyone,
            **({"loss_label": curve[1], "sign": -1.0, "log_y": False} if curve else {})))
    return paths


def _fits_figure(experiment: Experiment, spec: FigureSpec, out: Path, figure_dir: Path
                 ) -> Path | None:
    """The fits figure from each method's seed-0 fits.csv.gz; skipped with a warning when no
    method has one (runs made before fits were written, or methods that do not fine-tune)."""
    from maml_bench.report.fits_figure import plot_fits
    from maml_bench.report.plots import scale_title

    runs = experiment_runs(experiment.id, out)
    fits, drawn = {}, []
    for method in spec.methods:
        path = out / experiment.id / "raw" / method / "seed-0" / FITS_FILE
        if path.exists():
            fits[method] = pd.read_csv(path)
            drawn.append(method)
    if not fits:
        log.warning("%s: no %s under %s/%s; not drawn (rerun the runs to make them)",
                    spec.name, FITS_FILE, out, experiment.id)
        return None
    # A neutral choice of task: the largest amplitude of those drawn, where the fit must move
    # farthest from the average function.
    truth = next(iter(fits.values()))
    truth = truth[truth["kind"] == "truth"]
    task = int(truth.groupby("task")["y"].agg(lambda y: y.abs().max()).idxmax())
    return plot_fits(fits, figure_dir / f"{spec.name}.png", experiment.labels(),
                     list(spec.shots), list(spec.steps),
                     title=f"{spec.title}\ntest task {task}: the largest amplitude of the "
                     f"{truth['task'].nunique()} fixed test tasks drawn",
                     scale=scale_title(runs[runs["seed"] == 0], drawn), task=task)


def training_logs(runs: pd.DataFrame) -> pd.DataFrame:
    """The train_log.csv of each run in `runs` (from `experiment_runs`), stacked: method,
    seed, scale, iteration, train_loss and val_metric (the validation curve; NaN where a run
    has none)."""
    frames = []
    for run in runs.itertuples(index=False):
        path = Path(run.directory) / TRAIN_LOG_FILE
        if not path.exists():
            continue
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            log.warning("%s is unreadable (%s); left out of the training curves", path, err)
            continue
        frames.append(frame.assign(method=run.method, seed=run.seed, scale=run.scale))
    columns = ["method", "seed", "scale", "iteration", "train_loss", "val_metric"]
    if not frames:
        return pd.DataFrame(columns=columns)
    logs = pd.concat(frames, ignore_index=True).reindex(columns=columns)
    for column in ("train_loss", "val_metric"):  # "inf", "nan" as text; absent: NaN
        logs[column] = pd.to_numeric(logs[column], errors="coerce")
    return logs


def build_comparison(experiment_ids: list[str], method: str, out: Path, shots: int,
                     steps: list[int], name: str, ci: str = "normal") -> list[Path]:
    """One method across protocol variants (one row per experiment), beside the paper, with the
    median and worst test task after the last step: what a protocol detail moves. Each row is
    labelled with what its runs actually ran (their run.json), not the experiment's defaults."""
    rows = [(e, e, out) for e in experiment_ids]
    caption = (f"{method}, K = {shots}: the paper's number against protocol variants "
               f"({', '.join(experiment_ids)})")
    return compare_rows(rows, method, shots, steps, out / "comparisons", name, caption, ci)


def build_grid_comparison(experiment_id: str, points: list[tuple[str, Path]], method: str,
                          shots: int, steps: list[int], out: Path, name: str,
                          ci: str = "normal") -> list[Path]:
    """One method across the points of a grid (one row per point, each read from its own
    output directory), beside the paper."""
    rows = [(label, experiment_id, root) for label, root in points]
    caption = f"{experiment_id}, {method}, K = {shots}: one row per grid point"
    return compare_rows(rows, method, shots, steps, out, name, caption, ci)


def compare_rows(rows: list[tuple[str, str, Path]], method: str, shots: int, steps: list[int],
                 out: Path, name: str, caption: str, ci: str = "normal") -> list[Path]:
    """The comparison table: one row per (label, experiment id, records root)."""
    from maml_bench.report.tables import format_table, summarize, write_table

    summaries, labels, tails = [], {}, {}
    for label, experiment_id, root in rows:
        experiment = EXPERIMENTS.get(experiment_id)
        records = experiment_records(experiment_id, root)
        records = records[(records["method"] == method) & (records["shots"] == shots)]
        if records.empty:
            raise UserError(f"no {method} records with K={shots} for {experiment_id} under "
                            f"{root}")
        missing = sorted(set(steps) - set(records["step"]))
        if missing:
            raise UserError(f"--steps {','.join(map(str, missing))}: {experiment_id}'s {method} "
                            f"records have steps {records['step'].min()}.."
                            f"{records['step'].max()} only")
        summary = summarize(records, experiment.paper_frame(), ci=ci)
        summary["method"] = label
        summary["experiment"] = "comparison"
        summaries.append(summary)
        runs = experiment_runs(experiment_id, root)
        labels[label] = f"{label} ({_protocol(runs[runs['method'] == method])})"
        tails[label] = _tail(records, max(steps))
    combined = pd.concat(summaries, ignore_index=True)
    wide = format_table(combined, shots, steps, labels)
    last = max(steps)
    order = [label for label, _, _ in rows]
    wide[f"median after {last}"] = [tails[e][0] for e in order]
    wide[f"worst task after {last}"] = [tails[e][1] for e in order]
    paths = write_table(combined, wide, out, name, caption)
    return list(paths.values())


def _protocol(runs: pd.DataFrame) -> str:
    """What the runs ran, from their run.json, e.g. "paper scale: alpha=0.01, 70,000
    iterations, init=torch"; a setting that differs between seeds lists each value (0.01/0.001)."""
    if runs.empty:
        return "no run.json: settings unknown"

    def values(get: Any) -> str:
        return "/".join(dict.fromkeys(str(get(run)) for run in runs.itertuples(index=False)))

    alpha = values(lambda r: f"{r.config['inner_lr']:g}" if "inner_lr" in r.config else "?")
    iterations = values(lambda r: f"{int(r.iterations):,}" if pd.notna(r.iterations) else "?")
    init = values(lambda r: r.config.get("weight_init", "torch"))
    return (f"{values(lambda r: r.scale)} scale: alpha={alpha}, {iterations} iterations, "
            f"init={init}")


def _tail(records: pd.DataFrame, step: int) -> tuple[str, str]:
    """(median, worst) over test tasks after `step` steps, each task averaged over seeds, NaN
    kept: a few diverging tasks dominate the mean; these two show whether that happened."""
    per_task = mean_keep_nan(records[records["step"] == step], ["task"])
    worst = "nan" if per_task.isna().any() else f"{per_task.max():.3g}"
    return f"{per_task.median():.3g}", worst
