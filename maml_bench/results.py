"""Long-form result records: one row per (run, test task, adaptation step, metric).

Each run writes its own records file atomically (temp file + rename); loading merges all run
files of an experiment and drops duplicate rows, so merging twice changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from maml_bench.errors import UserError, WriteError

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


_UMASK_LOCK = threading.Lock()


def file_mode() -> int:
    """The mode `open()` would give a new file under this process's umask (0o666 & ~umask).

    `tempfile.mkstemp` always creates 0600 files, so a temp file renamed into place must be
    chmod'ed to this, or colleagues sharing the results could not read them. The umask is read
    each time (a test or a wrapper may change it): from /proc on Linux, which changes nothing;
    elsewhere by setting it and putting it back, under a lock, and set meanwhile to 0o077 so a
    file another thread creates in that instant is at worst private, never too open.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)
        os.umask(umask)
    return 0o666 & ~umask


def write_error(path: Path | str, err: OSError) -> WriteError:
    reason = err.strerror or str(err)
    return WriteError(f"cannot write {path} ({reason}): free space or choose --out")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, with the
    mode the umask gives a new file (`file_mode`)."""
    # Folders made here are removed again if the write fails (full or read-only disk), so a
    # failed command leaves no empty tree behind.
    created = ([] if path.parent.is_dir() else
               [d for d in (path.parent, *path.parent.parents) if not d.exists()])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        remove_empty_folders(created)
        raise write_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_folders(created)
        raise write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


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


#: what a damaged gzip CSV raises while being read
UNREADABLE = (OSError, EOFError, gzip.BadGzipFile, zlib.error, pd.errors.ParserError,
              pd.errors.EmptyDataError, UnicodeDecodeError)


def read_records(path: Path) -> pd.DataFrame:
    """One records file as it is (no check against its run.json: see `read_verified`)."""
    try:
        return _parse(path.read_bytes())
    except UNREADABLE as err:
        raise UserError(f"records file {path} is unreadable ({err}); delete it and rerun") from None


def _parse(data: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), compression="gzip")


def seal(path: Path) -> dict[str, Any]:
    """What run.json stores to verify a records file later: its row count and checksum."""
    data = path.read_bytes()
    return {"records_rows": len(_parse(data)), "records_sha256": hashlib.sha256(data).hexdigest()}


def expected_rows(config: dict[str, Any]) -> int:
    """Rows of a complete run: every test task at every K after 0..eval_steps steps. Runs
    written before run.json held a checksum are verified by this count."""
    return len(config["eval_shots"]) * config["test_tasks"] * (config["eval_steps"] + 1)


#: what every run.json this suite writes holds (readers rely on them)
RUN_INFO_KEYS = ("run_id", "method", "repetition", "config", "config_hash")


def read_run_info(path: Path) -> dict[str, Any]:
    """A run's run.json. Unreadable (OSError, ValueError: each caller decides, e.g. a torn
    file is redone); valid JSON but not what the suite wrote (`[]`, `{}`, a hand-edited file)
    is refused as one line, since readers would fail on it or misjudge the run."""
    info = json.loads(path.read_text())
    if not _is_run_info(info):
        raise UserError(f"{path} is not a run.json this suite wrote: delete the run's folder "
                        f"{path.parent} to redo it")
    return info


def _is_run_info(info: Any) -> bool:
    """The keys and types readers rely on: the identity, the config fields that give the
    records' row count (`expected_rows`), and that count and checksum where present."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(info, dict) or any(k not in info for k in RUN_INFO_KEYS):
        return False
    config = info["config"]
    if not (isinstance(config, dict) and isinstance(info["config_hash"], str)
            and isinstance(info["run_id"], str) and isinstance(info["method"], str)
            and whole(info["repetition"])):
        return False
    shots = config.get("eval_shots")
    return (isinstance(shots, list) and all(whole(k) for k in shots)
            and whole(config.get("test_tasks")) and whole(config.get("eval_steps"))
            and whole(info.get("records_rows", 0))
            and isinstance(info.get("records_sha256", ""), str))


def check_run(run_dir: Path) -> tuple[str | None, pd.DataFrame | None]:
    """(None, records) if the run's records verify against its run.json, else (what is wrong,
    None)."""
    records, info_path = run_dir / RECORDS_FILE, run_dir / RUN_INFO_FILE
    if not info_path.exists():
        return "it has no run.json (the run did not finish)", None
    try:
        info = read_run_info(info_path)
    except (OSError, ValueError) as err:  # a torn or unreadable run.json, not the records
        return f"its run.json {info_path} cannot be read ({err})", None
    try:
        data = records.read_bytes()
    except OSError as err:
        return f"it cannot be read ({err})", None
    try:
        frame = _parse(data)
    except UNREADABLE as err:
        return f"it cannot be read ({type(err).__name__})", None
    want = info.get("records_rows")
    if want is None and "config" in info:
        want = expected_rows(info["config"])
    if len(frame) != want:
        return (f"it holds {len(frame):,} rows where run.json expects {want:,} (truncated or "
                "damaged)"), None
    sha = info.get("records_sha256")
    if sha is not None and hashlib.sha256(data).hexdigest() != sha:
        return "its checksum differs from the one in run.json (changed or damaged)", None
    return None, frame


def read_verified(path: Path) -> pd.DataFrame:
    """A records file after checking it against its run.json: damage is one line naming the
    file and the fix, never a silently different table."""
    problem, frame = check_run(path.parent)
    if problem is not None:
        raise UserError(f"records {path} are not trustworthy: {problem}; rerun the `maml-bench "
                        "run` command that made them (it redoes that run), or delete "
                        f"{path.parent}")
    return frame


def find_record_files(root: Path, experiment: str | None = None) -> list[Path]:
    base = root / experiment if experiment else root
    return sorted(base.glob(f"**/{RECORDS_FILE}"))


def load_records(paths: Iterable[Path]) -> pd.DataFrame:
    """Concatenate verified records files; duplicate keys (same run read twice) are dropped."""
    frames = [read_verified(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=RECORD_COLUMNS + PROVENANCE_COLUMNS)
    merged = pd.concat(frames, ignore_index=True)
    return merged.drop_duplicates(KEY_COLUMNS, keep="last").reset_index(drop=True)
