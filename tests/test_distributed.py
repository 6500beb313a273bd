"""Data-parallel meta-batches under torchrun (gloo on CPU): a 2-process run matches the
single-process run within floating-point tolerance; what cannot be split is refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maml_bench import distributed
from maml_bench.cli import main
from maml_bench.core.functional import (
    SupervisedBatch,
    _adaptation_curves,
    evaluate_adaptation,
    make_batched_forward,
    task_mse,
)
from maml_bench.errors import UserError
from maml_bench.executors import setup_run_command
from maml_bench.results import (
    KEY_COLUMNS,
    RECORD_COLUMNS,
    RECORDS_FILE,
    RUN_INFO_FILE,
    read_records,
)
from maml_bench.runner import CHECKPOINT_FILE, TRAIN_LOG_FILE

EXPERIMENT = "sinusoid-table2-v1"
# tiny scale: 20 iterations of 25 tasks (shares of 13 and 12), checkpoints at 10 and 20; 13 test
# tasks (7 and 6) in chunks of 5 (eval_chunk), so every split here is uneven.
SETTINGS = ["--scale", "tiny", "--set", "test_tasks=13", "--no-report"]
# float32 throughout: the two runs differ only in the order of additions (the meta-gradient
# summed per share then over processes, instead of over all tasks at once; test tasks adapted in
# other chunks), ~1e-7 relative per operation; 20 Adam steps and 3 adaptation steps keep it
# within a few 1e-7 (observed: at most ~2e-6 absolute on values of order 1).
RTOL, ATOL = 1e-5, 1e-6


def test_bounds_are_contiguous_uneven_shares():
    for n, parts in [(25, 2), (13, 2), (7, 3), (2, 3), (4, 4)]:
        spans = [distributed.bounds(n, r, parts) for r in range(parts)]
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        sizes = [stop - start for start, stop in spans]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert distributed.bounds(5) == (0, 5)  # no process group: the whole batch


def _batch(n: int) -> SupervisedBatch:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 6, 1, generator=gen) * 10 - 5
    return SupervisedBatch(x[:, :3], torch.sin(x[:, :3]), x[:, 3:], torch.sin(x[:, 3:]),
                           torch.arange(n, dtype=torch.float32).unsqueeze(1))


def _worker(rank: int, world: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        assert distributed.active() and distributed.world_size() == world
        assert distributed.is_main() == (rank == 0)
        batch = _batch(5)
        part = distributed.shard(batch)  # 3 tasks on rank 0, 2 on rank 1
        assert part.n_tasks == (3 if rank == 0 else 2)
        assert torch.equal(part.task_info[:, 0], torch.arange(*distributed.bounds(5)).float())
        full = torch.arange(5 * 2 * 3, dtype=torch.float32).view(5, 2, 3)
        assert torch.equal(distributed.gather_tasks(full[slice(*distributed.bounds(5))], 5), full)
        total, grid = distributed.all_reduce_sum([torch.tensor(rank + 1.0),
                                                  torch.full((2, 2), float(rank))])
        assert total.item() == 3.0 and torch.equal(grid, torch.ones(2, 2))
        assert distributed.broadcast_object({"rank": rank}) == {"rank": 0}

        def fails() -> int:
            raise UserError("rank 0 says no")

        with pytest.raises(UserError, match="rank 0 says no"):
            distributed.from_main(fails)
        # The meta-test split over processes gives the single-process curves (3 shares in
        # chunks of 2 each, against chunks of 2 of all 7 tasks).
        torch.manual_seed(0)  # the same network on both ranks
        model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        forward, theta = make_batched_forward(model), dict(model.named_parameters())
        tasks = _batch(7)
        split = evaluate_adaptation(forward, theta, tasks, task_mse, task_mse, 2, 0.01, 2)
        alone = _adaptation_curves(forward, theta, tasks, task_mse, task_mse, 2, 0.01, 2)
        torch.testing.assert_close(split, alone, rtol=RTOL, atol=ATOL)
        distributed.check_identical(list(theta.values()))
    finally:
        dist.destroy_process_group()


def test_shard_gather_reduce_broadcast_in_two_processes(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def test_shares_of_the_meta_gradient_sum_to_the_whole(tiny_runs):
    """What each process computes (its share / all tasks, in chunks) sums to the
    single-process mean loss and its gradient."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.core.chunking import summed_meta_gradient
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.tasks import BENCHMARKS

    (run,) = tiny_runs(["maml"])
    benchmark = BENCHMARKS.get(EXPERIMENTS.get(EXPERIMENT).benchmark)(run.config)
    algorithm = ALGORITHMS.get("maml")(benchmark, run.config, run.seed)
    batch = benchmark.train_batch(torch.Generator().manual_seed(1), 7, 5, 5)
    params = algorithm.meta_parameters()
    loss = algorithm.query_losses(batch).mean()
    grads = torch.autograd.grad(loss, params)
    shares = [summed_meta_gradient(algorithm.query_losses,
                                   batch.select(*distributed.bounds(7, r, 2)), params, 2,
                                   batch.n_tasks) for r in range(2)]
    torch.testing.assert_close(shares[0][0] + shares[1][0], loss.detach())
    for g, a, b in zip(grads, shares[0][1], shares[1][1], strict=True):
        torch.testing.assert_close(a + b, g)


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m maml_bench.cli run ...` (--standalone: a free port)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "maml_bench.cli", "run", EXPERIMENT, *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300)


def _run_dir(out: Path, method: str) -> Path:
    return out / EXPERIMENT / "raw" / method / "seed-0"


def _records(run_dir: Path) -> pd.DataFrame:
    frame = read_records(run_dir / RECORDS_FILE)
    return frame.sort_values(KEY_COLUMNS).reset_index(drop=True)


def test_two_process_torchrun_matches_one_process(tmp_path):
    methods = ["--method", "maml", "--method", "fomaml"]
    assert main(["run", EXPERIMENT, *methods, *SETTINGS, "--out", str(tmp_path / "one")]) == 0
    result = torchrun(tmp_path / "dp", *methods, *SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    # Progress lines from rank 0 only: one 'started' line per run.
    assert result.stderr.count("started ") == 2, result.stderr[-3000:]
    for method in ("maml", "fomaml"):
        one, dp = _run_dir(tmp_path / "one", method), _run_dir(tmp_path / "dp", method)
        a, b = _records(one), _records(dp)
        assert list(a.columns) == list(b.columns)  # same columns: world size not among them
        pd.testing.assert_frame_equal(a[KEY_COLUMNS], b[KEY_COLUMNS])
        np.testing.assert_allclose(b["value"], a["value"], rtol=RTOL, atol=ATOL)
        logs = [pd.read_csv(d / TRAIN_LOG_FILE) for d in (one, dp)]
        assert logs[0]["iteration"].tolist() == logs[1]["iteration"].tolist()
        np.testing.assert_allclose(logs[1]["train_loss"], logs[0]["train_loss"],
                                   rtol=RTOL, atol=ATOL)
        ckpts = [torch.load(d / CHECKPOINT_FILE, weights_only=False) for d in (one, dp)]
        assert ckpts[0]["iteration"] == ckpts[1]["iteration"] == 20
        assert torch.equal(ckpts[0]["algorithm"]["generator"], ckpts[1]["algorithm"]["generator"])
        for name, tensor in ckpts[0]["algorithm"]["model"].items():
            torch.testing.assert_close(ckpts[1]["algorithm"]["model"][name], tensor,
                                       rtol=RTOL, atol=ATOL)
        info = json.loads((dp / RUN_INFO_FILE).read_text())
        assert info["world_size"] == 2
        assert json.loads((one / RUN_INFO_FILE).read_text())["world_size"] == 1

    # Resume under torchrun: maml's evaluation is redone from rank 0's checkpoint (sent to
    # rank 1), fomaml is done and skipped; the same numbers as before.
    dp = _run_dir(tmp_path / "dp", "maml")
    before = _records(dp)
    stamp = (_run_dir(tmp_path / "dp", "fomaml") / RECORDS_FILE).stat().st_mtime_ns
    (dp / RUN_INFO_FILE).unlink()
    (dp / RECORDS_FILE).unlink()
    result = torchrun(tmp_path / "dp", *methods, *SETTINGS)
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(_records(dp)[RECORD_COLUMNS], before[RECORD_COLUMNS])
    assert (_run_dir(tmp_path / "dp", "fomaml") / RECORDS_FILE).stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("world", "args", "expected"), [
    (2, ["--method", "maml", "--jobs", "2"], "--jobs 2 under torchrun"),
    (2, ["--method", "reptile"], "reptile: no data-parallel meta-batch under torchrun"),
    (30, ["--method", "maml"], "meta_batch 25 is smaller than torchrun's 30 processes"),
    (2, ["--method", "maml", "--device", "cuda:1"], "each process takes cuda:LOCAL_RANK"),
    pytest.param(2, ["--method", "maml", "--device", "cuda"], "sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
])
def test_what_cannot_be_split_is_refused_before_any_work(monkeypatch, capsys, tmp_path, world,
                                                         args, expected):
    # A launcher's environment, without joining a group: the refusal comes first.
    for key, value in {"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert distributed.launched()
    code = main(["run", EXPERIMENT, "--scale", "tiny", *args, "--out", str(tmp_path / "out"),
                 "--no-report"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and expected in err, err
    if "reptile" in expected:  # names the methods that can
        assert "maml, metasgd" in err
    assert not dist.is_initialized()
    assert not (tmp_path / "out").exists()


def test_without_a_launcher_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched() and not distributed.active()
    assert distributed.is_main() and distributed.world_size() == 1
    setup_run_command([], jobs=4)  # no-op
    assert not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: one process
    assert not distributed.launched()


STOP_DRIVER = """
import os, signal, sys
from maml_bench import cli, distributed
from maml_bench.algorithms.maml import MAML

original = MAML.train_step


def train_step(self, iteration):
    who = os.environ.get("STOP_WHO")
    if iteration == 25 and who == "launcher" and distributed.rank() == 0:
        os.kill(os.getppid(), signal.SIGTERM)  # a session's end: SIGTERM to torchrun itself
    if iteration == 25 and who == "rank 1" and distributed.rank() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # one worker alone: the others must follow
    return original(self, iteration)


MAML.train_step = train_step
sys.exit(cli.main(sys.argv[1:]))
"""


STOP_ARGS = ["run", EXPERIMENT, "--method", "maml", "--scale", "tiny", "--set", "iterations=40",
             "--set", "log_every=8", "--no-report"]


def launch_stop_driver(driver: Path, out: Path, who: str | None) -> subprocess.CompletedProcess:
    """The driver under torchrun; `who` (if any) sends the SIGTERM at iteration 25."""
    env = {k: v for k, v in os.environ.items() if k != "STOP_WHO"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(driver), *STOP_ARGS, "--out", str(out)], capture_output=True, text=True,
        timeout=300, env={**env, **({"STOP_WHO": who} if who else {})})


@pytest.fixture(scope="module")
def stop_driver(tmp_path_factory) -> Path:
    driver = tmp_path_factory.mktemp("driver") / "driver.py"
    driver.write_text(STOP_DRIVER)
    return driver


@pytest.fixture(scope="module")
def uninterrupted_run(stop_driver, tmp_path_factory) -> Path:
    """One uninterrupted 2-process run, the reference for both ways of stopping."""
    out = tmp_path_factory.mktemp("clean")
    result = launch_stop_driver(stop_driver, out, None)
    assert result.returncode == 0, result.stderr[-3000:]
    return _run_dir(out, "maml")


@pytest.mark.parametrize("who", ["launcher", "rank 1"])
def test_sigterm_to_torchrun_stops_every_rank_after_one_iteration_and_resumes(
        stop_driver, uninterrupted_run, tmp_path, who):
    """torchrun forwards a SIGTERM to its workers (or one worker alone gets it): all ranks
    finish the same iteration, rank 0 checkpoints it, and the same command resumes to an
    uninterrupted 2-process run's numbers."""
    stopped = launch_stop_driver(stop_driver, tmp_path / "stopped", who)
    assert stopped.returncode != 0
    match = re.search(r"stopped after iteration (\d+), checkpoint written", stopped.stderr)
    assert match, stopped.stderr[-3000:]
    run_dir = _run_dir(tmp_path / "stopped", "maml")
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=False)
    assert state["iteration"] == int(match.group(1)) > 25  # not the periodic one at 20
    assert not (run_dir / RECORDS_FILE).exists()

    result = launch_stop_driver(stop_driver, tmp_path / "stopped", None)
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(_records(run_dir)[RECORD_COLUMNS],
                                  _records(uninterrupted_run)[RECORD_COLUMNS])
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / TRAIN_LOG_FILE),
                                  pd.read_csv(uninterrupted_run / TRAIN_LOG_FILE))
