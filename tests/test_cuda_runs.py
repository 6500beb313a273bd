"""Runs on CUDA (`--device cuda`), skipped without a GPU: tiny sinusoid and Omniglot runs match
the same runs on the CPU within float32 rounding (sampling is on the CPU, TF32 is off), every
method trains on the GPU, a checkpoint written there resumes on the CPU, and torchrun over two
GPUs (nccl) matches one CPU process. The CPU side of the device plumbing: tests/test_devices.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maml_bench.cli import main
from maml_bench.experiments import EXPERIMENTS
from maml_bench.results import KEY_COLUMNS, RECORDS_FILE, RUN_INFO_FILE, read_records
from maml_bench.runner import CHECKPOINT_FILE, TRAIN_LOG_FILE
from maml_bench.tasks.fewshot.data_root import data_root

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
needs_omniglot = pytest.mark.skipif(not (data_root() / "omniglot").is_dir(),
                                    reason="no Omniglot on disk")
SINUSOID = "sinusoid-table2-v1"
OMNIGLOT = "omniglot-5w1s-v1"


def run(out: Path, experiment: str, device: str, method: str = "maml", *extra: str) -> Path:
    assert main(["run", experiment, "--scale", "tiny", "--no-report", "--method", method,
                 "--device", device, "--out", str(out), *extra]) == 0
    return out / experiment / "raw" / method / "seed-0"


def records(run_dir: Path) -> pd.DataFrame:
    frame = read_records(run_dir / RECORDS_FILE)
    return frame.sort_values(KEY_COLUMNS).reset_index(drop=True)


def info(run_dir: Path) -> dict:
    return json.loads((run_dir / RUN_INFO_FILE).read_text())


def assert_same_run(cpu: Path, gpu: Path, rtol: float, atol: float) -> None:
    a, b = records(cpu), records(gpu)
    pd.testing.assert_frame_equal(a[KEY_COLUMNS], b[KEY_COLUMNS])
    np.testing.assert_allclose(b["value"], a["value"], rtol=rtol, atol=atol)
    logs = [pd.read_csv(d / TRAIN_LOG_FILE) for d in (cpu, gpu)]
    np.testing.assert_allclose(logs[1]["train_loss"], logs[0]["train_loss"], rtol=1e-4,
                               atol=1e-5)
    assert info(cpu)["config_hash"] == info(gpu)["config_hash"]
    assert info(gpu)["device"].startswith("cuda:0 (") and (b["device"] == info(gpu)["device"]).all()
    assert info(cpu)["device"] == "cpu"


def test_sinusoid_on_cuda_matches_cpu(tmp_path):
    assert_same_run(run(tmp_path / "cpu", SINUSOID, "cpu"), run(tmp_path / "gpu", SINUSOID,
                                                                  "cuda"), 1e-3, 1e-4)


@needs_omniglot
def test_omniglot_on_cuda_matches_cpu(tmp_path):
    cpu, gpu = run(tmp_path / "cpu", OMNIGLOT, "cpu"), run(tmp_path / "gpu", OMNIGLOT, "cuda")
    # accuracies count whole queries: float32 rounding may flip one near a tie, no more
    a, b = records(cpu), records(gpu)
    assert (a["value"] - b["value"]).abs().le(1e-3).mean() >= 0.95
    assert_same_run(cpu, gpu, 0.0, 100.0)


@pytest.mark.parametrize("method", [m.algorithm for m in EXPERIMENTS.get(SINUSOID).methods])
def test_every_sinusoid_method_trains_on_cuda(tmp_path, method):
    gpu = run(tmp_path, SINUSOID, "cuda", method)
    frame = records(gpu)
    assert np.isfinite(frame["value"]).all() and info(gpu)["device"].startswith("cuda:0")


@needs_omniglot
@pytest.mark.parametrize("method", ["fomaml", "anil", "metasgd", "context-vector", "protonets",
                                    "matchingnets", "metalstm", "finetune",
                                    "nearest-neighbour"])
def test_fewshot_methods_train_on_cuda(tmp_path, method):
    gpu = run(tmp_path, OMNIGLOT, "cuda", method)
    assert records(gpu)["value"].notna().all() and info(gpu)["device"].startswith("cuda:0")


def test_auto_takes_the_gpu(tmp_path):
    assert info(run(tmp_path, SINUSOID, "auto"))["device"].startswith("cuda:0")


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    gpu = run(tmp_path, SINUSOID, "cuda")
    before = records(gpu)
    state = torch.load(gpu / CHECKPOINT_FILE, weights_only=False)  # no map_location needed
    tensors = [t for t in _leaves(state) if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    (gpu / RUN_INFO_FILE).unlink()
    (gpu / RECORDS_FILE).unlink()
    resumed = run(tmp_path, SINUSOID, "cpu")  # the same run: evaluated on the CPU
    assert info(resumed)["device"] == "cpu"
    np.testing.assert_allclose(records(resumed)["value"], before["value"], rtol=1e-4,
                               atol=1e-5)


def _leaves(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _leaves(value)
    else:
        yield obj


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpu_torchrun_matches_one_cpu_process(tmp_path):
    settings = ["--scale", "tiny", "--no-report", "--method", "maml", "--set", "meta_batch=4"]
    cpu = run(tmp_path / "cpu", SINUSOID, "cpu", "maml", "--set", "meta_batch=4")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "maml_bench.cli", "run", SINUSOID, *settings, "--device", "cuda",
         "--out", str(tmp_path / "dp")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    dp = tmp_path / "dp" / SINUSOID / "raw" / "maml" / "seed-0"
    assert info(dp)["world_size"] == 2 and info(dp)["device"].startswith("cuda:0")
    np.testing.assert_allclose(records(dp)["value"], records(cpu)["value"], rtol=1e-3,
                               atol=1e-4)


@pytest.mark.parametrize(("experiment", "chunk"), [(SINUSOID, "0"), (OMNIGLOT, "0"),
                                                   (OMNIGLOT, "2")])
def test_cuda_graph_run_matches_eager(tmp_path, experiment, chunk):
    """--set cuda_graph=on: the replayed meta-gradient trains the same network as eager on
    the same GPU (whole batch and task chunks), and run.json says the graph ran."""
    if experiment == OMNIGLOT and not (data_root() / "omniglot").is_dir():
        pytest.skip("no Omniglot on disk")
    common = ("--set", f"task_chunk={chunk}", "--set", "iterations=20")
    eager = run(tmp_path / "eager", experiment, "cuda", "maml", *common)
    graph = run(tmp_path / "graph", experiment, "cuda", "maml", *common,
                "--set", "cuda_graph=on")
    assert info(graph)["info"]["cuda_graph"] == "on"
    a, b = records(eager), records(graph)
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-3, atol=1e-4)
