"""`maml-bench`: list, show, run, report and plot the paper's experiments; check and generate
datasets."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import tempfile
import textwrap
import threading
import typing
from pathlib import Path

from maml_bench.domains import (
    Domain,
    Items,
    Number,
    OneOf,
    Pattern,
    describe_field,
    domain_of,
    identity_settings,
    readers,
    same_identity,
    show_value,
)
from maml_bench.engines.options import (
    CPUS_PER_RUN,
    ENGINE,
    GPUS_PER_RUN,
    MEM_GB,
    RETRIES,
    TIME_MIN,
)
from maml_bench.errors import UserError, WriteError, one_line
from maml_bench.profile.configs import CONFIG_NAMES as PROFILE_CONFIG_NAMES

EPILOG = """\
examples:
  maml-bench run                                  # sinusoid Table 2 at quick scale, then report
  maml-bench run sinusoid-table2-v1 --scale paper # the paper's protocol, into runs/paper/
  maml-bench run sinusoid-table2-v1 --method maml --set inner_lr=0.001 --seeds 3
  maml-bench show sinusoid-table2-v1              # every setting you can --set, with defaults
  maml-bench report sinusoid-table2-v1 --out results --ci t
  maml-bench compare sinusoid-table2-v1 sinusoid-table2-codelr-v1 --method maml --shots 5
  maml-bench data check omniglot                  # is the dataset on disk the real release?
  maml-bench run sinusoid-table2-v1 --grid inner_lr=0.01,0.001 --grid meta_batch=5,25
  maml-bench run omniglot-5w1s-v1 --scale paper --evaluate-from results --out v --set test_query=15
  maml-bench run omniglot-5w1s-v1 --device cuda     # train on this machine's GPU
  maml-bench run omniglot-5w1s-v1 --engine ray --address auto --gpus-per-run 1
  maml-bench run omniglot-5w1s-v1 --engine slurm --partition gpu --gpus-per-run 1 --time 720
  torchrun --nproc-per-node 2 -m maml_bench.cli run omniglot-5w1s-v1 --method maml
  torchrun --nproc-per-node 8 -m maml_bench.cli run omniglot-5w1s-v1 --method maml --device cuda
An interrupted run resumes from its last checkpoint when the same command is run again.
"""


#: Valid domains of the command-line options (settings have theirs in their config classes).
JOBS = Number(int, 1, 64)
SEEDS = Number(int, 1, 1_000)
LEVEL = Number(float, 0.0, 1.0, lo_open=True, hi_open=True)
SHOTS = Number(int, 1, 10_000)
STEPS = Items(Number(int, 0, 1_000), 1, 32)
SCALES = ("quick", "long", "paper", "tiny")
SCALE = OneOf(SCALES)
CI = OneOf(("normal", "t"))
NAME = Pattern(r"[A-Za-z0-9._-]{1,100}", "a name of 1 to 100 letters, digits, '.', '_', '-'")
CLASSES_PER_SPLIT = Items(Number(int, 1, 1_000), 3, 3)
IMAGES_PER_CLASS = Number(int, 1, 10_000)
SYNTH_SEED = Number(int, 0, 2**32 - 1)
PROFILE_CONFIG = OneOf(PROFILE_CONFIG_NAMES)
PROFILE_STEPS = Items(Number(int, 1, 100), 1, 16)
PROFILE_META_BATCH = Items(Number(int, 1, 1_024), 1, 16)
PROFILE_DEVICE = OneOf(("cpu", "cuda"))
DEVICE = Pattern(r"auto|cpu|cuda(:[0-9]{1,2})?", "auto, cpu, cuda or cuda:N (N = 0 to 99)")
PROFILE_REPEATS = Number(int, 1, 1_000)
PROFILE_BUDGET = Number(float, 0.0, 86_400.0, lo_open=True)
PROFILE_THREADS = Number(int, 1, 1_024)

PROFILE_EPILOG = """\
examples:
  maml-bench profile --quick                       # every configuration, small sweep (CI)
  maml-bench profile --config omniglot-5w1s --steps 1,5 --meta-batch 16,32
  maml-bench profile --device cuda --out results/profile
Writes OUT/profile-DEVICE.md (tables and how each number was measured), .csv (every number),
-time.png and -memory.png (against inner steps, second vs first order) and -ops.md (the
operators that dominate the second-order step and its double backward). DEVICE is "cpu" or the
GPU's name (e.g. nvidia-h200). A measurement over --budget or the free memory is skipped and
listed with its reason. Each configuration is saved under OUT/parts/DEVICE/ as soon as it is
done: the same command, run again after a stop, measures only what is missing (a part measured
with other options is measured again; delete a part to re-measure it). Each row records when it
was measured and the machine's load average, so a reader sees whether anything shared it.
"""

DATA_EPILOG = """\
examples:
  maml-bench data check omniglot ../shared/data/omniglot     # the real release? exit 0 if so
  maml-bench data check miniimagenet                          # DATA_ROOT/miniimagenet
  maml-bench data synth miniimagenet /tmp/data/miniimagenet   # small generated set (seconds)
  maml-bench data check miniimagenet /tmp/data/miniimagenet --expect any
  maml-bench run EXPERIMENT --data-root /tmp/data             # train on it
  maml-bench data fetch omniglot                              # the official zips -> data/omniglot
A dataset folder lives under the data root as omniglot/ or miniimagenet/. The data root is
--data-root, else $MAML_BENCH_DATA, else the first that exists of ./data, ../shared/data and
../shared/data beside the checkout. Omniglot: the two zips of brendenlake/omniglot, python/
(`data fetch omniglot`). MiniImagenet: Ravi & Larochelle's split CSVs and the 84 x 84 images.
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line naming the fix (exit 2, like UserError)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"maml-bench: error: {one_line(message)} (see `{self.prog} --help`)\n")


def option(domain: Domain, parse: typing.Callable[[str], typing.Any] = int
           ) -> typing.Callable[[str], typing.Any]:
    """An argparse type: parse the text, then require the option's domain."""

    def convert(text: str) -> typing.Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {domain.describe()}") from None
        if not domain.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {domain.describe()}")
        return value

    return convert


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(","))


def default_out(scale: str) -> Path:
    """runs/SCALE: no command writes into the committed results/ unless told (--out results)."""
    return Path("runs") / scale


#: output folders this command created (writable_dir), for the clean-up of a failed command
_CREATED: list[Path] = []


def _remove_created_if_empty() -> None:
    for path in _CREATED:
        with contextlib.suppress(OSError):  # rmdir removes only an empty folder
            path.rmdir()


def writable_dir(path: Path, option_name: str = "--out") -> Path:
    """Create `path` if needed and prove it writable, before any work: one line if not."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option_name} {path} is a file; give a directory")
    missing = path  # folders made by this command: removed again if it fails leaving them empty
    while not missing.exists():
        _CREATED.append(missing)  # deepest first
        missing = missing.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise UserError(f"{option_name} {path} is not a writable directory ({err.strerror}); "
                        f"give another {option_name}") from None
    return path


def path_arg(text: str) -> Path:
    """An argparse type for every path option and positional: Path("") is the working
    directory, so an empty argument (an unset shell variable) would write into, or check,
    whatever folder the command happens to run in."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give a folder")
    return Path(text)


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


def existing_dir(text: str) -> Path:
    """An argparse type for --data-root: an existing directory, made absolute so that worker
    processes started elsewhere read the same one."""
    path = Path(text).expanduser()
    if not text.strip() or not path.is_dir():  # Path("") would be the working directory
        raise argparse.ArgumentTypeError(f"{text!r} is not an existing directory (the folder "
                                         "holding omniglot/ or miniimagenet/)")
    return path.resolve()


def set_data_root(path: Path) -> None:
    """Point the process (and the pool workers it starts, which inherit the environment) at the
    datasets under `path`; pools this process loaded from another root are dropped."""
    from maml_bench.tasks.fewshot.data_root import DATA_ENV

    os.environ[DATA_ENV] = str(path)
    for module, cached in (("maml_bench.tasks.fewshot.pools", "load"),
                           ("maml_bench.tasks.fewshot.episodes", "_cached_episodes")):
        if module in sys.modules:
            getattr(sys.modules[module], cached).cache_clear()


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


def build_parser() -> argparse.ArgumentParser:
    from maml_bench import __version__
    from maml_bench.experiments import DEFAULT_EXPERIMENT

    parser = OneLineParser(
        prog="maml-bench", description="Reproduce and benchmark Model-Agnostic Meta-Learning.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step taken")
    parser.add_argument("--version", action="version", version=f"maml-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered algorithms, benchmarks, experiments, models")
    p.add_argument("kind", nargs="?", default="all",
                   choices=["all", "algorithms", "benchmarks", "experiments", "models"])
    p.add_argument("--pattern", default="*", help="only ids matching this glob, e.g. 'multi*'")

    p = sub.add_parser("show", help="an experiment's methods, scales and settings (for --set)")
    p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT)

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
                   "settings (test_query, test_seed, test_tasks, eval_shots, eval_chunk; RL: "
                   "evaluate_checkpoint, render), "
                   "e.g. --set test_query=15 or --grid test_seed=1,2,3, writing records, "
                   "tables and figures under --out")
    _add_engine_options(p)

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
    p.add_argument("--scale", default="paper", type=option(SCALE, str),
                   help="the --scale the runs were made at (default paper)")
    p.add_argument("--out", type=path_arg, default=None, help=out_help.replace("quick", "paper"))
    _add_data_parser(sub)
    _add_profile_parser(sub)
    _add_docs_parser(sub)
    return parser


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


def _add_docs_parser(sub: typing.Any) -> None:
    text = ("regenerate the numbers in README.md and docs/ from the committed records: every "
            "table and value between a '<!-- table: ... -->' or '<!-- value: ... -->' marker "
            "and '<!-- end -->' (maml_bench/report/docs.py says how to write one)")
    p = sub.add_parser("docs", help="regenerate the docs' numbers from results/",
                       description=text[0].upper() + text[1:] + ".")
    p.add_argument("--check", action="store_true",
                   help="write nothing: list the pages whose numbers differ from the records "
                   "and exit 1 if any does (CI)")
    p.add_argument("--repo", type=existing_dir, default=Path("."), metavar="DIR",
                   help="the checkout holding README.md, docs/ and results/ (default: here)")


def cmd_docs(args: argparse.Namespace) -> int:
    from maml_bench.report.docs import pages, sync_docs

    if not pages(args.repo):
        raise UserError(f"{args.repo} holds neither README.md nor docs/*.md; run this in the "
                        "checkout or give --repo DIR")
    stale = sync_docs(args.repo, write=not args.check)
    if args.check and stale:
        print(f"maml-bench: {len(stale)} page(s) differ from the records; run `maml-bench docs` "
              "and commit the pages", file=sys.stderr)
        return 1
    if not stale:
        print("every page's numbers match the records")
    return 0


def _add_profile_parser(sub: typing.Any) -> None:
    p = sub.add_parser(
        "profile", help="what second-order MAML costs: time, memory and FLOPs per meta-iteration",
        description=textwrap.fill(
            "Time one meta-iteration (forward, inner steps, outer backward) of each paper "
            "configuration on random inputs of its shapes, second and first order, on our "
            "batched path and on the per-task loop, over sweeps of inner steps and meta-batch "
            "sizes; with peak memory, FLOPs, achieved FLOP/s against this device's measured "
            "peak, and the operators that dominate the double backward."),
        epilog=PROFILE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", dest="configs", metavar="NAME",
                   type=option(PROFILE_CONFIG, str),
                   help="a paper configuration (repeatable; default: all): "
                   + " | ".join(PROFILE_CONFIG_NAMES))
    p.add_argument("--steps", type=option(PROFILE_STEPS, int_list), default=None,
                   help="inner steps to sweep (default 1,2,5,10; with --quick 1,2; "
                   f"{PROFILE_STEPS.describe()})")
    p.add_argument("--meta-batch", type=option(PROFILE_META_BATCH, int_list), default=None,
                   metavar="T,...", help="tasks per meta-batch to sweep, for every configuration "
                   "(default: half, the paper's and double the paper's; with --quick the "
                   f"paper's; {PROFILE_META_BATCH.describe()})")
    p.add_argument("--device", type=option(PROFILE_DEVICE, str), default=None,
                   help="cpu | cuda (default: cuda if torch sees one, else cpu)")
    p.add_argument("--out", type=path_arg, default=Path("runs/profile"),
                   help="output folder (default runs/profile; the committed report: "
                   "--out results/profile)")
    p.add_argument("--repeats", type=option(PROFILE_REPEATS), default=None, metavar="N",
                   help="timed steps per measurement after warm-up; the minimum is reported "
                   f"(default 5; with --quick 2; {PROFILE_REPEATS.describe()})")
    p.add_argument("--budget", type=option(PROFILE_BUDGET, float), default=None,
                   metavar="SECONDS", help="seconds one measurement may take, else it is skipped "
                   f"(default 60; with --quick 10; {PROFILE_BUDGET.describe()})")
    p.add_argument("--threads", type=option(PROFILE_THREADS), default=None, metavar="N",
                   help="torch CPU threads (default: 1 with --device cpu, to time per core; a "
                   "run splits its tasks over its CPUs instead, see benchmarks/task_threads.py; "
                   f"torch's own with cuda; {PROFILE_THREADS.describe()})")
    p.add_argument("--quick", action="store_true",
                   help="a small sweep for CI: steps 1,2, the paper's meta-batch, 2 repeats, "
                   "smaller peak benchmarks (options given explicitly still win)")


def cmd_profile(args: argparse.Namespace) -> None:
    import torch

    from maml_bench.profile.sweep import ProfileOptions, run_profile

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device cuda: torch {torch.__version__} sees no CUDA device; "
                        "use --device cpu")
    out = writable_dir(args.out)
    configs = tuple(dict.fromkeys(args.configs or PROFILE_CONFIG_NAMES))
    options = ProfileOptions(configs=configs, device=device, out=out, steps=args.steps,
                             meta_batches=args.meta_batch, repeats=args.repeats,
                             budget_s=args.budget, quick=args.quick, threads=args.threads)
    with interruptible():  # stopped, it writes the report of what was measured
        for path in run_profile(options):
            print(f"wrote {path}")


@contextlib.contextmanager
def interruptible() -> typing.Iterator[None]:
    """Ctrl-C, `kill -INT` and SIGTERM all raise KeyboardInterrupt meanwhile, then the process's
    handlers come back. A command started in the background (`nohup ... &`) inherits an ignored
    SIGINT, and a session's end or a scheduler stops it with SIGTERM: either way it stops
    through its own cleanup (a run keeps its checkpoint, a profile writes its report)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    before = {sig: signal.signal(sig, signal.default_int_handler)
              for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _add_data_parser(sub: typing.Any) -> None:
    text = "check a dataset folder against the real release, or generate a small one"
    data = sub.add_parser("data", help=text, description=text[0].upper() + text[1:] + ".",
                          epilog=DATA_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    p = actions.add_parser(
        "check", help="read every file of a dataset folder and compare it with the real release",
        description=textwrap.fill(
            "Read every file of a dataset folder and print what it holds: classes (or "
            "alphabets and characters) per split, images per class, image sizes, unreadable files, "
            "against the real release (Omniglot: 30 + 20 alphabets, 964 + 659 characters, 20 "
            "drawings of 105 x 105; MiniImagenet: 64 / 16 / 20 classes of 600 images, 84 x 84). "
            "Exit 0 when it matches; else exit 2 with a summary line and one line per problem."),
        epilog=DATA_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["omniglot", "miniimagenet"], metavar="DATASET",
                   help="omniglot | miniimagenet")
    p.add_argument("path", type=path_arg, nargs="?", default=None, metavar="PATH",
                   help="the dataset folder (default: DATASET under the data root)")
    p.add_argument("--expect", choices=["real", "any"], default="real",
                   help="real: the real release's counts (default); any: only well-formed "
                   "(readable, loadable sizes, equal images per class), e.g. a generated set")
    p.add_argument("--data-root", type=existing_dir, default=None, metavar="DIR",
                   help="folder holding the datasets, for the default PATH")
    p = actions.add_parser(
        "fetch", help="download the official Omniglot files into the data root",
        description=textwrap.fill(
            "Download Omniglot's official files (images_background.zip, images_evaluation.zip "
            "and Lake's 20 one-shot runs, all_runs.zip, from brendenlake/omniglot) into "
            "DATA_ROOT/omniglot, each checked against the release's SHA-256 before it is put in "
            "place; files already there and intact are kept. Offline: one line with the URLs and "
            "the folder to put them in. MiniImagenet has no official single download: the command "
            "says how its folder is made."), epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["omniglot", "miniimagenet"], metavar="DATASET",
                   help="omniglot | miniimagenet")
    p.add_argument("--data-root", type=path_arg, default=None, metavar="DIR",
                   help="where to put it (default: the data root; data/ here if there is none)")
    p = actions.add_parser(
        "synth", help="write a small generated dataset in the real on-disk formats",
        description=textwrap.fill(
            "Write a seeded dataset in MiniImagenet's real formats (JPEGs in images/ "
            "with train.csv, val.csv, test.csv; and/or mini-imagenet-cache-*.pkl), 84 x 84, each "
            "class a distinct colour grating plus noise, so few-shot learners beat chance clearly. "
            "For tests and smoke runs where the real data cannot be downloaded; its numbers say "
            "nothing about the paper's."), epilog=DATA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["miniimagenet"], metavar="DATASET", help="miniimagenet")
    p.add_argument("dir", type=path_arg, metavar="DIR",
                   help="the dataset folder to write (created; name it miniimagenet/ under a "
                   "data root to train on it)")
    p.add_argument("--classes-per-split", type=option(CLASSES_PER_SPLIT, int_list),
                   default=(10, 5, 5), metavar="TRAIN,VAL,TEST",
                   help="classes of each split (default 10,5,5; the real release 64,16,20; "
                   f"{CLASSES_PER_SPLIT.describe()})")
    p.add_argument("--images-per-class", type=option(IMAGES_PER_CLASS), default=20, metavar="N",
                   help=f"default 20; the real release 600; {IMAGES_PER_CLASS.describe()}")
    p.add_argument("--seed", type=option(SYNTH_SEED), default=0,
                   help=f"default 0; {SYNTH_SEED.describe()}")
    p.add_argument("--format", choices=["csv", "pickle", "both"], default="both",
                   help="csv: images/ + the CSVs; pickle: the cache pickles; both (default)")


def cmd_data(args: argparse.Namespace) -> int:
    from maml_bench.tasks.fewshot.data_root import data_root

    if args.data_command == "synth":
        from maml_bench.tasks.fewshot.synth import synth_miniimagenet

        out = writable_dir(args.dir, "DIR")
        synth_miniimagenet(out, args.classes_per_split, args.images_per_class, args.seed,
                           args.format)
        counts = "/".join(map(str, args.classes_per_split))
        print(f"wrote {out}: {counts} classes x {args.images_per_class} images, 84 x 84 "
              f"({args.format}); check it with `maml-bench data check miniimagenet {out} "
              f"--expect any`; train on it with --data-root {out.resolve().parent}: the "
              "miniimagenet-*-demo-v1 experiments (labelled as generated data) read the folder "
              "miniimagenet-demo/, the miniimagenet-*-v1 ones miniimagenet/")
        return 0
    if args.data_command == "fetch":
        from maml_bench.tasks.fewshot.fetch import MINIIMAGENET_HELP, fetch_omniglot

        folder = (args.data_root or data_root()) / args.dataset
        if args.dataset == "miniimagenet":
            raise UserError(MINIIMAGENET_HELP.format(folder=folder))
        fetch_omniglot(writable_dir(folder, "--data-root"))
        print(f"{folder}: the official Omniglot files; check them with `maml-bench data check "
              f"omniglot {folder}`")
        return 0
    from maml_bench.tasks.fewshot.check import check

    path = args.path if args.path is not None else data_root() / args.dataset
    report = check(args.dataset, path, args.expect)
    print(report.title)
    for line in report.lines:
        print(line)
    if not report.problems:
        print("OK: " + ("matches the real release" if args.expect == "real" else
                        "well-formed (the real release's counts not compared: --expect any)"))
        return 0
    n = len(report.problems)
    what = "does not match the real release" if args.expect == "real" else "is not well-formed"
    hint = "; --expect any skips the real counts" if args.expect == "real" else ""
    print(f"maml-bench: error: {path} {what}: {n} problem{'s' if n > 1 else ''}{hint}",
          file=sys.stderr)
    for problem in report.problems:
        print(f"  {one_line(problem)}", file=sys.stderr)
    return 2


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
        _grid_comparison(experiment, writable_dir(root), points, [args.method], args.shots,
                         list(args.steps) if args.steps else None)
        return
    out = readable_records(args, args.experiments)
    shots, steps = args.shots or 5, list(args.steps or (1, 5, 10))
    name = args.name or f"{args.method}-k{shots}"
    for path in build_comparison(args.experiments, args.method, out, shots, steps, name):
        print(f"wrote {path}")


def cmd_list(args: argparse.Namespace) -> None:
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.models import MODELS
    from maml_bench.tasks import BENCHMARKS

    registries = {"algorithms": ALGORITHMS, "benchmarks": BENCHMARKS,
                  "experiments": EXPERIMENTS, "models": MODELS}
    for kind, registry in registries.items():
        if args.kind not in ("all", kind):
            continue
        print(f"{kind}:")
        names = registry.names(args.pattern)
        width = max((len(n) for n in names), default=0) + 2
        for name in names:
            entry = registry.get(name)
            text = getattr(entry, "title", None) or first_sentence(entry.__doc__ or "")
            print(f"  {name:<{width}} {text}")


def first_sentence(doc: str) -> str:
    """A docstring's first sentence on one line (its first paragraph if no sentence ends)."""
    import re

    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    # a full stop before a capital, not the one of "et al." or "App."
    end = re.search(r"(?<!\bal)(?<!\bApp)\.\s+(?=[A-Z])", paragraph)
    return paragraph if end is None else paragraph[:end.start() + 1]


def cmd_show(args: argparse.Namespace) -> None:
    from maml_bench.experiments import EXPERIMENTS

    exp = EXPERIMENTS.get(args.experiment)
    print(f"{exp.id}: {exp.title}\nbenchmark: {exp.benchmark}\n\nmethods (paper-scale seeds):")
    for m in exp.methods:
        own = " ".join(f"{k}={show_value(v)}" for k, v in m.overrides.items())
        print(f"  {m.algorithm:<18} {m.label} ({m.seeds})" + (f"; its settings: {own}" if own
                                                               else ""))
    print("\nscales:")
    for name, scale in exp.scales.items():
        print(f"  {name:<6} {scale.description}")
    print("\nsettings (--set KEY=VALUE; default, then meaning and valid values):")
    docs = _field_docs(type(exp.config))
    methods = {m.algorithm for m in exp.methods}
    fixed = identity_settings(exp.config)  # the experiment's own: not for --set
    for f in dataclasses.fields(exp.config):
        users = set(readers(exp.config, f.name))
        if users and not methods & users:
            continue  # another method's own setting: it would change nothing here
        value = getattr(exp.config, f.name)
        named = {v: w for w, v in (f.metadata.get("words") or {}).items()}  # -1 -> auto
        value = named.get(value, show_value(value))
        doc = " ".join(docs.get(f.name, "").split())
        valid = f"valid: {describe_field(f)}"
        if f.name in fixed:  # a variant of the same thing (the env's time step) is still open
            own = getattr(exp.config, f.name)
            domain = domain_of(f)
            alike = [v for v in getattr(domain, "values", ()) if v != own
                     and same_identity(f.name, v, own)]
            takes = f"takes only {', '.join(alike)}" if alike else "refuses another value"
            valid = (f"fixed: part of what {exp.id} is (--set {takes}; other values are other "
                     "experiments)")
        print(f"  {f.name:<22} {value:<24} {doc}\n  {'':<22} {'':<24} {valid}")
    if exp.notes:
        print(f"\nnotes: {exp.notes}")


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string under each field) of a dataclass and its bases."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = str(nxt.value.value).strip()
    return docs


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
            runs = [(run, trained_source(run, args.scale, overrides, args.evaluate_from))
                    for run in runs]
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
        _report(args.experiment, root, "normal", 0.95)
        _plot(args.experiment, root)
    if args.grid:
        _grid_comparison(args.experiment, out, points, [run.method for run in runs])


def _evaluate_again(args: argparse.Namespace, out: Path, pairs: list[typing.Any],
                    points: list[typing.Any]) -> None:
    """--evaluate-from: each (run, trained source) pair meta-tested here, one after another."""
    from maml_bench import distributed
    from maml_bench.grid import write_index
    from maml_bench.progress import say
    from maml_bench.runner import check_evaluable, evaluate_trained

    if args.engine != "local" or (args.jobs or 1) > 1 or distributed.launched():
        raise UserError("--evaluate-from runs here, one evaluation at a time: drop --engine, "
                        "--jobs and torchrun")
    if args.out is None or args.out.resolve() == args.evaluate_from.resolve():
        raise UserError("--evaluate-from needs its own --out (e.g. results/variants): the "
                        "trained runs' records stay as they are")
    if args.device not in (None, "cpu"):
        pairs = [(dataclasses.replace(run, device=args.device), src) for run, src in pairs]
    for run, source in pairs:  # every source checked before the first evaluation
        check_evaluable(run, source)
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


def _grid_comparison(experiment: str, out: Path, points: list[typing.Any], methods: list[str],
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


def _report(experiment: str, out: Path, ci: str, level: float) -> None:
    from maml_bench.report.experiment import build_tables

    for path in build_tables(experiment, out, ci, level):
        print(f"wrote {path}")


def _plot(experiment: str, out: Path) -> None:
    from maml_bench.report.experiment import build_figures

    for path in build_figures(experiment, out):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = os.environ.get("CI") or not sys.stderr.isatty()
    logging.basicConfig(level=logging.INFO if args.verbose or not quiet else logging.WARNING,
                        format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if getattr(args, "data_root", None) is not None:
            set_data_root(args.data_root)  # before any work: pool workers inherit it
        if args.command == "list":
            cmd_list(args)
        elif args.command == "show":
            cmd_show(args)
        elif args.command == "run":
            with interruptible():  # a stopped run keeps its checkpoint and resumes
                cmd_run(args)
        elif args.command == "report":
            _report(args.experiment, readable_records(args, [args.experiment]), args.ci,
                    args.level)
        elif args.command == "plot":
            _plot(args.experiment, readable_records(args, [args.experiment]))
        elif args.command == "compare":
            cmd_compare(args)
        elif args.command == "data":
            return cmd_data(args)
        elif args.command == "profile":
            cmd_profile(args)
        elif args.command == "docs":
            return cmd_docs(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
            print(f"maml-bench: error: {one_line(str(err))}", file=sys.stderr)
        _remove_created_if_empty()
        # a disk that is full or read-only is the machine's fault, not the input's
        return 1 if isinstance(err, WriteError) else 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        hint = ("the files hold what was measured" if args.command == "profile"
                else "run the same command again to resume")
        print(f"maml-bench: interrupted; {hint}", file=sys.stderr)
        return 130
    return 0


def entry() -> typing.NoReturn:
    """The `maml-bench` command: `main`, then an exit that a further Ctrl-C cannot turn into a
    traceback (the interpreter's exit handlers join threads and free libraries, and a signal
    meanwhile would interrupt them; everything is saved by then, so it leaves at once)."""
    code = main()

    def leave(*_: typing.Any) -> None:
        with contextlib.suppress(Exception):  # what was printed still reaches its file
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGINT stays ignored
            signal.signal(sig, leave)
    sys.exit(code)


if __name__ == "__main__":
    entry()
