"""Long-form result records: one row per (run, test task, adaptation step, metric).

Each run writes its own records file atomically (temp file + rename); loading merges all run
files of an experiment and drops duplicate rows, so merging twice changes nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from maml_bench.errors import UserError

#: Columns every records file has, in this order (provenance columns follow).
RECORD_COLUMNS = [
    "run_id",  # "<experiment>/<method>/seed-<rep>"
    "experiment",  # experiment id, e.g. "sinusoid-table2-v1"
    "method",  # algorithm id, e.g. "maml"
    "seed",  # repetition index 0, 1, 2 ...
    "run_seed",  # integer seed derived from (experiment, method, repetition)
    "shots",  # K support examples per class / points per task at meta-test
    "task",  # index of the fixed test task
    "step",  # gradient steps of adaptation at meta-test (0 = before adapting)
    "metric",  # "mse", "accuracy", "return"
    "value",
]
PROVENANCE_COLUMNS = ["git_sha", "torch_version", "device", "date", "config_hash"]
KEY_COLUMNS = ["run_id", "shots", "task", "step", "metric"]

RECORDS_FILE = "records.csv.gz"
RUN_INFO_FILE = "run.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_records(path: Path, frame: pd.DataFrame) -> None:
    """Atomically write one run's records (gzip CSV; columns checked)."""
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    if frame.duplicated(KEY_COLUMNS).any():
        raise ValueError("records hold duplicate (run_id, shots, task, step, metric) rows")
    # mtime=0 keeps the gzip bytes identical for identical records (reproducible files).
    atomic_write_bytes(path, gzip.compress(frame.to_csv(index=False).encode(), mtime=0))


def read_records(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, EOFError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"records file {path} is unreadable ({err}); delete it and rerun") from None


def find_record_files(root: Path, experiment: str | None = None) -> list[Path]:
    base = root / experiment if experiment else root
    return sorted(base.glob(f"**/{RECORDS_FILE}"))


def load_records(paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate records files; duplicate keys (same run read twice) are dropped."""
    frames = [read_records(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=RECORD_COLUMNS + PROVENANCE_COLUMNS)
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates(KEY_COLUMNS, keep="last").reset_index(drop=True)
