"""The live summary of runs spread over an engine: done / running / failed / pending, a line
whenever it changes (and every MAML_BENCH_PROGRESS_SECONDS while it does not), then one line
per failure with its reason."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterable

from maml_bench.progress import duration, line_seconds, say
from maml_bench.run_spec import RunSpec
from maml_bench.runner import LOCK_FILE, is_done

STATES = ("done", "running", "failed", "pending")


def holds_lock(run: RunSpec) -> bool:
    """True while a process runs `run`: the runner writes its pid into the run's lock file and
    empties it on release. Read from the shared output directory, so it works for any engine
    (a killed holder leaves its pid until the retry takes the lock over)."""
    try:
        return bool((run.directory / LOCK_FILE).read_text().strip())
    except OSError:
        return False


def lock_free(run: RunSpec) -> bool:
    """True if no live process holds the run's lock (the kernel drops a dead holder's): taken
    and released at once; a worker that tries it in that instant is told busy and waits."""
    try:
        with open(run.directory / LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class Waiting:
    """Runs another process was training when their job started (an earlier, stopped sweep's
    job still running): waited for, then counted done if that process finished them, else
    submitted again. Never two processes on one run, and no failure for it."""

    def __init__(self) -> None:
        self.runs: dict[str, RunSpec] = {}

    def add(self, run: RunSpec, reason: str) -> None:
        if str(run.directory) not in self.runs:
            say(f"waiting: {reason.split('; ')[0]}; this sweep takes it over once released")
        self.runs[str(run.directory)] = run

    def released(self, summary: Summary) -> list[RunSpec]:
        """The runs no longer held that are still to do; those the other process finished are
        counted done in `summary`."""
        again = []
        for key, run in list(self.runs.items()):
            if lock_free(run):
                del self.runs[key]
                if is_done(run):
                    summary.finished(key, True)
                else:
                    again.append(run)
        return again


class Summary:
    def __init__(self, runs: list[RunSpec], engine: str) -> None:
        # keyed by directory: grid points share run ids (experiment/method/seed)
        self.runs = {str(run.directory): run for run in runs}
        self.state = dict.fromkeys(self.runs, "pending")
        self.reasons: dict[str, str] = {}
        self.engine = engine
        self.t0 = time.perf_counter()
        self.last_line = ""
        self.last_time = 0.0

    def finished(self, key: str, ok: bool, reason: str = "") -> None:
        self.state[key] = "done" if ok else "failed"
        if not ok:
            self.reasons[key] = reason
            say(f"failed {self.runs[key].run_id} ({key}): {reason}")

    def refresh(self, unfinished: Iterable[str]) -> None:
        """Re-read which unfinished runs (by directory) hold their lock; print the line if due."""
        for key in unfinished:
            if self.state[key] in ("pending", "running"):
                self.state[key] = "running" if holds_lock(self.runs[key]) else "pending"
        self.show()

    def counts(self) -> dict[str, int]:
        return {s: sum(v == s for v in self.state.values()) for s in STATES}

    def line(self) -> str:
        return f"{self.engine}: " + ", ".join(f"{n} {s}" for s, n in self.counts().items())

    def show(self, force: bool = False) -> None:
        text, now = self.line(), time.perf_counter()
        if force or text != self.last_line or now - self.last_time >= line_seconds():
            say(f"{text} ({duration(now - self.t0)} elapsed)")
            self.last_line, self.last_time = text, now

    def failures(self) -> dict[str, str]:
        """{run directory: reason} of the failed runs."""
        return {key: self.reasons[key] for key, s in self.state.items() if s == "failed"}
