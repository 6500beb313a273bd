"""Where datasets live: `--data-root`, else $MAML_BENCH_DATA, else the project's `../shared/data`
beside the checkout; and where preprocessed copies are cached."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "MAML_BENCH_DATA"
CACHE_ENV = "MAML_BENCH_CACHE"


def data_root() -> Path:
    """The folder holding one sub-folder per dataset (omniglot/, miniimagenet/)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def cache_dir() -> Path:
    """Preprocessed arrays, keyed by a hash of the source and the preprocessing."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "maml-bench"
