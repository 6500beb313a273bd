"""A stop asked for while a run trains takes effect at the end of the iteration, so that the
run checkpoints exactly where it stopped and loses no finished iteration.

Ctrl-C, `kill -INT` and SIGTERM (a session's end, a scheduler) raise KeyboardInterrupt during a
command (`cli.common.interruptible`); while training, the first of them only asks for a stop,
which the training loop honours after the iteration in flight (a checkpoint, then
KeyboardInterrupt as before). A second one stops at once, from the last periodic checkpoint.
Only where such a signal would raise KeyboardInterrupt, and in the main thread.

Under torchrun every rank must stop after the same iteration: the ranks agree at each
iteration's end (`agreed`: a stop asked of any rank stops all of them there). A signal to
torchrun reaches each worker twice (the terminal's or pkill's own, then the launcher's
forwarded SIGTERM), so there a repeat does not stop at once; the launcher kills its workers
itself after its grace period (30 s) if an iteration takes longer.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from maml_bench import distributed


class StopAtIterationEnd:
    """Context manager: `requested` turns true on the first SIGINT/SIGTERM meanwhile."""

    def __init__(self) -> None:
        self.requested = False
        self._before: dict[int, object] = {}

    def __enter__(self) -> StopAtIterationEnd:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is signal.default_int_handler:
                    self._before[sig] = signal.signal(sig, self._ask)
        return self

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        # No printing here: a handler that writes to stderr while the loop is writing to it
        # raises "reentrant call"; the loop reports the stop itself.
        if self.requested and not distributed.active():
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = True

    def agreed(self) -> bool:
        """Whether to stop after this iteration; under torchrun, the same answer on every
        rank (a collective: call it at the same point of every iteration on every rank)."""
        return distributed.any_rank(self.requested)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._before.clear()
