"""Progress for people: tqdm bars on a terminal, plain timestamped lines anywhere else (nohup,
batch jobs, CI logs), where a bar would print nothing useful until the end."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

#: seconds between progress lines of one long run in a log (MAML_BENCH_PROGRESS_SECONDS)
DEFAULT_LINE_SECONDS = 60.0


def terminal() -> bool:
    """True when stderr is an interactive terminal outside CI: draw bars, not lines."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def line_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("MAML_BENCH_PROGRESS_SECONDS",
                                             DEFAULT_LINE_SECONDS)))
    except ValueError:
        return DEFAULT_LINE_SECONDS


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def say(text: str, stream: TextIO | None = None) -> None:
    """One progress line, flushed at once (logs are read while the run goes on); under
    torchrun from rank 0 only, which speaks for every process of the run."""
    from maml_bench import distributed

    if not distributed.is_main():
        return
    stream = stream or sys.stderr
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=stream, flush=True)


class IterationProgress:
    """Progress of one run's training iterations: a bar, periodic lines, or nothing."""

    def __init__(self, name: str, total: int, start: int, mode: str,
                 unit: str = "iteration") -> None:
        self.name, self.total, self.start, self.unit = name, total, start, unit
        self.mode = mode  # "bar" | "lines" | "off"
        self.t0 = self.last = time.perf_counter()
        self.every = line_seconds()
        self.bar: Any = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name,
                            unit="it" if unit == "iteration" else unit,
                            dynamic_ncols=True, mininterval=0.5)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        if self.mode != "lines":
            return
        now = time.perf_counter()
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        say(f"{self.name}: {self.unit} {done:,}/{self.total:,} ({100 * done / self.total:.0f}%), "
            f"{duration(now - self.t0)} elapsed, ETA {duration(eta)}")

    def close(self, finished: bool = True) -> None:
        """`finished`: training is done (say so; meta-test follows), else only stop the bar."""
        if self.bar is not None:
            self.bar.close()
        if finished and self.mode != "off":  # meta-test can be long (Reptile: 50 steps each)
            say(f"{self.name}: trained ({self.total:,} iterations); meta-testing")
