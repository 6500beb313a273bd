"""`maml-bench run --device`: its domain and refusals (before any work), CPU records unchanged,
the device outside the config hash but in run.json, and the device plumbing (`OnDevice`,
checkpoints from CPU tensors) exercised on the CPU. GPU-only checks: tests/test_cuda_runs.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from maml_bench import devices
from maml_bench.algorithms import ALGORITHMS
from maml_bench.cli import main
from maml_bench.config import config_hash
from maml_bench.core.functional import SupervisedBatch
from maml_bench.engines.options import EngineOptions
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.results import RECORD_COLUMNS, RECORDS_FILE, RUN_INFO_FILE, read_records
from maml_bench.runner import is_done, plan_runs
from maml_bench.tasks import BENCHMARKS
from maml_bench.tasks.fewshot.data_root import data_root

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
TINY = ["--scale", "tiny", "--no-report"]


def refused(capsys, argv: list[str], *expected: str) -> None:
    """Exit code 2 with one stderr line holding every `expected` text."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("text", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:99"])
def test_device_domain_holds_the_documented_choices(text):
    from maml_bench.cli.run import DEVICE

    assert DEVICE.contains(text)


@pytest.mark.parametrize("text", ["gpu", "CUDA", "cuda:", "cuda:100", "mps", "cpu:0", ""])
def test_device_outside_its_domain_is_one_line(capsys, tmp_path, text):
    refused(capsys, ["run", *TINY, "--device", text, "--out", str(tmp_path / "o")],
            "--device", "auto, cpu, cuda or cuda:N")
    assert not (tmp_path / "o").exists()


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_one_line_naming_the_fix(capsys, tmp_path, device):
    refused(capsys, ["run", *TINY, "--device", device, "--out", str(tmp_path / "o")],
            f"--device {device}", "sees no CUDA device", "use --device cpu")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("device", "engine", "gpus", "launched", "expected"), [
    (None, "local", 0.0, False, "cpu"),  # the default
    ("auto", "local", 0.0, False, "auto"),  # made concrete where the runs train
    ("cuda:1", "local", 0.0, False, "cuda:1"),
    (None, "ray", 1.0, False, "cuda"),  # --gpus-per-run implies cuda
    (None, "slurm", 2.0, False, "cuda"),
    ("auto", "ray", 0.5, False, "auto"),
    ("auto", "slurm", 0.0, False, "cpu"),  # no GPU reserved for the run
    ("cuda", "local", 0.0, True, "cuda"),  # torchrun: cuda:LOCAL_RANK in each process
])
def test_command_device(device, engine, gpus, launched, expected):
    options = EngineOptions(engine=engine, gpus_per_run=gpus)
    assert devices.command_device(device, options, launched) == expected


@pytest.mark.parametrize(("device", "engine", "gpus", "launched", "expected"), [
    ("cpu", "ray", 1.0, False, "--device cpu with --gpus-per-run 1: the runs would leave"),
    ("cuda:1", "slurm", 1.0, False, "the engine gives each run its own GPU"),
    ("cuda", "ray", 0.0, False, "add --gpus-per-run 1"),
    ("cuda", "submitit-local", 0.0, False, "add --gpus-per-run 1"),
    ("cuda:1", "local", 0.0, True, "each process takes cuda:LOCAL_RANK"),
])
def test_contradictory_device_options_are_refused(device, engine, gpus, launched, expected):
    with pytest.raises(UserError, match=expected):
        devices.command_device(device, EngineOptions(engine=engine, gpus_per_run=gpus),
                               launched)


def test_cpu_with_gpus_per_run_is_refused_on_the_command_line(capsys, tmp_path):
    pytest.importorskip("ray")
    refused(capsys, ["run", *TINY, "--engine", "ray", "--gpus-per-run", "1", "--device", "cpu",
                     "--out", str(tmp_path / "o")], "--device cpu with --gpus-per-run 1")
    assert not (tmp_path / "o").exists()


def test_rl_runs_stay_on_the_cpu(tmp_path):
    runs = plan_runs("navigation2d-v1", "tiny", out=tmp_path)
    assert BENCHMARKS.get("meta-rl").cpu_only
    assert {r.device for r in devices.assign(runs, "auto")} == {"cpu"}
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="trains on the CPU only .*sampler steps gymnasium"):
            devices.assign(runs, device)
    with pytest.raises(UserError, match="leave out --gpus-per-run"):
        devices.assign(runs, "cuda", gpus_per_run=1.0)
    sinusoid = plan_runs("sinusoid-table2-v1", "tiny", out=tmp_path)
    assert {r.device for r in devices.assign(sinusoid, "auto")} == {"auto"}


def test_rl_with_cuda_is_one_line(capsys, tmp_path):
    refused(capsys, ["run", "navigation2d-v1", *TINY, "--device", "cuda",
                     "--out", str(tmp_path / "o")], "maml-trpo on navigation2d-v1 trains on "
            "the CPU only", "use --device cpu, or auto")


@no_cuda
def test_auto_without_cuda_is_the_cpu():
    assert devices.here("auto") == "cpu"
    assert devices.torch_device("auto") == torch.device("cpu")
    assert devices.describe(torch.device("cpu")) == "cpu"


def _records(out, method="maml"):
    run_dir = out / "sinusoid-table2-v1" / "raw" / method / "seed-0"
    frame = read_records(run_dir / RECORDS_FILE)
    return frame, json.loads((run_dir / RUN_INFO_FILE).read_text())


def test_explicit_cpu_and_auto_give_the_default_records(tmp_path):
    args = ["run", *TINY, "--method", "maml"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    default, info = _records(tmp_path / "default")
    for device in ("cpu", "auto"):
        if device == "auto" and torch.cuda.is_available():
            continue  # auto is cuda there: tests/test_cuda_runs.py
        assert main([*args, "--device", device, "--out", str(tmp_path / device)]) == 0
        frame, other = _records(tmp_path / device)
        assert frame[RECORD_COLUMNS].equals(default[RECORD_COLUMNS])  # bitwise
        assert other["config_hash"] == info["config_hash"]
        assert other["device"] == "cpu" and (frame["device"] == "cpu").all()
    assert info["device"] == "cpu" and (default["device"] == "cpu").all()


def test_device_is_not_part_of_the_config_hash(tiny_runs):
    (run,) = tiny_runs(["maml"])
    from maml_bench.runner import execute

    info = json.loads((execute(run) / RUN_INFO_FILE).read_text())
    assert info["device"] == "cpu" and "device" not in info["config"]
    for device in ("auto", "cuda", "cuda:3"):
        other = replace(run, device=device)
        assert config_hash(other.config) == config_hash(run.config)
        assert is_done(other)  # done on one device: done for every device


def test_batches_and_checkpoint_state_move_to_and_from_a_device():
    batch = SupervisedBatch(torch.ones(2, 3, 1), torch.zeros(2, 3, dtype=torch.long),
                            torch.ones(2, 4, 1), torch.zeros(2, 4, dtype=torch.long), None)
    moved = batch.to_device("cpu")
    assert moved.x_support is batch.x_support  # already there: no copy
    assert moved.task_info is None and moved.y_query.dtype == torch.long
    model = torch.nn.BatchNorm1d(3)
    state = {"model": model.state_dict(), "steps": [torch.ones(2)], "n": 3}
    cpu = devices.to_cpu(state)
    assert cpu["model"]._metadata == state["model"]._metadata  # versions load_state_dict reads
    assert cpu["n"] == 3 and torch.equal(cpu["steps"][0], torch.ones(2))
    torch.nn.BatchNorm1d(3).load_state_dict(cpu["model"])


def _same_training(experiment: str, method: str, tmp_path, steps: int = 2) -> None:
    """The algorithm over OnDevice(benchmark, cpu) trains and evaluates exactly as over the
    benchmark itself: every attribute it reads passes through the view."""
    (run,) = plan_runs(experiment, "tiny", [], [method], 1, tmp_path)
    benchmark = BENCHMARKS.get(EXPERIMENTS.get(experiment).benchmark)(run.config)
    results = []
    for bench in (benchmark, devices.OnDevice(benchmark, torch.device("cpu"))):
        algorithm = ALGORITHMS.get(method)(bench, run.config, run.seed)
        assert algorithm.device == torch.device("cpu")
        losses = [algorithm.train_step(i) for i in range(min(steps, algorithm.iterations))]
        with torch.no_grad():
            curves = algorithm.evaluate()
        results.append((torch.stack(losses), curves))
    (a, ca), (b, cb) = results
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ca.keys() == cb.keys()
    for k in ca:
        torch.testing.assert_close(ca[k], cb[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", [m.algorithm for m in
                                    EXPERIMENTS.get("sinusoid-table2-v1").methods])
def test_every_sinusoid_method_through_the_device_view(method, tmp_path):
    _same_training("sinusoid-table2-v1", method, tmp_path)


@pytest.mark.skipif(not (data_root() / "omniglot").is_dir(), reason="no Omniglot on disk")
@pytest.mark.parametrize("method", ["maml", "anil", "context-vector", "metasgd", "protonets",
                                    "matchingnets", "metalstm", "finetune",
                                    "nearest-neighbour"])
def test_fewshot_methods_through_the_device_view(method, tmp_path):
    _same_training("omniglot-5w1s-v1", method, tmp_path, steps=1)
