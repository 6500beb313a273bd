"""Checks made before the first run of a command: what depends on the data (K + Q beyond the
images per class, more ProtoNets training ways than training classes) and the memory floor are
refused in one line before any run starts, with nothing written; the floor's parts are the
sizes of the tensors a run holds, and grow with the settings they name."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_validation import assert_refused, run_cli

from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.memory_floor import GIB, Part, check_fits, floor, supervised_parts
from maml_bench.runner import resolve_config
from maml_bench.tasks.fewshot import pools
from maml_bench.tasks.fewshot.data_root import DATA_ENV
from maml_bench.tasks.fewshot.synth import synth_miniimagenet
from maml_bench.tasks.sinusoid import Sinusoid

DEMO = ["run", "miniimagenet-5w1s-demo-v1", "--scale", "tiny", "--no-report"]
SINUSOID = ["run", "sinusoid-table2-v1", "--scale", "tiny", "--method", "maml", "--no-report"]
HYPOTHESIS = settings(max_examples=30, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A generated MiniImagenet-format set: 10 / 5 / 5 classes of 20 images."""
    root = tmp_path_factory.mktemp("data")
    (root / "miniimagenet-demo").mkdir()
    synth_miniimagenet(root / "miniimagenet-demo", form="pickle")
    return root


@pytest.fixture
def demo_data(demo_root, private_cache, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(demo_root))
    pools.load.cache_clear()  # the pools of the root set here

@pytest.mark.parametrize(("methods", "sets", "names"), [
    # the later method's refusal comes before the earlier one trains
    (["maml", "protonets"], ["protonet_train_ways=11"], ["protonet_train_ways=11", "10 classes"]),
    # refused once, not once per run
    (["maml", "fomaml"], ["eval_shots=25"], ["20 images per class", "eval_shots"]),
])
def test_data_refusals_come_before_any_run(demo_data, tmp_path, capsys, methods, sets, names):
    out = tmp_path / "out"
    argv = [*DEMO, "--out", str(out)]
    for method in methods:
        argv += ["--method", method]
    for text in sets:
        argv += ["--set", text]
    code, err = run_cli(capsys, argv)
    assert_refused(code, err, *names)
    assert "started" not in err
    assert not out.exists()


@pytest.mark.parametrize(("sets", "names"), [
    # the examples: a test set of 100,000 tasks of 10,000 points, all in one chunk
    (["test_tasks=100000", "eval_chunk=100000", "eval_shots=10000"], ["eval_chunk"]),
    # 16 layers of 4,096 units adapted for 200 test tasks at once
    ([f"hidden={','.join(['4096'] * 16)}", "meta_batch=100000", "eval_chunk=200"],
     ["eval_chunk", "hidden"]),
])
def test_settings_that_cannot_fit_are_refused_naming_them(tmp_path, capsys, sets, names):
    out = tmp_path / "out"
    argv = [*SINUSOID, "--out", str(out)]
    for text in sets:
        argv += ["--set", text]
    started = time.monotonic()
    code, err = run_cli(capsys, argv)
    assert_refused(code, err, "GiB of memory", *names)
    assert time.monotonic() - started < 60  # nothing allocated, nothing trained
    assert not out.exists()


def test_a_training_pass_too_large_is_refused_naming_task_chunk(demo_data, tmp_path, capsys,
                                                                monkeypatch):
    """2,000 tasks in one pass: their examples fit (1.6 GiB) but one forward pass's
    activations of them do not fit the 4 GiB given here; in passes of one task they would."""
    import maml_bench.preflight

    monkeypatch.setattr(maml_bench.preflight, "machine_bytes", lambda device="cpu": 4 * GIB)
    out = tmp_path / "out"
    argv = [*DEMO, "--method", "maml", "--out", str(out), "--set", "meta_batch=2000"]
    code, err = run_cli(capsys, [*argv, "--set", "task_chunk=whole"])
    assert_refused(code, err, "activations of a pass of training tasks", "task_chunk")
    assert not out.exists()
    config = resolve_config(EXPERIMENTS.get("miniimagenet-5w1s-demo-v1"), "tiny",
                            ["meta_batch=2000", "task_chunk=1"], "maml")
    need, _ = floor(supervised_parts(pools_benchmark(config), config, True, task_passes=True))
    assert need < 4 * GIB


def pools_benchmark(config):
    from maml_bench.tasks.fewshot.episodes import FewShot

    return FewShot(config)


def sinusoid_parts(**changes):
    config = resolve_config(EXPERIMENTS.get("sinusoid-table2-v1"), "tiny",
                            [f"{k}={v}" for k, v in changes.items()])
    return config, supervised_parts(Sinusoid(config), config, adapts_weights=True)


def test_the_floor_parts_are_the_sizes_a_run_holds():
    config, (train, test) = sinusoid_parts(test_tasks=50, eval_shots="5,10", test_query=7)
    bench = Sinusoid(config)
    model = bench.make_model()
    params = sum(p.nbytes for p in model.parameters())
    by_what = {p.what: p.bytes for p in train + test}
    assert by_what["the network"] == params
    assert by_what["the network, its gradient and Adam's two moments"] == 4 * params
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for batch in bench.eval_sets("test").values()
                for t in (batch.x_support, batch.y_support, batch.x_query, batch.y_query,
                          batch.task_info)}  # the sets of each K are views of one draw
    assert by_what["the test tasks, drawn once"] == sum(storages.values())
    batch = bench.train_batch(torch.Generator().manual_seed(0), config.meta_batch,
                              config.train_shots, config.train_query)
    meta_batch = sum(t.nbytes for t in (batch.x_support, batch.y_support, batch.x_query,
                                        batch.y_query, batch.task_info))
    assert by_what["one meta-batch of examples"] == meta_batch
    chunk = min(config.eval_chunk, config.test_tasks)
    assert by_what["the adapted weights and gradients of a chunk of test tasks"] == \
        2 * chunk * params


@HYPOTHESIS
@given(key=st.sampled_from(["meta_batch", "test_tasks", "eval_chunk", "train_shots"]),
       small=st.integers(2, 500), factor=st.integers(2, 50))
def test_the_floor_grows_with_the_settings_it_names(key, small, factor):
    def need(value):
        return floor(sinusoid_parts(**{key: value})[1])[0]

    assert need(small * factor) >= need(small)
    _, phases = sinusoid_parts(**{key: small * factor})
    assert any(key in part.settings for phase in phases for part in phase)


@HYPOTHESIS
@given(sizes=st.lists(st.integers(0, 4 * GIB), min_size=1, max_size=4),
       available=st.integers(1, 8 * GIB))
def test_a_floor_is_refused_exactly_when_it_exceeds_the_memory(sizes, available):
    parts = [Part(size, f"part {i}", (f"setting_{i}",)) for i, size in enumerate(sizes)]
    biggest = max(range(len(sizes)), key=lambda i: sizes[i])
    if sum(sizes) <= available:
        check_fits([parts], available, "run")
    else:
        with pytest.raises(UserError, match=f"lower setting_{biggest}$"):
            check_fits([parts], available, "run")


def test_a_second_ctrl_c_while_stopping_leaves_without_a_traceback(tmp_path):
    """Ctrl-C pressed again and again while the run stops and Python shuts down."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maml_bench.cli", "run", "sinusoid-table2-v1", "--scale", "quick",
         "--method", "maml", "--no-report", "--out", str(out)],
        stderr=subprocess.PIPE, text=True, env={**__import__("os").environ, "CI": ""})
    seen = ""
    while "started" not in seen:
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(1.0)
    for _ in range(60):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
    err = seen + proc.stderr.read()
    proc.wait(timeout=60)
    assert "Traceback" not in err, err
    assert "interrupted; run the same command again to resume" in err
    assert proc.returncode in (130, -signal.SIGINT)  # the shell shows both as 130


def test_a_missing_extra_is_refused_before_any_run_with_this_venvs_pip(tmp_path, capsys,
                                                                     monkeypatch):
    """Without the rl extra, every run of the command is refused at once, in one line giving
    the install command of the Python that runs the suite (not a bare pip)."""
    monkeypatch.setitem(sys.modules, "gymnasium", None)  # import gymnasium -> ImportError
    code, err = run_cli(capsys, ["run", "navigation2d-v1", "--scale", "tiny", "--out",
                                 str(tmp_path / "out")])
    assert_refused(code, err, f"{sys.executable} -m pip install -e", ".[rl]")
    assert "started" not in err and not (tmp_path / "out").exists()
