"""What every subcommand of `maml-bench` shares: the parser that reports a usage error as one
line, the argparse types of options and paths (with their domains), the clean-up of output
folders a failed command created, the signal handling of a long command and the epilog of
examples that `maml-bench --help` and `maml-bench run --help` print.

Only light modules are imported here: every command imports this one, and the heavy ones
(torch, the runner, the reports) are imported inside the commands that use them."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import typing
from pathlib import Path

from maml_bench.domains import Domain, OneOf, Pattern
from maml_bench.errors import UserError, one_line

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

#: Valid domains of the options several subcommands take (each subcommand's module declares
#: those of its own options; settings have theirs in their config classes).
SCALES = ("quick", "long", "paper", "tiny")
SCALE = OneOf(SCALES)
NAME = Pattern(r"[A-Za-z0-9._-]{1,100}", "a name of 1 to 100 letters, digits, '.', '_', '-'")


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
