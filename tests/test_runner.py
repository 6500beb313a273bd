"""Runner: records, resume after a kill, atomic writes, determinism, divergence, bad state."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from maml_bench.algorithms import ALGORITHMS
from maml_bench.errors import TrainingDiverged, UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.results import (
    KEY_COLUMNS,
    RECORD_COLUMNS,
    RECORDS_FILE,
    atomic_write_text,
    load_records,
    read_records,
)
from maml_bench.run_spec import derive_seed
from maml_bench.runner import CHECKPOINT_FILE, execute

SINUSOID_METHODS = [m.algorithm for m in EXPERIMENTS.get("sinusoid-table2-v1").methods]


def values(run_dir: Path) -> pd.DataFrame:
    frame = read_records(run_dir / RECORDS_FILE)
    return frame[RECORD_COLUMNS].sort_values(KEY_COLUMNS).reset_index(drop=True)


@pytest.mark.parametrize("method", SINUSOID_METHODS)
def test_every_sinusoid_algorithm_runs_end_to_end(tiny_runs, method):
    (run,) = tiny_runs([method])
    frame = values(execute(run))
    config = run.config
    assert len(frame) == len(config.eval_shots) * config.test_tasks * (config.eval_steps + 1)
    assert set(frame["shots"]) == set(config.eval_shots)
    assert frame["value"].notna().all() and (frame["value"] >= 0).all()
    assert (frame["run_seed"] == derive_seed(run.experiment, method, 0)).all()
    assert not frame.duplicated(KEY_COLUMNS).any()


def test_every_registered_algorithm_is_in_an_experiment():
    used = {m.algorithm for name in EXPERIMENTS for m in EXPERIMENTS.get(name).methods}
    assert set(ALGORITHMS.names()) <= used


def test_records_have_provenance(tiny_runs):
    (run,) = tiny_runs(["maml"])
    frame = read_records(execute(run) / RECORDS_FILE)
    for column in ("git_sha", "torch_version", "device", "date", "config_hash"):
        assert frame[column].notna().all()
    assert frame["torch_version"].iloc[0] == torch.__version__


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_runs, tmp_path):
    (a,) = tiny_runs(["maml"], out=tmp_path / "a")
    (b,) = tiny_runs(["maml"], out=tmp_path / "b")
    first, second = values(execute(a)), values(execute(b))
    pd.testing.assert_frame_equal(first, second)
    runs = tiny_runs(["maml"], out=tmp_path / "c", seeds=2)
    third = values(execute(runs[1]))
    assert not first["value"].equals(third["value"])


def test_finished_run_is_skipped_and_merging_is_idempotent(tiny_runs):
    (run,) = tiny_runs(["pretrain"])
    run_dir = execute(run)
    stamp = (run_dir / RECORDS_FILE).stat().st_mtime_ns
    execute(run)
    assert (run_dir / RECORDS_FILE).stat().st_mtime_ns == stamp
    once = load_records([run_dir / RECORDS_FILE])
    twice = load_records([run_dir / RECORDS_FILE, run_dir / RECORDS_FILE])
    pd.testing.assert_frame_equal(once, twice)


def test_rerun_with_another_config_is_refused(tiny_runs):
    (run,) = tiny_runs(["pretrain"])
    execute(run)
    (other,) = tiny_runs(["pretrain"], overrides=["meta_lr=0.01"])
    with pytest.raises(UserError, match="another config"):
        execute(other)


KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from maml_bench.algorithms.maml import MAML
    from maml_bench import cli

    kill_at = int(os.environ["KILL_AT"])
    original = MAML.train_step

    def train_step(self, iteration):
        if iteration == kill_at:
            # SIGKILL: a real kill, no cleanup, no finally; SIGTERM: a session's end
            os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))
        return original(self, iteration)

    MAML.train_step = train_step
    sys.exit(cli.main(sys.argv[1:]))
""")


def run_cli(args: list[str], env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-c", KILL_DRIVER, *args], capture_output=True,
                          text=True, env={**os.environ, "KILL_AT": "-1", **(env or {})},
                          timeout=300)


#: the interrupted runs' command (log rows every 8: a stop between rows keeps the partial sum)
STOP_ARGS = ["run", "--method", "maml", "--scale", "tiny", "--set", "iterations=40",
             "--set", "log_every=8", "--no-report"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """STOP_ARGS run without interruption, in a process of its own as the others."""
    out = tmp_path_factory.mktemp("clean")
    done = run_cli([*STOP_ARGS, "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0"


def resume_and_compare(interrupted: Path, clean_dir: Path) -> pd.DataFrame:
    """Resume the run under `interrupted` with the same command and require the records and
    training log of the uninterrupted run (nothing lost or duplicated); returns the resumed
    run's training log."""
    done = run_cli([*STOP_ARGS, "--out", str(interrupted)])
    assert done.returncode == 0, done.stderr
    run_dir = interrupted / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0"
    pd.testing.assert_frame_equal(values(run_dir), values(clean_dir))
    log = pd.read_csv(run_dir / "train_log.csv")
    pd.testing.assert_frame_equal(log, pd.read_csv(clean_dir / "train_log.csv"))
    return log


def test_killed_run_resumes_without_losing_or_duplicating(tmp_path, uninterrupted):
    killed = run_cli([*STOP_ARGS, "--out", str(tmp_path / "killed")], {"KILL_AT": "25"})
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / "killed" / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0"
    assert (run_dir / CHECKPOINT_FILE).exists()
    assert not (run_dir / RECORDS_FILE).exists()
    assert torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)["iteration"] == 20

    log = resume_and_compare(tmp_path / "killed", uninterrupted)
    assert log["iteration"].is_unique


def test_a_stop_checkpoints_the_iteration_in_flight_and_resumes_exactly(tmp_path,
                                                                       uninterrupted):
    """SIGTERM (or Ctrl-C) mid-iteration: the iteration finishes, a checkpoint is written
    right there with the loss summed since the last log row, exit 130; the same command then
    resumes from it to the numbers and training log of an uninterrupted run."""
    stopped = run_cli([*STOP_ARGS, "--out", str(tmp_path / "stopped")],
                      {"KILL_AT": "25", "KILL_SIGNAL": "SIGTERM"})
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped after iteration 26, checkpoint written" in stopped.stderr
    assert "meta-testing" not in stopped.stderr
    run_dir = tmp_path / "stopped" / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0"
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)
    assert state["iteration"] == 26 and state["pending"]["steps"] == 2  # 25, 26 after row 24
    assert not (run_dir / RECORDS_FILE).exists()

    resume_and_compare(tmp_path / "stopped", uninterrupted)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]  # no temp file left


def test_nan_stops_training_and_keeps_last_good_checkpoint(tiny_runs, monkeypatch):
    from maml_bench.algorithms.maml import MAML

    original = MAML.train_step

    def poisoned(self, iteration):
        loss = original(self, iteration)
        if iteration == 12:
            with torch.no_grad():
                next(iter(self.theta.values())).fill_(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(MAML, "train_step", poisoned)
    (run,) = tiny_runs(["maml"])
    with pytest.raises(TrainingDiverged, match=r"non-finite .* iteration 15; last good "
                                                r"checkpoint .* \(iteration 10\) kept"):
        execute(run)
    state = torch.load(run.directory / CHECKPOINT_FILE, weights_only=False)
    assert state["iteration"] == 10
    assert all(torch.isfinite(v).all() for v in state["algorithm"]["model"].values())
    assert not (run.directory / RECORDS_FILE).exists()


def test_corrupt_checkpoint_gives_clear_error(tiny_runs):
    (run,) = tiny_runs(["maml"])
    run.directory.mkdir(parents=True)
    (run.directory / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable.*delete it"):
        execute(run)


def test_corrupt_records_give_clear_error(tmp_path):
    bad = tmp_path / RECORDS_FILE
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="unreadable"):
        read_records(bad)


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
_REFAULT_PROBE = """
import ctypes, resource
from maml_bench.memory import keep_freed_memory
assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def touch(n=64 << 20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(n)
    libc.memset(block, 1, n)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(*[touch() for _ in range(3)])
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_memory_is_reused_without_page_faults():
    """64 MiB malloc'd, written and freed, three times: only the first faults its pages in.
    The heap is not trimmed at every free (a 4 GiB trim threshold passed as a C int once
    wrapped to 0, which trims always: ~20,000 page faults per Omniglot 5-way 1-shot meta-step,
    ~10% of its time)."""
    out = subprocess.run([sys.executable, "-c", _REFAULT_PROBE], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    first, *again = (int(v) for v in out.stdout.split())
    assert first > 10_000 and max(again) < 1_000  # 64 MiB faulted in again: 16,384


def test_runs_keep_freed_memory_for_reuse():
    """glibc's thresholds are raised once per process (maml_bench/memory.py); a second call
    changes nothing, and a platform without glibc is left alone."""
    from maml_bench.memory import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
    if GLIBC:
        assert first
