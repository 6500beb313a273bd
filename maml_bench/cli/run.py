"""`maml-bench run`: train and evaluate an experiment's methods (or, with --evaluate-from,
meta-test finished runs again), over a --grid of settings, on an engine (this machine, Ray,
SLURM; or one run split over torchrun's processes), then write the tables and figures.

Its options and their domains, the engine options, and the checks of every run's device and
engine before the first run starts all live here."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from pathlib import Path

from maml_bench.cli.common import (
    EPILOG,
    NAME,
    SCALE,
    default_out,
    existing_dir,
    option,
    path_arg,
    writable_dir,
)
from maml_bench.cli.report import grid_comparison, write_figures, write_tables
from maml_bench.domains import Number, Pattern
from maml_bench.engines.options import (
    CPUS_PER_RUN,
    ENGINE,
    GPUS_PER_RUN,
    MEM_GB,
    RETRIES,
    TIME_MIN,
)
from maml_bench.errors import UserError

#: Valid domains of run's own options.
JOBS = Number(int, 1, 64)
SEEDS = Number(int, 1, 1_000)
DEVICE = Pattern(r"auto|cpu|cuda(:[0-9]{1,2})?", "auto, cpu, cuda or cuda:N (N = 0 to 99)")


class SetOnce(argparse.Action):
    """--set KEY=VALUE, repeatable; a key given twice is refused: the last one would win
    silently, and which one the user meant is not ours to guess."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: typing.Any, option_string: str | None = None) -> None:
        given = list(getattr(namespace, self.dest) or [])  # a copy: the default is shared
        key = str(values).partition("=")[0].strip()
        earlier = [t for t in given if key and t.partition("=")[0].strip() == key]
        if earlier:
            parser.error(f"{option_string} {key} given twice ({earlier[0]!r}, {values!r}); "
                         "give each setting once")
        setattr(namespace, self.dest, [*given, values])


def add_parser(sub: typing.Any) -> None:
    from maml_bench.experiments import DEFAULT_EXPERIMENT

    p = sub.add_parser(
        "run", help="train and evaluate an experiment's methods, then write tables and figures",
        description="Train and evaluate every method (or --method ones) of an experiment for "
        "each seed, writing one records file per run, then the tables and figures.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT,
                   help=f"experiment id (default {DEFAULT_EXPERIMENT}; see `maml-bench list`)")
    p.add_argument("--method", action="append", dest="methods", metavar="ALGORITHM",
                   help="only this method (repeatable); default: all of the experiment's")
    p.add_argument("--set", action=SetOnce, dest="overrides", default=[], metavar="KEY=VALUE",
                   help="change a setting, checked against the experiment's typed config "
                   "(repeatable), e.g. --set inner_lr=0.001")
    p.add_argument("--seeds", type=option(SEEDS), default=None,
                   help="repetitions per method (default: the scale's, or each method's own; "
                   f"{SEEDS.describe()})")
    p.add_argument("--scale", default="quick", type=option(SCALE, str),
                   help="quick: minutes on a laptop (default); paper: the paper's protocol; "
                   "long: the largest this 2-core machine allows where the paper's would take "
                   "days (Omniglot 5-way 5-shot and 20-way, half-cheetah and ant); tiny: "
                   "seconds, for smoke tests; `maml-bench show EXPERIMENT` lists an experiment's")
    p.add_argument("--out", type=path_arg, default=None,
                   help="output root (default runs/SCALE; the committed tables are regenerated "
                   "or resumed with --out results)")
    p.add_argument("--jobs", type=option(JOBS), default=None,
                   help="runs at once: local processes (default 1; a lone run splits its "
                   "meta-batch over every CPU, N runs share them: task_threads), the local "
                   "Ray cluster's CPUs / --cpus-per-run (default all cores), SLURM's array "
                   f"parallelism (default unlimited); {JOBS.describe()}")
    p.add_argument("--no-report", action="store_true", help="skip tables and figures")
    p.add_argument("--data-root", type=existing_dir, default=None, metavar="DIR",
                   help="folder holding the datasets (omniglot/, miniimagenet/); default "
                   "$MAML_BENCH_DATA, else ../shared/data beside the checkout")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a sweep axis (repeatable; cartesian product), checked like --set; "
                   "each point runs into OUT/grid/KEY=V1,.../ and a comparison table across "
                   "the points is written to OUT/grid/comparisons/ (a list-valued setting "
                   "separates its points with ';')")
    p.add_argument("--device", type=option(DEVICE, str), default=None,
                   help="where runs train: cpu (default: reproducible numbers; the small "
                   "networks gain little from a GPU), auto (CUDA where there is one), cuda, "
                   "cuda:N; with --gpus-per-run, cuda (each run's assigned GPU). Sampling stays "
                   "on the CPU, so a seed gives the same tasks anywhere; not part of the config "
                   "hash. RL runs train on the CPU only")
    p.add_argument("--evaluate-from", type=existing_dir, default=None, metavar="DIR",
                   help="train nothing: meta-test the finished runs under DIR (trained with this "
                   "command's scale and --set) again under this command's evaluation-only "
                   "settings (test_query, test_seed, test_tasks, eval_shots, eval_chunk; "
                   "Omniglot: test_set; RL: evaluate_checkpoint, render), "
                   "e.g. --set test_query=15 or --grid test_seed=1,2,3, writing records, "
                   "tables and figures under --out")
    p.add_argument("--trained-by", default=None,
                   metavar="EXPERIMENT/METHOD",
                   help="with --evaluate-from: meta-test that experiment's and method's finished "
                   "run under DIR as this command's method, where the two share one training "
                   "(the nearest neighbour pre-trains as fine-tuning does; with pretrain_batch "
                   "set, 1-shot and 5-shot pre-train alike), e.g. `run miniimagenet-5w5s-v2 "
                   "--method nearest-neighbour --scale paper --evaluate-from results "
                   "--trained-by miniimagenet-5w1s-v2/finetune --out results`; every setting "
                   "that training reads must agree")
    _add_engine_options(p)


def _experiment_method(text: str) -> tuple[str, str]:
    """EXPERIMENT/METHOD, both registered."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS

    experiment, slash, method = text.partition("/")
    if not slash or not experiment or not method:
        raise UserError(f"--trained-by {text!r}: expected EXPERIMENT/METHOD, e.g. "
                        "miniimagenet-5w1s-v2/finetune")
    EXPERIMENTS.get(experiment)  # unknown ids: one line naming the known ones
    ALGORITHMS.get(method)
    return experiment, method


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "engines (where the runs execute; the results are the same on each; "
        "docs/scale-out.md)")
    g.add_argument("--engine", default="local", type=option(ENGINE, str),
                   help="local: this machine (default); ray: Ray tasks on --address or a local "
                   "cluster; slurm: a SLURM job array via submitit; submitit-local: the same "
                   "jobs on this machine")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="ray: the cluster to join ('auto', or ray://HOST:10001); default: start "
                   "a local one for this command")
    g.add_argument("--cpus-per-run", type=option(CPUS_PER_RUN), default=None, metavar="N",
                   help=f"ray/slurm: CPUs per run, its torch threads and (task_threads=auto) "
                   f"task threads (default 1; "
                   f"{CPUS_PER_RUN.describe()})")
    g.add_argument("--gpus-per-run", type=option(GPUS_PER_RUN, float), default=None,
                   metavar="N", help="ray/slurm: GPUs per run, each run training on its own "
                   f"(implies --device cuda; default 0; {GPUS_PER_RUN.describe()})")
    g.add_argument("--retries", type=option(RETRIES), default=None, metavar="N",
                   help="ray/slurm: restarts of a run whose worker or job was lost; it resumes "
                   f"from its checkpoint (default 3; {RETRIES.describe()})")
    g.add_argument("--partition", default=None, type=option(NAME, str),
                   help="slurm: the partition (default: the cluster's)")
    g.add_argument("--time", type=option(TIME_MIN), default=None, metavar="MINUTES",
                   dest="time_min", help="slurm/submitit-local: a job's time limit; a run past "
                   f"it is requeued and resumes (default 1440; {TIME_MIN.describe()})")
    g.add_argument("--mem-gb", type=option(MEM_GB, float), default=None, metavar="GB",
                   help=f"slurm: memory per job (default: the partition's; {MEM_GB.describe()})")
    g.add_argument("--logs", type=path_arg, default=None, metavar="DIR",
                   help="slurm/submitit-local: per-job logs (default OUT/logs/ENGINE)")


ENGINE_FLAGS = ("address", "cpus_per_run", "gpus_per_run", "retries", "partition", "time_min",
                "mem_gb", "logs")


def engine_options(args: argparse.Namespace) -> typing.Any:
    """EngineOptions from the command line; an option the engine would ignore is refused."""
    from maml_bench.engines import EngineOptions, check_options

    given = {name: getattr(args, name) for name in ENGINE_FLAGS if getattr(args, name) is not None}
    options = EngineOptions(engine=args.engine, jobs=args.jobs, **given)
    check_options(options, set(given))
    if options.logs is not None:
        writable_dir(options.logs, "--logs")
    return options


def run_devices(runs: list[typing.Any], device: str | None, options: typing.Any
                ) -> list[typing.Any]:
    """The runs with the device each trains on (`maml_bench/devices.py`); contradictory
    options, a CPU-only method asked onto a GPU and a CUDA device this machine lacks are all
    refused here, before any work. Runs on a cluster's nodes check their GPU themselves."""
    from maml_bench import devices, distributed

    wanted = devices.command_device(device, options, distributed.launched())
    runs = devices.assign(runs, wanted, options.gpus_per_run)
    if options.engine in ("local", "submitit-local"):  # the runs train on this machine
        runs = [dataclasses.replace(run, device=devices.here(run.device)) for run in runs]
    for run in runs:
        if getattr(run.config, "cuda_graph", "off") == "on":
            if run.device == "cpu":  # auto on a cluster's node: the run checks it there
                raise UserError(f"--set cuda_graph=on replays CUDA graphs, but {run.run_id} "
                                f"trains on {run.device}: add --device cuda, or drop it")
            if distributed.launched():
                raise UserError("--set cuda_graph=on under torchrun: each process's share "
                                "goes through an all-reduce the graph does not hold; drop one")
    return runs


def cmd_run(args: argparse.Namespace) -> None:
    from maml_bench import distributed
    from maml_bench.grid import (
        GridPoint,
        canonical,
        check_points,
        grid_points,
        point_dir,
    )
    from maml_bench.runner import check_readers, plan_runs, trained_source

    out = args.out or default_out(args.scale)
    if args.trained_by and not args.evaluate_from:
        raise UserError("--trained-by names a finished run under --evaluate-from DIR: give "
                        "--evaluate-from too")
    if distributed.launched() and args.engine != "local":
        raise UserError(f"--engine {args.engine} under torchrun: torchrun splits one run over "
                        "its processes; launch the engine's command without torchrun")
    # Every setting, option and the output directory checked before the first run starts:
    # each grid point's settings too.
    points = grid_points(args.grid) if args.grid else [GridPoint("", ())]
    plans = []
    for point in points:
        runs = plan_runs(args.experiment, args.scale, args.overrides + list(point.overrides),
                         args.methods, args.seeds, out)
        check_readers(runs, args.overrides + list(point.overrides))
        if point.name:  # named by the values the config holds, under OUT/grid/
            point = canonical(point, runs[0].config)
            runs = [dataclasses.replace(run, out=point_dir(out, point)) for run in runs]
        root = runs[0].out if point.name else out
        if args.evaluate_from:
            overrides = args.overrides + list(point.overrides)
            trained_by = _experiment_method(args.trained_by) if args.trained_by else None
            runs = [(run, trained_source(run, args.scale, overrides, args.evaluate_from,
                                         trained_by)) for run in runs]
        plans.append((point, root, runs))
    points = [point for point, _, _ in plans]
    if args.grid:
        check_points(points, args.overrides)
    runs = [run for _, _, point_runs in plans for run in point_runs]
    if args.evaluate_from:
        _evaluate_again(args, out, runs, points)
        runs = [run for run, _ in runs]
    else:
        _train_and_evaluate(args, out, runs, points)
    if args.no_report or not distributed.is_main():
        return
    for _, root, _ in plans:
        write_tables(args.experiment, root, "normal", 0.95)
        write_figures(args.experiment, root)
    if args.grid:
        grid_comparison(args.experiment, out, points, [run.method for run in runs])


def _evaluate_again(args: argparse.Namespace, out: Path, pairs: list[typing.Any],
                    points: list[typing.Any]) -> None:
    """--evaluate-from: each (run, trained source) pair meta-tested here, one after another."""
    from maml_bench import distributed
    from maml_bench.grid import write_index
    from maml_bench.preflight import check_runs
    from maml_bench.progress import say
    from maml_bench.runner import check_evaluable, evaluate_trained

    if args.engine != "local" or (args.jobs or 1) > 1 or distributed.launched():
        raise UserError("--evaluate-from runs here, one evaluation at a time: drop --engine, "
                        "--jobs and torchrun")
    if args.out is None or any(run.directory.resolve() == src.directory.resolve()
                               for run, src in pairs):
        raise UserError("--evaluate-from needs its own --out (e.g. results/variants): the "
                        "trained runs' records stay as they are")
    if args.device not in (None, "cpu"):
        pairs = [(dataclasses.replace(run, device=args.device), src) for run, src in pairs]
    for run, source in pairs:  # every source checked before the first evaluation
        check_evaluable(run, source)
    check_runs([run for run, _ in pairs])  # the data, and the memory floor of the test
    writable_dir(out)
    if args.grid:
        write_index(out, args.experiment, points)
    for i, (run, source) in enumerate(pairs, 1):
        say(f"[{i}/{len(pairs)}] {run.run_id}: evaluating the parameters of {source.directory}")
        evaluate_trained(run, source)


def _train_and_evaluate(args: argparse.Namespace, out: Path, runs: list[typing.Any],
                        points: list[typing.Any]) -> None:
    from maml_bench import distributed
    from maml_bench.engines import run_with_engine
    from maml_bench.executors import setup_run_command
    from maml_bench.grid import write_index

    options = engine_options(args)
    runs = run_devices(runs, args.device, options)
    if args.engine == "local":  # a cluster's nodes hold their own data and memory
        from maml_bench.preflight import check_runs

        check_runs(runs)
    # Under torchrun (WORLD_SIZE > 1): refuses what cannot be split, joins the process group.
    setup_run_command(runs, jobs=args.jobs or 1)
    workers = max((getattr(r.config, "workers", 1) for r in runs), default=1)
    if args.engine == "local" and (args.jobs or 1) > 1 and workers > 1 and len(runs) > 1:
        # pool workers are daemonic and cannot start the sampler's own worker processes
        raise UserError(f"--jobs {args.jobs} with --set workers={workers}: sampler worker "
                        "processes cannot start inside --jobs processes; use one of the two")
    writable_dir(out)
    if args.grid and distributed.is_main():
        write_index(out, args.experiment, points)
    logging.getLogger(__name__).info("%d runs of %s at %s scale into %s", len(runs),
                                     args.experiment, args.scale, out)
    run_with_engine(runs, options, out)
