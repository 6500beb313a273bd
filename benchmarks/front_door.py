"""Times the README's two commands on this machine, so the README quotes a measurement (and
the CPU it was made on) rather than a remembered figure.

    .venv/bin/python benchmarks/front_door.py      # -> runs/benchmarks/front-door-cpu.json
    .venv/bin/python benchmarks/front_door.py --out results/benchmarks   # the committed file

It runs the main job (`maml-bench run`, the built-in default, into a temporary folder: the
README's own run writes runs/quick/) and the README's test command in this checkout, one after
the other, and records each one's wall time with the load average before it (a busy machine
reads slower: run it with nothing else running). `maml-bench docs` then writes the README's
numbers from the file."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maml_bench.results import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
#: the README's test command (tests/test_readme.py checks the README shows exactly this)
TEST_ARGS = ["-m", "pytest", "-q", "-n", "auto", "--dist", "loadfile"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(command: list[str], cwd: Path) -> dict:
    """Run `command`; its wall time, exit code, the load average before it, and the last line
    of its output (pytest's summary)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    return {"command": " ".join(command), "seconds": round(seconds, 1),
            "minutes": round(seconds / 60, 1), "exit_code": done.returncode,
            "load_average_before": round(load, 2), "last_line": lines[-1] if lines else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"),
                        help="folder for front-door-cpu.json (default runs/benchmarks; "
                        "results/benchmarks is the committed one)")
    parser.add_argument("--skip-tests", action="store_true", help="time the main job only")
    args = parser.parse_args(argv)
    report: dict = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as scratch:
        print("timing the main job (maml-bench run) ...", file=sys.stderr, flush=True)
        report["main_job"] = timed([str(VENV_BIN / "maml-bench"), "run", "--out", scratch], REPO)
    if not args.skip_tests:
        print("timing the test command ...", file=sys.stderr, flush=True)
        report["tests"] = timed([sys.executable, *TEST_ARGS], REPO)
        match = re.search(r"(\d+) passed", report["tests"]["last_line"])
        report["tests"]["passed"] = int(match.group(1)) if match else 0
    failed = [k for k in ("main_job", "tests") if report.get(k, {}).get("exit_code", 0) != 0]
    if failed:
        print(f"{', '.join(failed)} failed: nothing written; "
              f"{report[failed[0]]['last_line']}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "front-door-cpu.json"
    atomic_write_text(target, json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}: main job {report['main_job']['minutes']} min"
          + (f", tests {report['tests']['minutes']} min" if "tests" in report else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
