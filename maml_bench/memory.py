"""Keep freed memory in the process instead of returning it to the OS after every step.

PyTorch's CPU allocator is plain malloc. glibc serves the large tensors of a meta-step with
mmap and hands them back on free, so every step faults all of its pages in again, a cost
measured in docs/speed.md ("Omniglot 5-way 1-shot on this CPU"). Turning glibc's mmap off and
raising its trim threshold lets freed blocks be reused instead. It changes no number, only
where memory comes from; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
#: the largest trim threshold mallopt takes (its value is a C int: 4 GiB, as once passed here,
#: wrapped to 0, which trimmed the heap at every free and faulted it in again at every step)
TRIM_THRESHOLD = 2**31 - 1
_done = False


def keep_freed_memory() -> bool:
    """Apply once per process; True if glibc accepted the new thresholds."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):  # not glibc (musl, ...): leave malloc alone
        return False
    # Every block from the heap (no mmap at all), whose top is kept up to 2 GiB free rather than
    # trimmed after each step. Raising the mmap threshold instead (at most 32 MiB) would leave
    # larger tensors (MiniImagenet, 20-way) on mmap, faulting in again (docs/speed.md).
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
