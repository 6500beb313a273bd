"""The CI regression check (maml_bench/benchcheck.py, `tox -e bench`): it passes on the
committed baseline's own numbers and fails on a slowed path or a learning regression."""

from __future__ import annotations

import json
import subprocess
import sys

from maml_bench.benchcheck import METRICS, check, main

BASELINE = {"metrics": {
    "sinusoid_meta_step_loop_over_ours": {"value": 12.0, "tolerance": 0.3},
    "omniglot_sampling_share_of_step": {"value": 0.005, "tolerance": 0.02, "mode": "absolute"},
    "sinusoid_maml_quick_mse": {"value": 0.5, "tolerance": 0.25},
    "omniglot_maml_quick_accuracy": {"value": 70.0, "tolerance": 6.0, "mode": "absolute"},
}}


def write_run(directory, loop_over_ours=12.0, share=0.005, mse=0.5, accuracy=70.0):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta-step-ratios.json").write_text(json.dumps(
        {"timings": {"per_task_loop": {"times_slower_than_ours": loop_over_ours}}}))
    (directory / "omniglot-meta-step-cpu.json").write_text(json.dumps(
        {"sampling_share_of_step": share}))
    (directory / "accuracy-regression.json").write_text(json.dumps(
        {"sinusoid_maml_mse": mse, "omniglot_maml_accuracy": accuracy}))
    return directory


def statuses(directory):
    return {v.metric: v.status for v in check(directory, BASELINE)}


def test_the_baselines_own_numbers_and_small_moves_pass(tmp_path):
    assert set(statuses(write_run(tmp_path / "a")).values()) == {"ok"}
    run = write_run(tmp_path / "b", loop_over_ours=9.0, mse=0.6, accuracy=65.0)  # within bands
    assert set(statuses(run).values()) == {"ok"}


def test_a_slowed_path_fails(tmp_path):
    """Our step twice as slow halves its ratio against the loop measured beside it."""
    run = write_run(tmp_path, loop_over_ours=6.0)
    assert statuses(run)["sinusoid_meta_step_loop_over_ours"] == "regressed"
    assert main(["--current", str(run), "--baseline", str(baseline_file(tmp_path))]) == 1


def test_a_learning_regression_fails_in_either_direction_of_its_metric(tmp_path):
    worse_mse = statuses(write_run(tmp_path / "a", mse=0.7))  # lower is better
    assert worse_mse["sinusoid_maml_quick_mse"] == "regressed"
    worse_acc = statuses(write_run(tmp_path / "b", accuracy=60.0))  # higher is better
    assert worse_acc["omniglot_maml_quick_accuracy"] == "regressed"
    better = statuses(write_run(tmp_path / "c", mse=0.2, accuracy=90.0))
    assert better["sinusoid_maml_quick_mse"] == better["omniglot_maml_quick_accuracy"] == (
        "improved")


def test_nan_never_passes_and_absent_files_are_skipped(tmp_path):
    run = write_run(tmp_path / "a", mse=float("nan"))
    assert statuses(run)["sinusoid_maml_quick_mse"] == "regressed"
    (tmp_path / "b").mkdir()
    assert set(statuses(tmp_path / "b").values()) == {"skipped"}


def baseline_file(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(BASELINE))
    return path


def test_the_command_line_and_the_committed_baseline(tmp_path):
    from pathlib import Path

    committed = json.loads(Path("benchmarks/baseline.json").read_text())
    assert set(committed["metrics"]) <= set(METRICS)  # every committed metric is known
    run = write_run(tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "maml_bench.benchcheck", "--current", str(run),
                          "--baseline", str(baseline_file(tmp_path))],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "ok sinusoid_meta_step_loop_over_ours" in out.stdout
    slow = write_run(tmp_path / "slow", loop_over_ours=3.0)
    out = subprocess.run([sys.executable, "-m", "maml_bench.benchcheck", "--current", str(slow),
                          "--baseline", str(baseline_file(tmp_path))],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "REGRESSED sinusoid_meta_step_loop_over_ours" in out.stdout
