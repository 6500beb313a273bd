"""The README as a newcomer meets it: short, its two commands the ones CI runs, and every
`maml-bench` command it shows (code blocks and the at-a-glance table) one the CLI accepts, for
an experiment and methods that exist. Parsing only: nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from maml_bench.cli import build_parser
from maml_bench.experiments import EXPERIMENTS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
TEST_COMMAND = ".venv/bin/python -m pytest -q -n auto --dist loadfile"


def code_lines() -> list[str]:
    """Every line of the README's bash blocks, continuation lines joined."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.split("#", 1)[0].strip())
    return lines


def maml_bench_commands() -> list[str]:
    """The argument lists of every maml-bench command shown (blocks, table cells, torchrun)."""
    found = []
    for line in code_lines():
        for part in line.split("&&"):
            words = shlex.split(part)
            for i, word in enumerate(words):
                if word.endswith("maml-bench") or (word == "maml_bench.cli"
                                                   and words[i - 1] == "-m"):
                    found.append(shlex.join(words[i + 1:]))
    found += re.findall(r"`maml-bench ([^`]+)`", README)
    return found


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 250


def test_its_two_commands_are_the_ones_ci_runs():
    lines = code_lines()
    setup = [line for line in lines if line.startswith("python3 -m venv .venv")]
    assert len(setup) == 1 and "torch==2.13.0" in setup[0] and setup[0].endswith("maml-bench run")
    assert TEST_COMMAND in lines
    ci = (REPO / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci
    assert "torch==2.13.0" in ci


def test_the_front_door_benchmark_times_the_readmes_commands():
    """benchmarks/front_door.py, whose file the README's times come from, runs these two."""
    import importlib.util

    path = REPO / "benchmarks" / "front_door.py"
    spec = importlib.util.spec_from_file_location("front_door", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert " ".join([".venv/bin/python", *module.TEST_ARGS]) == TEST_COMMAND
    source = path.read_text()
    assert '"maml-bench"), "run", "--out"' in source  # the built-in default, nothing else set


COMMANDS = maml_bench_commands()


def test_the_commands_are_found():
    assert len(COMMANDS) >= 10  # the quick-start, the examples and the table's rows


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shown_parses(command):
    args = build_parser().parse_args(shlex.split(command))
    experiment = getattr(args, "experiment", None)
    if args.command == "run" and experiment is not None:
        spec = EXPERIMENTS.get(experiment)  # an unknown id raises
        for method in args.methods or []:
            spec.method(method)
        assert args.scale in spec.scales
