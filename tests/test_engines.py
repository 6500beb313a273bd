"""Engines (Ray, SLURM through submitit's local executor) give the records `--engine local`
gives; a worker or job killed mid-run still ends with every record present once; grids run one
output directory per point with a comparison across them; bad engine options are one line."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from maml_bench import cli
from maml_bench.engines.ray_engine import WORKER_NICENESS_ENV
from maml_bench.results import RECORDS_FILE, check_run

EXPERIMENT = "sinusoid-table2-v1"
TINY = ["run", EXPERIMENT, "--scale", "tiny", "--method", "maml", "--no-report"]
#: long enough to be killed mid-run after its first checkpoint, short enough for CI
LONG = ["--set", "iterations=600", "--set", "checkpoint_every=100", "--set", "log_every=100",
        "--set", "check_every=50"]


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def records(out: Path, method: str = "maml") -> dict[str, pd.DataFrame]:
    """Each run's records (values and keys; provenance such as dates differs by design)."""
    found = {}
    for path in sorted(out.glob(f"**/raw/{method}/seed-*/{RECORDS_FILE}")):
        assert check_run(path.parent)[0] is None, path
        frame = pd.read_csv(path)
        found[str(path.parent.relative_to(out))] = frame[
            ["run_id", "seed", "run_seed", "shots", "task", "step", "metric", "value"]]
    return found


def assert_same_records(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], check_exact=True)
        assert not a[key].duplicated(["shots", "task", "step", "metric"]).any(), key


def kill_when_checkpointed(run_dir: Path, killed: list[int]) -> None:
    """SIGKILL the process holding the run's lock once its first checkpoint exists."""
    deadline = time.time() + 240
    while time.time() < deadline and not killed:
        try:
            pid = int((run_dir / ".run.lock").read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and (run_dir / "checkpoint.pt").exists() and not (run_dir / "run.json").exists():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def local_long(tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("local-long")
    assert cli.main([*TINY, *LONG, "--out", str(out)]) == 0
    return records(out)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the cluster extra: pip install -e '.[cluster]'")
    # One local cluster for the module (starting one costs seconds); the engine joins it. Ray
    # lowers its workers' priority (nice 15), which starves them on a busy machine; not here.
    os.environ[WORKER_NICENESS_ENV] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
    os.environ.pop(WORKER_NICENESS_ENV, None)


def test_grid_runs_each_point_and_compares_them(tmp_path, capsys):
    out = tmp_path / "grid"
    code, err = run_cli(capsys, ["run", EXPERIMENT, "--scale", "tiny", "--method", "maml",
                                 "--grid", "inner_lr=0.01,0.001", "--grid", "meta_batch=5,10",
                                 "--out", str(out)])
    assert code == 0, err
    points = sorted(p.name for p in (out / "grid").iterdir() if p.name.startswith("inner_lr"))
    assert points == [f"inner_lr-{a}__meta_batch-{b}" for a in ("0.001", "0.01")
                      for b in ("10", "5")]
    for point in points:
        info = (out / "grid" / point / EXPERIMENT / "raw" / "maml" / "seed-0" / "run.json")
        text = info.read_text()
        lr, mb = point.replace("inner_lr-", "").split("__meta_batch-")
        assert f'"inner_lr": {lr}' in text and f'"meta_batch": {mb}' in text
    table = (out / "grid" / "comparisons" / "maml-k5.md").read_text()
    assert all(p in table for p in points)
    # `compare --grid` rebuilds the table from the grid's index
    (out / "grid" / "comparisons" / "maml-k5.md").unlink()
    code, err = run_cli(capsys, ["compare", EXPERIMENT, "--grid", str(out), "--shots", "5",
                                 "--steps", "0,1,3"])
    assert code == 0, err
    assert all(p in (out / "grid" / "comparisons" / "maml-k5.md").read_text() for p in points)


@pytest.mark.parametrize("argv", [
    ["--engine", "kubernetes"],
    ["--address", "auto"],  # a Ray option with the local engine
    ["--engine", "ray", "--partition", "gpu"],  # a SLURM option with Ray
    ["--grid", "inner_lr"],
    ["--grid", "inner_lr=0.01,0.01"],
    ["--grid", "inner_lr=-1,0.01"],  # outside the setting's domain: refused before any run
    ["--grid", "no_such_setting=1,2"],
])
def test_bad_engine_or_grid_option_is_one_line(argv, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(capsys, [*TINY, "--out", str(out), *argv])
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not list(out.glob("**/raw"))


def test_slurm_without_sbatch_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    code, err = run_cli(capsys, [*TINY, "--out", str(tmp_path / "o"), "--engine", "slurm"])
    assert code == 2 and "sbatch" in err and len(err.strip().splitlines()) == 1, err


def test_ray_sweep_matches_local_even_with_a_killed_worker(ray_cluster, tmp_path, capsys):
    """One Ray command (workers start slowly, so one for both checks): a two-point grid whose
    first point's worker is SIGKILLed mid-run gives exactly the local engine's records."""
    grid = ["--grid", "inner_lr=0.01,0.001"]
    assert cli.main([*TINY, *LONG, *grid, "--out", str(tmp_path / "local")]) == 0
    out = tmp_path / "ray"
    run_dir = out / "grid" / "inner_lr-0.01" / EXPERIMENT / "raw" / "maml" / "seed-0"
    killed: list[int] = []
    killer = threading.Thread(target=kill_when_checkpointed, args=(run_dir, killed))
    killer.start()
    code, err = run_cli(capsys, [*TINY, *LONG, *grid, "--out", str(out), "--engine", "ray"])
    killer.join()
    assert killed, "the run finished before it could be killed"
    assert code == 0, err
    assert "ray: 2 done, 0 running, 0 failed, 0 pending" in err
    assert_same_records(records(tmp_path / "local"), records(out))


def test_submitit_local_matches_local_and_survives_a_killed_job(local_long, tmp_path, capsys):
    pytest.importorskip("submitit", reason="the cluster extra: pip install -e '.[cluster]'")
    out = tmp_path / "submitit"
    run_dir = out / EXPERIMENT / "raw" / "maml" / "seed-0"
    killed: list[int] = []
    killer = threading.Thread(target=kill_when_checkpointed, args=(run_dir, killed))
    killer.start()
    code, err = run_cli(capsys, [*TINY, *LONG, "--out", str(out), "--engine", "submitit-local"])
    killer.join()
    assert killed, "the run finished before it could be killed"
    assert code == 0, err
    assert "resubmitting" in err
    assert_same_records(local_long, records(out))
    assert list((out / "logs" / "submitit-local").glob("*/*_log.err"))  # per-job logs kept
    index = (out / "logs" / "submitit-local" / "runs.tsv").read_text().splitlines()
    assert len(index) == 2 and all(line.startswith(f"{EXPERIMENT}/maml/seed-0\t")
                                   for line in index)  # the first attempt and the retry


def test_grid_names_points_by_their_values(tmp_path, capsys):
    """1e-2 and 0.01 are one point; the axes' order does not change the directory names."""
    out = tmp_path / "g"
    code, err = run_cli(capsys, [*TINY, "--out", str(out), "--grid", "inner_lr=0.01,1e-2"])
    assert code == 2 and "same settings" in err and len(err.strip().splitlines()) == 1, err
    code, err = run_cli(capsys, [*TINY, "--out", str(out), "--set", "inner_lr=0.1",
                                 "--grid", "inner_lr=0.01,0.02"])
    assert code == 2 and "both in --set and in --grid" in err, err
    code, err = run_cli(capsys, [*TINY, "--out", str(out), "--grid", "meta_batch=5",
                                 "--grid", "inner_lr=1e-2"])
    assert code == 0, err
    assert (out / "grid" / "inner_lr-0.01__meta_batch-5").is_dir()
    code, err = run_cli(capsys, [*TINY, "--out", str(out), "--grid", "inner_lr=0.02",
                                 "--grid", "meta_batch=5"])  # a later grid adds its point
    assert code == 0, err
    from maml_bench.grid import read_index

    assert [p.name for p in read_index(out)[1]] == ["inner_lr-0.01__meta_batch-5",
                                                    "inner_lr-0.02__meta_batch-5"]
    code, err = run_cli(capsys, ["compare", EXPERIMENT, "--grid", str(out), "--method",
                                 "reptile"])
    assert code == 2 and "no reptile records" in err, err


def test_point_names_are_portable_and_never_shared():
    from maml_bench.grid import point_name

    assert point_name([("inner_lr", "0.01"), ("meta_batch", "5")]) == "inner_lr-0.01__meta_batch-5"
    lists = [point_name([("eval_shots", v)]) for v in ("5,10", "5_10", "5,1,0")]
    assert len(set(lists)) == 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in lists)
    assert len(point_name([("inner_lr", "0.01" * 100)]).encode()) <= 200


def test_a_grid_with_the_old_names_is_renamed_and_resumes(tmp_path, capsys):
    """Grids written before names were portable ("inner_lr=0.01"): their folders are renamed
    once, and the same command then finds every run done."""
    out = tmp_path / "g"
    argv = [*TINY, "--out", str(out), "--grid", "inner_lr=0.01,0.02"]
    assert run_cli(capsys, argv)[0] == 0
    index = json.loads((out / "grid" / "grid.json").read_text())
    for entry in index["points"]:  # back to the old layout
        old = entry["name"].replace("-", "=", 1)
        (out / "grid" / entry["name"]).rename(out / "grid" / old)
        entry["name"] = old
    (out / "grid" / "grid.json").write_text(json.dumps(index))
    code, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "started" not in err  # nothing retrained
    assert sorted(p.name for p in (out / "grid").iterdir() if p.name.startswith("inner")) == [
        "inner_lr-0.01", "inner_lr-0.02"]


def test_slurm_refusing_the_jobs_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, body in (("sbatch", 'echo "sbatch: error: invalid partition specified: nope" >&2'
                        "\nexit 1"), ("srun", "exit 0"), ("sacct", "exit 0")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, err = run_cli(capsys, [*TINY, "--out", str(tmp_path / "o"), "--engine", "slurm",
                                 "--partition", "nope"])
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "invalid partition" in last, err


def test_local_engine_runs_the_others_when_one_fails(tmp_path, capsys, monkeypatch):
    """A run's own failure (here: injected) does not stop a local sweep; the command names it
    and exits 2 after the other runs have finished."""
    from maml_bench import executors
    from maml_bench.errors import TrainingDiverged

    real = executors._run_one

    def flaky(run, progress, announce):
        if "inner_lr-0.001" in str(run.directory):
            raise TrainingDiverged(f"{run.run_id}: non-finite loss (injected)")
        return real(run, progress, announce)

    monkeypatch.setattr(executors, "_run_one", flaky)
    out = tmp_path / "g"
    code, err = run_cli(capsys, [*TINY, "--out", str(out), "--grid", "inner_lr=0.001,0.01"])
    assert code == 2 and "1 of 2 runs failed" in err and "injected" in err, err
    assert (out / "grid" / "inner_lr-0.01" / EXPERIMENT / "raw" / "maml" / "seed-0" /
            RECORDS_FILE).exists()


def test_a_run_held_by_another_process_is_waited_for_not_failed(tmp_path, capsys):
    """An earlier sweep's job still training a run (here: this test holding its lock): the new
    sweep's job is told busy, the engine waits until the lock is released, then runs it."""
    pytest.importorskip("submitit")
    import fcntl

    out = tmp_path / "s"
    run_dir = out / EXPERIMENT / "raw" / "maml" / "seed-0"
    run_dir.mkdir(parents=True)
    holder = open(run_dir / ".run.lock", "a+")  # noqa: SIM115 - held across the thread
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("424242\n")
    holder.flush()
    result: list[int] = []
    sweep = threading.Thread(target=lambda: result.append(cli.main(
        [*TINY, "--out", str(out), "--engine", "submitit-local"])))
    sweep.start()
    deadline = time.time() + 240
    logs = out / "logs" / "submitit-local"
    while not list(logs.glob("*/*_result.pkl")) and time.time() < deadline:
        time.sleep(0.2)  # the first job has come back: busy
    holder.truncate(0)
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    sweep.join()
    err = capsys.readouterr().err
    assert result == [0], err
    assert "waiting:" in err and "pid 424242" in err, err
    assert (run_dir / RECORDS_FILE).exists() and check_run(run_dir)[0] is None
