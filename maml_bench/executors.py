"""Where runs happen: in this process, or in a local process pool. A run is a pure function of
its spec, so the executor changes nothing but the wall-clock time."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from maml_bench.runner import RunSpec, execute, is_done, show_progress

log = logging.getLogger(__name__)


def run_all(runs: list[RunSpec], jobs: int = 1, progress: bool | None = None) -> list[Path]:
    """Execute every run not done yet; `jobs` > 1 runs them in that many processes (one torch
    thread each: the small networks here gain nothing from intra-op threads)."""
    todo = [r for r in runs if not is_done(r)]
    if len(todo) < len(runs):
        log.info("%d of %d runs already done, skipped", len(runs) - len(todo), len(runs))
    progress = show_progress() if progress is None else progress
    if jobs <= 1 or len(todo) <= 1:
        return [execute(r, progress=progress) for r in todo]
    # spawn: forking a process that already ran torch can deadlock its thread pools.
    context = multiprocessing.get_context("spawn")
    done: list[Path] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(execute, r, False): r for r in todo}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), desc="runs", unit="run")
        for future in as_completed(futures):
            done.append(future.result())  # re-raises a run's error here, with its message
            log.info("finished %s", futures[future].run_id)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return done
