"""Speed benchmarks: each records its timings here; ratios are printed and saved at the end so
that every ratio compares timings taken in the same run on the same machine.

Ratios and the 70k projection use each benchmark's minimum round: a shared VM's timings swing
from second to second with its neighbours (docs/speed.md), and the minimum is the reading least
affected by that; medians are saved beside them.
"""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import pytest
import torch

TIMINGS: dict[str, float] = {}  # minimum seconds per step
MEDIANS: dict[str, float] = {}
RATIOS_FILE = Path(os.environ.get("MAML_BENCH_RATIOS", "runs/benchmarks/meta-step-ratios.json"))

torch.set_num_threads(1)
# As the runner does during training: long-lived objects out of the garbage collector's scans.
gc.collect()
gc.freeze()


@pytest.fixture
def record_timing():
    def record(name: str, benchmark) -> float:
        TIMINGS[name] = benchmark.stats.stats.min
        MEDIANS[name] = benchmark.stats.stats.median
        return TIMINGS[name]

    return record


def pytest_terminal_summary(terminalreporter):
    if "ours" not in TIMINGS:
        return
    ours = TIMINGS["ours"]
    rows = {name: {"min_ms": t * 1e3, "median_ms": MEDIANS[name] * 1e3,
                   "times_slower_than_ours": t / ours,
                   "times_slower_than_ours_by_median": MEDIANS[name] / MEDIANS["ours"]}
            for name, t in sorted(TIMINGS.items())}
    terminalreporter.section("meta-step ratios (same run)")
    for name, row in rows.items():
        terminalreporter.write_line(
            f"{name:<22} min {row['min_ms']:8.3f} ms  {row['times_slower_than_ours']:6.2f}x ours"
            f"   (median {row['median_ms']:8.3f} ms, "
            f"{row['times_slower_than_ours_by_median']:5.2f}x)")
    payload = {"timings": rows, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": "cpu",
               "projected_70k_iterations_s": ours * 70_000}
    RATIOS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RATIOS_FILE.write_text(json.dumps(payload, indent=2) + "\n")
    terminalreporter.write_line(f"projected 70,000-iteration MAML run: {ours * 70_000:.0f} s; "
                                f"wrote {RATIOS_FILE}")
