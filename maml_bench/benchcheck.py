"""Regression check of the CI benchmarks: the ratios and accuracies a benchmark run wrote,
against a committed baseline, each with a stated tolerance.

Speed enters as ratios against the per-task loop (or a plain loop) measured in the same run, so
a baseline travels between machines; absolute times do not. Usage (what `tox -e bench` runs):

    python -m maml_bench.benchcheck --current DIR [--baseline benchmarks/baseline.json] [--update]

Exit code 0: every metric within its tolerance (metrics whose file is absent, e.g. Omniglot
without the data, are listed as skipped); 1: a regression, one line per metric that moved.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: metric -> (file written by a benchmark, path of keys in it, higher is better)
METRICS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "sinusoid_meta_step_loop_over_ours": (
        "meta-step-ratios.json", ("timings", "per_task_loop", "times_slower_than_ours"), True),
    "sinusoid_meta_step_higher_over_ours": (
        "meta-step-ratios.json", ("timings", "higher", "times_slower_than_ours"), True),
    "omniglot_meta_step_loop_over_ours": (
        "omniglot-meta-step-cpu.json", ("per_task_loop_over_ours",), True),
    "omniglot_noconv_meta_step_loop_over_ours": (
        "omniglot-noconv-meta-step-cpu.json", ("per_task_loop_over_ours",), True),
    "omniglot_sampling_share_of_step": (
        "omniglot-meta-step-cpu.json", ("sampling_share_of_step",), False),
    "navigation_sampler_over_plain_loop": (
        "rl-sampler-cpu.json", ("cases", "navigation", "sampler_over_plain_loop"), True),
    "rl_meta_update_exact_over_gauss_newton": (
        "rl-meta-update-cpu.json", ("exact_over_gauss_newton",), True),
    "sinusoid_maml_quick_mse": ("accuracy-regression.json", ("sinusoid_maml_mse",), False),
    "omniglot_maml_quick_accuracy": (
        "accuracy-regression.json", ("omniglot_maml_accuracy",), True),
}


@dataclass(frozen=True)
class Verdict:
    metric: str
    status: str  # "ok", "regressed", "improved", "skipped"
    line: str


def read_metric(directory: Path, metric: str) -> float | None:
    """The metric's value in the run's files, None if its file or key is absent."""
    filename, keys, _ = METRICS[metric]
    path = directory / filename
    if not path.exists():
        return None
    value: Any = json.loads(path.read_text())
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value)


def judge(metric: str, current: float | None, entry: dict[str, Any]) -> Verdict:
    """One metric against its baseline entry {"value", "tolerance", "mode": relative|absolute}:
    a move in the bad direction beyond the tolerance is a regression; NaN never passes."""
    higher = METRICS[metric][2]
    base, tol = float(entry["value"]), float(entry["tolerance"])
    if current is None:
        return Verdict(metric, "skipped", f"{metric}: not measured in this run (skipped)")
    band = tol * abs(base) if entry.get("mode", "relative") == "relative" else tol
    worse = base - current if higher else current - base
    text = (f"{metric}: {current:.4g} against baseline {base:.4g} "
            f"({'higher' if higher else 'lower'} is better, tolerance {band:.3g})")
    if not math.isfinite(current) or worse > band:
        return Verdict(metric, "regressed", f"REGRESSED {text}")
    if -worse > band:
        return Verdict(metric, "improved", f"improved {text} (consider --update)")
    return Verdict(metric, "ok", f"ok {text}")


def check(current_dir: Path, baseline: dict[str, Any]) -> list[Verdict]:
    return [judge(m, read_metric(current_dir, m), entry)
            for m, entry in baseline["metrics"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maml_bench.benchcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--current", type=Path, required=True,
                        help="folder with this run's benchmark JSON files")
    parser.add_argument("--baseline", type=Path, default=Path("benchmarks/baseline.json"))
    parser.add_argument("--update", action="store_true",
                        help="write the measured values into the baseline (keeps tolerances)")
    args = parser.parse_args(argv)
    try:
        baseline = json.loads(args.baseline.read_text())
    except (OSError, ValueError) as err:
        print(f"error: cannot read the baseline {args.baseline}: {err}", file=sys.stderr)
        return 2
    unknown = sorted(set(baseline.get("metrics", {})) - set(METRICS))
    if unknown:
        print(f"error: the baseline names unknown metrics {unknown}; known: {sorted(METRICS)}",
              file=sys.stderr)
        return 2
    verdicts = check(args.current, baseline)
    for verdict in verdicts:
        print(verdict.line)
    if args.update:
        for m, entry in baseline["metrics"].items():
            value = read_metric(args.current, m)
            if value is not None and math.isfinite(value):
                entry["value"] = value
        args.baseline.write_text(json.dumps(baseline, indent=2) + "\n")
        print(f"updated {args.baseline}")
        return 0
    return 1 if any(v.status == "regressed" for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
