"""`maml-bench`: list, show, run, report and plot the paper's experiments; check and generate
datasets.

The parser and the dispatch live here (`build_parser`, `main`, and `entry`, the console
script); each subcommand's options and its `cmd_*` live in its own module, which registers its
parser with `add_parser(sub)`:

  common   what every subcommand shares: option types and domains, output folders, signals
  show     list, show
  run      run (with --grid, --evaluate-from and the engine options)
  report   report, plot, compare
  data     data check, data fetch, data synth
  profile  profile
  docs     docs

Importing them is cheap: each imports its heavy modules (torch, the runner, the reports)
inside the command that needs them, so `maml-bench --help` starts fast."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import typing

from maml_bench.cli import common, data, docs, profile, report, run, show
from maml_bench.errors import OutOfMemory, UserError, WriteError, one_line


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """Built once per process (argparse's per-string gettext lookups make it ~20 ms) and reused:
    parsing reads the parser, it never changes it."""
    from maml_bench import __version__

    parser = common.OneLineParser(
        prog="maml-bench", description="Reproduce and benchmark Model-Agnostic Meta-Learning.",
        epilog=common.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step taken")
    parser.add_argument("--version", action="version", version=f"maml-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # in this order in `maml-bench --help`
    for module in (show, run, report, data, profile, docs):
        module.add_parser(sub)
    return parser


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
            common.set_data_root(args.data_root)  # before any work: pool workers inherit it
        if args.command == "list":
            show.cmd_list(args)
        elif args.command == "show":
            show.cmd_show(args)
        elif args.command == "run":
            with common.interruptible():  # a stopped run keeps its checkpoint and resumes
                run.cmd_run(args)
        elif args.command == "report":
            report.cmd_report(args)
        elif args.command == "plot":
            report.cmd_plot(args)
        elif args.command == "compare":
            report.cmd_compare(args)
        elif args.command == "data":
            return data.cmd_data(args)
        elif args.command == "profile":
            profile.cmd_profile(args)
        elif args.command == "docs":
            return docs.cmd_docs(args)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, not one per process
            print(f"maml-bench: error: {one_line(str(err))}", file=sys.stderr)
        common._remove_created_if_empty()
        # a disk that is full or read-only is the machine's fault, not the input's
        return 1 if isinstance(err, WriteError | OutOfMemory) else 2
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
    try:
        code = main()
    except KeyboardInterrupt:  # outside a command's own handling (parsing, imports, exit)
        print("maml-bench: interrupted", file=sys.stderr)
        code = 130

    def leave(*_: typing.Any) -> None:
        with contextlib.suppress(Exception):  # what was printed still reaches its file
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGINT stays ignored
            signal.signal(sig, leave)
    sys.exit(code)
