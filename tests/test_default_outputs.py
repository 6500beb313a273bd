"""No command a user runs by default writes into the committed reference results: every
`--out` default of the CLI and every default output of the benchmarks lies outside results/
(results/ is written only when asked, e.g. `--out results/...`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from maml_bench.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def subparsers(parser: argparse.ArgumentParser, prefix: str = ""
               ) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += subparsers(child, f"{prefix} {name}".strip())
    return found


def test_no_command_writes_into_results_by_default():
    outs = {}
    for name, parser in subparsers(build_parser()):
        for action in parser._actions:
            if "--out" in action.option_strings:
                outs[name] = str(action.default)
    assert {"run", "report", "plot", "compare", "profile"} <= outs.keys(), outs
    assert {k: v for k, v in outs.items() if v.startswith("results")} == {}


def test_report_plot_and_compare_read_the_same_scale_by_default():
    """After the quick main job, each of them reads its records (none reads the paper runs)."""
    scales = {name: next(a.default for a in parser._actions if "--scale" in a.option_strings)
              for name, parser in subparsers(build_parser()) if name in
              ("report", "plot", "compare")}
    assert set(scales.values()) == {"quick"}, scales


def test_no_benchmark_writes_into_results_by_default():
    """Their defaults (environment variables' fallbacks, --out defaults) are under runs/."""
    defaults = re.compile(r'environ\.get\(\s*"[A-Z_]+",\s*"([^"]*)"|default=Path\("([^"]*)"\)')
    found = {}
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for match in defaults.finditer(path.read_text(encoding="utf-8")):
            value = match.group(1) or match.group(2)
            if "/" in value:
                found[f"{path.name}: {value}"] = value
    assert found, "the benchmarks name their default outputs"
    assert [k for k, v in found.items() if v.startswith("results")] == []
