"""Speed benchmarks: each records its median time here; ratios are printed and saved at the end
so that every ratio compares timings taken in the same run on the same machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

TIMINGS: dict[str, float] = {}
RATIOS_FILE = Path(os.environ.get("MAML_BENCH_RATIOS", "results/benchmarks/meta-step-ratios.json"))

torch.set_num_threads(1)


@pytest.fixture
def record_median():
    def record(name: str, benchmark) -> float:
        median = benchmark.stats.stats.median
        TIMINGS[name] = median
        return median

    return record


def pytest_terminal_summary(terminalreporter):
    if "ours" not in TIMINGS:
        return
    ours = TIMINGS["ours"]
    rows = {name: {"median_ms": t * 1e3, "times_slower_than_ours": t / ours}
            for name, t in sorted(TIMINGS.items())}
    terminalreporter.section("meta-step ratios (same run)")
    for name, row in rows.items():
        terminalreporter.write_line(
            f"{name:<22} {row['median_ms']:8.3f} ms   {row['times_slower_than_ours']:6.2f}x ours")
    payload = {"timings": rows, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "device": "cpu",
               "projected_70k_iterations_s": ours * 70_000}
    RATIOS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RATIOS_FILE.write_text(json.dumps(payload, indent=2) + "\n")
    terminalreporter.write_line(f"projected 70,000-iteration MAML run: {ours * 70_000:.0f} s; "
                                f"wrote {RATIOS_FILE}")
