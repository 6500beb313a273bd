"""The one function every engine runs: a run, by its spec, into the shared output directory.

It is the local pool's work too (`runner.execute`), so records do not depend on the engine. A
run's own failure (bad data, divergence) comes back as a result with its one-line reason rather
than an exception: an engine then tells it apart from a lost worker, which it retries (the run
resumes from its last checkpoint)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from maml_bench.errors import RunBusy, UserError, one_line
from maml_bench.run_spec import RunSpec
from maml_bench.runner import execute


@dataclass(frozen=True)
class JobResult:
    directory: str  # the run's directory: its id across grid points
    ok: bool
    reason: str = ""
    seconds: float = 0.0
    busy: bool = False  # another process holds the run (an earlier sweep's job still running)


def run_job(run: RunSpec, threads: int = 1) -> JobResult:
    """Execute one run (resuming from its checkpoint) with progress lines for its log."""
    t0 = time.perf_counter()
    try:
        execute(run, progress="lines", threads=threads, cpus=threads)
    except RunBusy as err:
        return JobResult(str(run.directory), False, one_line(str(err)), busy=True)
    except UserError as err:  # the same input fails the same way on a retry
        return JobResult(str(run.directory), False, one_line(str(err)),
                         time.perf_counter() - t0)
    return JobResult(str(run.directory), True, "", time.perf_counter() - t0)
