"""`maml-bench profile`: what second-order MAML costs (time, memory, FLOPs per meta-iteration)
on each paper configuration, over sweeps of inner steps and meta-batch sizes
(`maml_bench/profile/` measures; this module holds the options)."""

from __future__ import annotations

import argparse
import textwrap
import typing
from pathlib import Path

from maml_bench.cli.common import int_list, interruptible, option, path_arg, writable_dir
from maml_bench.domains import Items, Number, OneOf
from maml_bench.errors import UserError
from maml_bench.profile.configs import CONFIG_NAMES as PROFILE_CONFIG_NAMES

#: Valid domains of profile's options.
PROFILE_CONFIG = OneOf(PROFILE_CONFIG_NAMES)
PROFILE_STEPS = Items(Number(int, 1, 100), 1, 16)
PROFILE_META_BATCH = Items(Number(int, 1, 1_024), 1, 16)
PROFILE_DEVICE = OneOf(("cpu", "cuda"))
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


def add_parser(sub: typing.Any) -> None:
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
