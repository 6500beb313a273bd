"""The command line: listing, running, reporting, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from maml_bench.cli import main
from maml_bench.progress import duration


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maml_bench.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_list_shows_registries(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("maml", "fomaml", "reptile", "metasgd", "pretrain", "oracle", "sinusoid",
                 "sinusoid-table2-v1", "conv4", "mlp"):
        assert name in out


def test_show_lists_settings_with_docs(capsys):
    assert main(["show", "sinusoid-table2-v1"]) == 0
    out = capsys.readouterr().out
    assert "inner_lr" in out and "alpha: inner gradient step size" in out
    assert "reptile_inner_steps" in out  # Reptile is one of its methods


def test_show_leaves_out_the_settings_of_methods_the_experiment_lacks(capsys):
    assert main(["show", "navigation2d-v1"]) == 0
    out = capsys.readouterr().out
    assert "max_kl" in out and "context_size" in out  # rl-context-vector reads it
    assert "reptile_" not in out and "metasgd_init_lr" not in out


def test_a_method_setting_is_accepted_where_that_method_runs(tmp_path):
    from maml_bench.runner import check_readers, plan_runs

    runs = plan_runs("sinusoid-table2-v1", "tiny", ["reptile_inner_steps=3"],
                     ["maml", "reptile"], None, tmp_path)
    check_readers(runs, ["reptile_inner_steps=3"])  # no error: reptile reads it
    assert {r.method: r.config.reptile_inner_steps for r in runs}["reptile"] == 3


@pytest.mark.parametrize("args, message", [
    (["run", "sinusoid-tabel2-v1"], "unknown experiment 'sinusoid-tabel2-v1'; did you mean"),
    (["run", "--method", "mamll", "--scale", "tiny"], "has no method 'mamll'"),
    (["run", "--set", "inner_lr=x", "--scale", "tiny"], "--set inner_lr=x: expected float"),
    (["run", "--seeds", "0", "--scale", "tiny"], "argument --seeds: '0' is not an integer in [1, "),
    (["report", "--out", "/nonexistent-dir"], "no directory /nonexistent-dir with records of "
                                              "sinusoid-table2-v1"),
    # a method's own setting where that method does not run: it would change nothing
    (["run", "--method", "maml", "--set", "reptile_inner_steps=3", "--scale", "tiny"],
     "reptile_inner_steps (--set, --grid): only reptile reads it, and this command runs maml; "
     "drop it, or add --method reptile"),
    (["run", "--method", "maml", "--grid", "reptile_inner_steps=2,3", "--scale", "tiny"],
     "only reptile reads it"),
    (["run", "omniglot-5w1s-v1", "--method", "maml", "--set", "metalstm_steps=3", "--scale",
      "tiny"], "only metalstm reads it"),
])
def test_bad_input_is_one_line_without_traceback(args, message, capsys):
    # In this process (a subprocess costs seconds of torch import each); the entry point's own
    # exit code and stderr are checked once below.
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_the_entry_point_refuses_bad_input_in_one_line_with_exit_code_2():
    result = cli("run", "sinusoid-tabel2-v1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown experiment 'sinusoid-tabel2-v1'" in lines[0], lines


def test_ctrl_c_before_the_command_starts_is_one_line():
    """A Ctrl-C while the parser is built (the first moments of every command) is one line
    and exit code 130, as a Ctrl-C during a run, not a KeyboardInterrupt traceback."""
    script = ("import maml_bench.cli as cli\n"
              "def interrupted():\n    raise KeyboardInterrupt\n"
              "cli.build_parser = interrupted\ncli.entry()\n")
    done = subprocess.run([sys.executable, "-c", script, "list"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "maml-bench: interrupted"


def test_run_report_plot_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--scale", "tiny", "--out", str(out), "--method", "maml",
                 "--method", "pretrain", "--method", "oracle", "--set", "eval_steps=10"]) == 0
    tables = out / "sinusoid-table2-v1" / "tables"
    table2 = pd.read_csv(tables / "table2.csv")
    for column in ("experiment", "method", "shots", "steps", "metric", "paper", "mean",
                   "ci_low", "ci_high", "n", "paper_in_ci"):
        assert column in table2.columns
    maml = table2[(table2["method"] == "maml") & (table2["steps"] == 1)].iloc[0]
    assert maml["paper"] == 0.67 and maml["n"] == 12
    assert maml["ci_low"] <= maml["mean"] <= maml["ci_high"]
    assert "MAML" in (tables / "table2.md").read_text()
    assert "\\begin{table}" in (tables / "table2.tex").read_text()
    figure = out / "sinusoid-table2-v1" / "figures" / "figure3.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # report again with the t interval: the table names it
    assert main(["report", "--out", str(out), "--ci", "t"]) == 0
    assert "Student-t" in (tables / "table2.md").read_text()


def test_compare_protocol_variants(tmp_path):
    out = str(tmp_path)
    for experiment in ("sinusoid-table2-v1", "sinusoid-table2-codelr-v1"):
        assert main(["run", experiment, "--scale", "tiny", "--method", "maml", "--out", out,
                     "--no-report", "--set", "eval_steps=10"]) == 0
    assert main(["compare", "sinusoid-table2-v1", "sinusoid-table2-codelr-v1", "--out", out,
                 "--name", "maml-k5"]) == 0
    table = pd.read_csv(tmp_path / "comparisons" / "maml-k5.csv")
    assert set(table["method"]) == {"sinusoid-table2-v1", "sinusoid-table2-codelr-v1"}
    assert {1, 5, 10} <= set(table["steps"]) and (table["paper"].dropna() > 0).all()
    text = (tmp_path / "comparisons" / "maml-k5.md").read_text()
    assert "alpha=0.001" in text and "alpha=0.01" in text and "worst task after 10" in text


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["run"], ["report"], ["plot"],
                                     ["compare"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    assert "usage: maml-bench" in capsys.readouterr().out


def test_show_times_each_scale_by_a_committed_run(tmp_path, monkeypatch, capsys):
    """The scales' times are a committed run's measured pace times their iterations (the
    results/ of the working directory before the checkout's), and that run is named."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--scale", "tiny", "--method", "maml", "--no-report",
                 "--out", "results"]) == 0
    info = tmp_path / "results" / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0" / "run.json"
    seconds = json.loads(info.read_text())["train_seconds"]
    iterations = json.loads(info.read_text())["iterations"]
    capsys.readouterr()
    main(["show", "sinusoid-table2-v1"])
    out = capsys.readouterr().out
    paper = next(line for line in out.splitlines() if line.startswith("  paper "))
    assert f"[about {duration(seconds / iterations * 70_000)} of MAML training]" in paper
    assert "measured by the committed run results/sinusoid-table2-v1/raw/maml/seed-0" in out
    assert "tiny" in out and "for tests" in out
