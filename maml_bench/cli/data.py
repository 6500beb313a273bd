"""`maml-bench data`: `check` a dataset folder against the real release (or only that it is
well-formed), `fetch` the official Omniglot files, `synth` a small generated MiniImagenet in the
real on-disk formats."""

from __future__ import annotations

import argparse
import sys
import textwrap
import typing

from maml_bench.cli.common import existing_dir, int_list, option, path_arg, writable_dir
from maml_bench.domains import Items, Number
from maml_bench.errors import UserError, one_line

#: Valid domains of `data synth`'s options.
CLASSES_PER_SPLIT = Items(Number(int, 1, 1_000), 3, 3)
IMAGES_PER_CLASS = Number(int, 1, 10_000)
SYNTH_SEED = Number(int, 0, 2**32 - 1)

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



def add_parser(sub: typing.Any) -> None:
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
