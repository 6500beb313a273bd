"""Faults injected on purpose: non-finite values never pass for good ones, damaged or
duplicated records are refused, two processes never train one run, Ctrl-C stops a pool, and
runs in a log print progress lines."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from maml_bench.algorithms.maml import MAML
from maml_bench.cli import main
from maml_bench.errors import TrainingDiverged, UserError
from maml_bench.executors import run_all
from maml_bench.results import RECORD_COLUMNS, RECORDS_FILE, RUN_INFO_FILE, load_records
from maml_bench.runner import CHECKPOINT_FILE, LOCK_FILE, TRAIN_LOG_FILE, execute, is_done


def poison_at(monkeypatch, index: int, params: bool = True) -> None:
    """From iteration `index` on, MAML's loss is inf and (optionally) its parameters NaN."""
    original = MAML.train_step

    def step(self, iteration):
        loss = original(self, iteration)
        if iteration < index:
            return loss
        if params:
            with torch.no_grad():
                next(iter(self.theta.values())).fill_(float("nan"))
        return loss * float("inf")

    monkeypatch.setattr(MAML, "train_step", step)


def test_checkpoint_is_never_written_with_nonfinite_state(tiny_runs, monkeypatch):
    # Finiteness checks at 12, 24, ..., 72, 84; checkpoints at 39, 78. The state goes NaN at
    # iteration 75: the checkpoint due at 78 must not be written.
    poison_at(monkeypatch, 74)
    (run,) = tiny_runs(["maml"], overrides=["iterations=300", "check_every=12",
                                            "checkpoint_every=39", "log_every=100"])
    with pytest.raises(TrainingDiverged, match=r"iteration 78; last good checkpoint .*"
                                                r"\(iteration 39\) kept"):
        execute(run)
    state = torch.load(run.directory / CHECKPOINT_FILE, weights_only=False)
    assert state["iteration"] == 39
    assert all(torch.isfinite(v).all() for v in state["algorithm"]["model"].values())


def test_nonfinite_loss_is_caught_whatever_log_and_check_intervals(tiny_runs, monkeypatch):
    # The loss turns inf at iteration 22; a log row is due at 23 and checks at 10, 20, 30: the
    # log row must not record inf and pass.
    poison_at(monkeypatch, 21, params=False)
    (run,) = tiny_runs(["maml"], overrides=["iterations=80", "check_every=10", "log_every=23",
                                            "checkpoint_every=100"])
    with pytest.raises(TrainingDiverged, match="iteration 23"):
        execute(run)
    assert not (run.directory / TRAIN_LOG_FILE).exists()


def test_nonfinite_meta_test_results_are_counted_and_warned(tiny_runs, monkeypatch, capsys):
    original = MAML.evaluate

    def evaluate(self):
        curves = original(self)
        curves[5][:3, 2:] = float("nan")  # three test tasks diverge after 2 steps
        return curves

    monkeypatch.setattr(MAML, "evaluate", evaluate)
    runs = tiny_runs(["maml", "pretrain"])
    run_all(runs, progress=False)
    info = json.loads((runs[0].directory / RUN_INFO_FILE).read_text())
    steps = runs[0].config.eval_steps
    assert info["nonfinite_test_values"] == 3 * (steps - 1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "maml: 6 of" in warnings[0], warnings


def _truncate(path: Path, rows: int) -> None:
    frame = pd.read_csv(path)
    path.write_bytes(gzip.compress(frame.head(rows).to_csv(index=False).encode()))


@pytest.mark.parametrize("legacy", [False, True], ids=["checksum", "legacy-row-count"])
def test_damaged_records_are_refused_and_the_run_redone(tiny_runs, capsys, legacy):
    (run,) = tiny_runs(["pretrain"])
    out = run.out
    execute(run)
    records = run.directory / RECORDS_FILE
    good = pd.read_csv(records)
    if legacy:  # run.json written before checksums: verified by the expected row count
        info = json.loads((run.directory / RUN_INFO_FILE).read_text())
        del info["records_rows"], info["records_sha256"]
        (run.directory / RUN_INFO_FILE).write_text(json.dumps(info))
    _truncate(records, 10)
    with pytest.raises(UserError, match=rf"{records}.*not trustworthy.*10 rows"):
        load_records([records])
    capsys.readouterr()
    assert main(["report", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(records) in err[0] and "rerun" in err[0]
    assert not is_done(run)  # so `run --no-report` redoes it instead of "already done"
    execute(run)
    pd.testing.assert_frame_equal(pd.read_csv(records)[RECORD_COLUMNS], good[RECORD_COLUMNS])


def test_a_changed_byte_is_caught_by_the_checksum(tiny_runs):
    (run,) = tiny_runs(["pretrain"])
    execute(run)
    records = run.directory / RECORDS_FILE
    frame = pd.read_csv(records)
    frame.loc[0, "value"] += 1.0  # same row count, different number
    records.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    with pytest.raises(UserError, match="checksum"):
        load_records([records])


def test_second_process_on_the_same_run_is_refused(tiny_runs):
    (run,) = tiny_runs(["maml"])
    run.directory.mkdir(parents=True)
    with open(run.directory / LOCK_FILE, "w") as holder:  # another "process" holds the run
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        with pytest.raises(UserError, match=r"another process \(pid 4242\)"):
            execute(run)
    assert not (run.directory / RECORDS_FILE).exists()
    execute(run)  # lock released: the run goes ahead
    assert is_done(run)


def test_stray_temp_files_are_cleaned(tiny_runs):
    (run,) = tiny_runs(["pretrain"])
    run.directory.mkdir(parents=True)
    stray = run.directory / f".{RECORDS_FILE}.abc123.tmp"
    stray.write_bytes(b"half a file from a killed write")
    execute(run)
    assert not stray.exists()


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maml_bench.cli", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            **kwargs)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (read from /proc: no procps needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_ctrl_c_stops_every_worker_and_keeps_checkpoints(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--scale", "tiny", "--jobs", "2", "--no-report", "--out", str(out),
            "--method", "maml", "--method", "fomaml", "--method", "reptile",
            "--set", "iterations=1000000", "--set", "checkpoint_every=50"]
    proc = _cli(args)
    raw = out / "sinusoid-table2-v1" / "raw"
    deadline = time.monotonic() + 120
    while len(list(raw.glob(f"*/seed-0/{CHECKPOINT_FILE}"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    workers = _children(proc.pid)
    assert workers
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)  # to the parent only, as `kill -INT`
    proc.wait(timeout=30)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 130, proc.stderr.read()
    time.sleep(0.5)
    assert not [w for w in workers if _alive(w)]
    # Each started run kept its checkpoint; the queued third run never started.
    assert len(list(raw.glob(f"*/seed-0/{CHECKPOINT_FILE}"))) == 2
    assert not list(raw.glob(f"*/seed-0/{RECORDS_FILE}"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_background_run_stops_on_sigint_or_sigterm_and_keeps_its_checkpoint(tmp_path, sig):
    """Started with `nohup ... &` (SIGINT ignored, as a shell does), `kill -INT` and the
    SIGTERM of a session's end or a scheduler stop the run as Ctrl-C does: exit 130, the
    resume hint, the checkpoint kept."""
    out = tmp_path / "out"
    args = ["run", "--scale", "tiny", "--no-report", "--out", str(out), "--method", "maml",
            "--set", "iterations=1000000", "--set", "checkpoint_every=50"]
    proc = _cli(args, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    ckpt = out / "sinusoid-table2-v1" / "raw" / "maml" / "seed-0" / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    err = proc.stderr.read()
    assert proc.returncode == 130, err
    assert "interrupted; run the same command again to resume" in err
    assert torch.load(ckpt, weights_only=False)["iteration"] >= 50


def test_progress_lines_when_stderr_is_a_log(tmp_path):
    env = {**os.environ, "MAML_BENCH_PROGRESS_SECONDS": "0"}
    env.pop("CI", None)
    proc = _cli(["run", "--scale", "tiny", "--no-report", "--out", str(tmp_path), "--method",
                 "maml", "--method", "pretrain", "--set", "iterations=40"], env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert any("started sinusoid-table2-v1/maml/seed-0" in line for line in lines), err
    assert any("finished sinusoid-table2-v1/maml/seed-0 in" in line and "1/2 runs done, ETA"
               in line for line in lines), err
    assert any("maml/seed-0: iteration" in line and "ETA" in line for line in lines), err


def test_report_reads_where_run_wrote(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--scale", "tiny", "--method", "maml", "--no-report"]) == 0
    assert main(["report", "--scale", "tiny"]) == 0
    assert (tmp_path / "runs" / "tiny" / "sinusoid-table2-v1" / "tables" / "table2.md").exists()
    capsys.readouterr()
    assert main(["report"]) == 2  # quick scale: nothing there, and the message says where
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs/tiny" in err[0], err
