"""Where datasets live: `--data-root`, else $MAML_BENCH_DATA, else the project's `../shared/data`
beside the checkout; and where preprocessed copies are cached."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MAML_BENCH_DATA"
CACHE_ENV = "MAML_BENCH_CACHE"


def data_root() -> Path:
    """The folder holding one sub-folder per dataset (omniglot/, miniimagenet/):
    $MAML_BENCH_DATA (which `--data-root` sets), else the first that exists of `data/` in the
    working directory (where `maml-bench data fetch` writes), `../shared/data` beside it, and
    `../shared/data` beside this checkout (an editable install run from elsewhere); else
    `data/` in the working directory, which the errors then name."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    for candidate in candidates():
        if candidate.is_dir():
            return candidate.resolve()  # absolute: workers elsewhere (Ray) find it too
    return Path("data").resolve()


def candidates() -> list[Path]:
    """Where the data root is looked for when no variable names it, first to last."""
    return [Path("data"), Path("..") / "shared" / "data",
            Path(__file__).resolve().parents[4] / "shared" / "data"]


def cache_dir() -> Path:
    """Preprocessed arrays, keyed by a hash of the source and the preprocessing."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maml-bench"
