"""Where runs happen: in this process, or in a local process pool. A run is a pure function of
its spec, so the executor changes nothing but the wall-clock time."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from maml_bench import distributed
from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.chunking import machine_cpus
from maml_bench.errors import UserError, one_line
from maml_bench.progress import duration, say, terminal
from maml_bench.results import RUN_INFO_FILE, read_run_info
from maml_bench.run_spec import RunSpec
from maml_bench.runner import execute, is_done

log = logging.getLogger(__name__)


def setup_run_command(runs: Sequence[RunSpec], jobs: int) -> None:
    """`maml-bench run` under a launcher: refuse what cannot be split, before any work, then
    join the process group. Nothing to do without one."""
    if not distributed.launched():
        return
    world = int(os.environ["WORLD_SIZE"])
    if jobs > 1:
        raise UserError(f"--jobs {jobs} under torchrun ({world} processes): each run's "
                        "meta-batch is already split over the processes; use --jobs 1")
    unsupported = sorted({r.method for r in runs
                          if not ALGORITHMS.get(r.method).data_parallel})
    if unsupported:
        supported = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n).data_parallel]
        raise UserError(f"{', '.join(unsupported)}: no data-parallel meta-batch under "
                        f"torchrun; choose --method among {', '.join(supported)}, or run "
                        "without torchrun")
    small = sorted({r.config.meta_batch for r in runs if r.config.meta_batch < world})
    if small:
        raise UserError(f"meta_batch {small[0]} is smaller than torchrun's {world} processes; "
                        f"--set meta_batch={world} or more, or launch fewer processes")
    # a command's runs share one device
    distributed.init_from_env(runs[0].device if runs else "cpu")


def _run_one(run: RunSpec, progress: bool | str | None, announce: bool,
             cpus: int | None = None) -> tuple[Path, float]:
    """One run, with a 'started' line in logs; returns its directory and wall seconds. `cpus`:
    its share of the machine for task threads (None: all of it)."""
    t0 = time.perf_counter()
    if announce:
        say(f"started {run.run_id}")
    return execute(run, progress=progress, cpus=cpus), time.perf_counter() - t0


def run_all(runs: list[RunSpec], jobs: int = 1, progress: bool | None = None) -> list[Path]:
    """Execute every run not done yet; `jobs` > 1 runs them in that many processes, each given
    CPUs / jobs for `task_threads=auto` (task threads, or torch threads for tasks too big for
    them); a lone run is given every CPU.

    Ctrl-C (or SIGINT to this process) stops every worker at once and re-raises
    KeyboardInterrupt; each run keeps its last checkpoint and resumes from it next time.
    """
    # Under torchrun rank 0 decides, so that every process runs the same list in step.
    todo = distributed.from_main(lambda: [r for r in runs if not is_done(r)])
    if len(todo) < len(runs):
        log.info("%d of %d runs already done, skipped", len(runs) - len(todo), len(runs))
    bars = terminal() if progress is None else progress
    lines = progress is None and not bars  # logs (nohup, batch jobs, CI): plain lines
    done: list[Path] = []
    t0 = time.perf_counter()

    def finished(path: Path, seconds: float, run_id: str) -> None:
        done.append(path)
        if lines:
            left = len(todo) - len(done)
            eta = (time.perf_counter() - t0) / len(done) * left
            say(f"finished {run_id} in {duration(seconds)}; {len(done)}/{len(todo)} runs done"
                + (f", ETA {duration(eta)}" if left else ""))

    failed: dict[str, UserError] = {}

    def failure(run: RunSpec, err: UserError) -> None:
        # A run's own failure (divergence, bad data, locked by another process) does not stop
        # the others, as on every engine; the command then ends naming it.
        failed[str(run.directory)] = err
        if len(todo) > 1:
            say(f"failed {run.run_id}: {one_line(str(err))}")

    if jobs <= 1 or len(todo) <= 1:
        for run in todo:
            try:
                path, seconds = _run_one(run, "lines" if lines else bars, lines)
            except UserError as err:
                failure(run, err)
                continue
            finished(path, seconds, run.run_id)
    else:
        _pool(todo, jobs, bars, lines, finished, failure)
    warn_nonfinite(runs)
    if failed:
        first, err = next(iter(failed.items()))
        if len(todo) == 1:
            raise err
        messages = {str(e) for e in failed.values()}
        cause = (f": {one_line(str(err))}" if len(messages) == 1
                 else f" (first: {first}: {one_line(str(err))})")
        # Say exactly what was written: "the others" would claim records where none exist.
        written = (f"records of {len(done)} run{'s' if len(done) > 1 else ''} were written"
                   if done else "no records were written")
        raise UserError(f"{len(failed)} of {len(todo)} runs failed{cause}; {written}; fix it "
                        "and run the same command again: finished runs are skipped")
    return done


def _pool(todo: list[RunSpec], jobs: int, bars: bool, lines: bool, finished, failure) -> None:
    # spawn: forking a process that already ran torch can deadlock its thread pools.
    context = multiprocessing.get_context("spawn")
    bar = None
    if bars:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run")
    worker_progress = "lines" if lines else False
    pool = context.Pool(processes=min(jobs, len(todo)))
    try:
        share = max(1, machine_cpus() // min(jobs, len(todo)))  # each run's task threads
        pending = [(run, pool.apply_async(_run_one, (run, worker_progress, lines, share)))
                   for run in todo]
        while pending:
            for item in [p for p in pending if p[1].ready()]:
                pending.remove(item)
                try:
                    path, seconds = item[1].get()  # re-raises a run's error, with its message
                except UserError as err:
                    failure(item[0], err)
                else:
                    finished(path, seconds, item[0].run_id)
                if bar is not None:
                    bar.update(1)
            time.sleep(0.2)
        pool.close()
    except BaseException:
        # Ctrl-C or a bug: stop every worker now instead of letting the pool take the
        # queued runs; checkpoints are written atomically, so a killed worker loses only the
        # iterations since its last one.
        pool.terminate()
        raise
    finally:
        pool.join()
        if bar is not None:
            bar.close()


def warn_nonfinite(runs: list[RunSpec]) -> None:
    """One warning line per method whose meta-test results hold NaN/inf, with the count."""
    counts: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for run in runs:
        try:
            info = read_run_info(run.directory / RUN_INFO_FILE)
        except (OSError, ValueError, UserError):  # a run that failed: its error is reported
            continue
        counts[run.method] += info.get("nonfinite_test_values", 0)
        totals[run.method] += info.get("records_rows", 0)
    for method, n in counts.items():
        if n:
            say(f"warning: {method}: {n:,} of {totals[method]:,} meta-test values are not finite "
                "(adaptation diverged); tables show nan and count them in summary.csv "
                "'nonfinite'")
