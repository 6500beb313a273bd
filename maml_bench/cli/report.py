"""`maml-bench report` (an experiment's tables beside the paper's), `maml-bench plot` (its
figures) and `maml-bench compare` (one method across experiments, or across the points of a
--grid), all read from the records a run wrote; `run` writes its tables, figures and grid
comparison with the same functions."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from maml_bench.cli.common import (
    NAME,
    SCALE,
    default_out,
    existing_dir,
    int_list,
    option,
    path_arg,
    writable_dir,
)
from maml_bench.domains import Items, Number, OneOf
from maml_bench.errors import UserError

#: Valid domains of the options of report and compare.
LEVEL = Number(float, 0.0, 1.0, lo_open=True, hi_open=True)
CI = OneOf(("normal", "t"))
SHOTS = Number(int, 1, 10_000)
STEPS = Items(Number(int, 0, 1_000), 1, 32)


def add_parser(sub: typing.Any) -> None:
    from maml_bench.experiments import DEFAULT_EXPERIMENT

    out_help = ("root holding the experiment's records (default: where `run` writes at --scale, "
                "runs/SCALE; the committed ones: --out results)")
    for name, text in (("report", "paper-vs-ours tables (markdown, CSV, LaTeX) with 95%% CIs"),
                       ("plot", "learning-curve figures (PNG) with 95%% CI bands")):
        p = sub.add_parser(name, help=text)
        p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT)
        p.add_argument("--scale", default="quick", type=option(SCALE, str),
                       help="the --scale the runs were made at (default quick)")
        p.add_argument("--out", type=path_arg, default=None, help=out_help)
        if name == "report":
            p.add_argument("--ci", default="normal", type=option(CI, str),
                           help="normal: the paper's 1.96*std/sqrt(n); t: Student-t")
            p.add_argument("--level", type=option(LEVEL, float), default=0.95,
                           help=f"confidence level (default 0.95; {LEVEL.describe()})")
    p = sub.add_parser("compare", help="one method across experiments (protocol variants) "
                       "or across the points of a --grid")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT")
    p.add_argument("--grid", type=existing_dir, default=None, metavar="DIR",
                   help="compare the points of the grid run into DIR (the run's --out); one "
                   "EXPERIMENT, the grid's")
    p.add_argument("--method", default="maml", help="algorithm id (default maml)")
    p.add_argument("--shots", type=option(SHOTS), default=None,
                   help=f"K at meta-test (default 5; with --grid, every K all points have; "
                   f"{SHOTS.describe()})")
    p.add_argument("--steps", type=option(STEPS, int_list), default=None,
                   help="gradient steps to show, as in the records (default 1,5,10; with "
                   "--grid 0, 1 and the last)")
    p.add_argument("--name", default=None, type=option(NAME, str),
                   help="file name under OUT/comparisons/ (letters, digits, . _ -)")
    p.add_argument("--scale", default="quick", type=option(SCALE, str),
                   help="the --scale the runs were made at (default quick, as report and plot)")
    p.add_argument("--out", type=path_arg, default=None, help=out_help)


def records_dir(args: argparse.Namespace) -> Path:
    """Where report/plot/compare read: --out, else the directory `run` writes at --scale."""
    return args.out if args.out is not None else default_out(args.scale)


def readable_records(args: argparse.Namespace, experiments: list[str]) -> Path:
    """The records root of report/plot/compare: it must exist (with the experiments' records,
    checked when they are read) and take the tables and figures written beside them."""
    from maml_bench.experiments import EXPERIMENTS

    for experiment in experiments:
        EXPERIMENTS.get(experiment)  # unknown ids fail before any reading
    out = records_dir(args)
    if not out.is_dir():
        first = experiments[0]
        hint = f"run `maml-bench run {first} --scale {args.scale}` first"
        others = [str(p) for p in (Path("results"), *sorted(Path("runs").glob("*")))
                  if p != out and (p / first).is_dir()]
        if others:
            hint += f", or read the runs found in {', '.join(others)} with --out"
        raise UserError(f"no directory {out} with records of {first}; {hint}")
    return writable_dir(out)


def cmd_report(args: argparse.Namespace) -> None:
    write_tables(args.experiment, readable_records(args, [args.experiment]), args.ci,
                 args.level)


def cmd_plot(args: argparse.Namespace) -> None:
    write_figures(args.experiment, readable_records(args, [args.experiment]))


def cmd_compare(args: argparse.Namespace) -> None:
    from maml_bench.report.experiment import build_comparison

    if args.grid is not None:
        from maml_bench.grid import read_index

        experiment, points = read_index(args.grid)
        if args.experiments != [experiment]:
            raise UserError(f"--grid {args.grid} holds a grid of {experiment}; give only that "
                            "experiment")
        from maml_bench.grid import GRID_INDEX

        root = args.grid.parent if (args.grid / GRID_INDEX).exists() else args.grid  # OUT/grid
        grid_comparison(experiment, writable_dir(root), points, [args.method], args.shots,
                        list(args.steps) if args.steps else None)
        return
    out = readable_records(args, args.experiments)
    shots, steps = args.shots or 5, list(args.steps or (1, 5, 10))
    name = args.name or f"{args.method}-k{shots}"
    for path in build_comparison(args.experiments, args.method, out, shots, steps, name):
        print(f"wrote {path}")


def grid_comparison(experiment: str, out: Path, points: list[typing.Any], methods: list[str],
                    shots: int | None = None, steps: list[int] | None = None) -> None:
    """One table per (method, K) with a row per grid point, under OUT/grid/comparisons/. K and
    steps default to those every point has (a grid over eval_shots or eval_steps varies them);
    the steps shown: 0, 1 and the last."""
    from maml_bench.grid import GRID_DIR, point_dir
    from maml_bench.progress import say
    from maml_bench.report.experiment import build_grid_comparison, experiment_records

    rows = [(p.name, point_dir(out, p)) for p in points]
    frames = [experiment_records(experiment, root) for _, root in rows]
    for method in dict.fromkeys(methods):
        mine = [frame[frame["method"] == method] for frame in frames]
        if any(frame.empty for frame in mine):
            missing = next(name for (name, _), f in zip(rows, mine, strict=True) if f.empty)
            raise UserError(f"no {method} records at grid point {missing}; run the grid with "
                            f"--method {method} first")
        common_shots = set.intersection(*(set(f["shots"].astype(int)) for f in mine))
        common_steps = set.intersection(*(set(f["step"].astype(int)) for f in mine))
        wanted = [shots] if shots else sorted(common_shots)
        if shots and shots not in common_shots:
            raise UserError(f"--shots {shots}: not in every grid point's {method} records "
                            f"(all have K in {sorted(common_shots) or 'none'})")
        shown = list(steps) if steps else sorted({0, 1, max(common_steps)} & common_steps)
        for k in wanted:
            for path in build_grid_comparison(experiment, rows, method, k, shown,
                                              out / GRID_DIR / "comparisons",
                                              f"{method}-k{k}"):
                print(f"wrote {path}")
        left_out = sorted(set().union(*(set(f["shots"].astype(int)) for f in mine))
                          - common_shots)
        if left_out and not shots:
            say(f"note: K = {', '.join(map(str, left_out))} left out of the grid comparison: "
                "not every point has it")


def write_tables(experiment: str, out: Path, ci: str, level: float) -> None:
    from maml_bench.report.experiment import build_tables

    for path in build_tables(experiment, out, ci, level):
        print(f"wrote {path}")


def write_figures(experiment: str, out: Path) -> None:
    from maml_bench.report.experiment import build_figures

    for path in build_figures(experiment, out):
        print(f"wrote {path}")
