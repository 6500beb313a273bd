"""Errors meant for people: the CLI prints them as one line, without a traceback."""

import shlex
import sys


class UserError(Exception):
    """Bad input (unknown id, bad override, missing data...): the message names the fix."""


class RunBusy(UserError):
    """Another process holds the run's lock (is training it now)."""


class WriteError(UserError, OSError):
    """A file the suite writes could not be written (disk full, read-only folder): one line
    for the CLI (exit code 1: the machine's fault, not the input's), and still an OSError for
    callers that tolerate failed writes (caches)."""


class OutOfMemory(UserError):
    """The allocator refused memory mid-run (settings above the memory floor's estimate): one
    line (exit code 1, as a full disk) naming what to lower; the last checkpoint is kept."""


def is_allocator_failure(err: BaseException) -> bool:
    """torch's own out-of-memory errors (CPU allocator, CUDA) and Python's MemoryError."""
    import torch

    return isinstance(err, MemoryError | torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


class TrainingDiverged(UserError):
    """A non-finite loss or parameter appeared during training."""


def one_line(text: str) -> str:
    """`text` with control characters escaped, so that a message quoting user input stays on
    one line (a value may hold a newline or carriage return)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def install_command(extra: str) -> str:
    """The command that installs an optional extra into the Python running this (its venv's
    own pip: a bare `pip` may be another environment's)."""
    return f'{shlex.quote(sys.executable)} -m pip install -e ".[{extra}]"'
