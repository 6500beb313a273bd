"""`maml-bench profile`: a tiny run writes the report files with their columns; FLOP counts,
ratios, both paths, the budget and the CPU memory measure; bad options are one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from maml_bench import cli
from maml_bench.cli.profile import (
    PROFILE_BUDGET,
    PROFILE_CONFIG,
    PROFILE_DEVICE,
    PROFILE_META_BATCH,
    PROFILE_REPEATS,
    PROFILE_STEPS,
    PROFILE_THREADS,
)
from maml_bench.core.functional import meta_loss
from maml_bench.profile.configs import CONFIGS
from maml_bench.profile.measure import (
    Clock,
    CpuPeakRss,
    Measurement,
    Predictor,
    count_flops,
    measure,
)
from maml_bench.profile.sweep import ProfileOptions, _measure_one

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["profile", "--config", "sinusoid", "--config", "omniglot-5w1s", "--steps", "1,2",
        "--meta-batch", "2", "--repeats", "1", "--quick", "--device", "cpu"]
MEASURED = [f"{order}_{path}_{what}" for order in ("so", "fo") for path in ("ours", "loop")
            for what in ("ms", "median_ms", "peak_mib", "repeats", "skipped")]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """One tiny profile run (two configurations, meta-batch 2, steps 1 and 2), shared."""
    out = tmp_path_factory.mktemp("profile")
    started = time.perf_counter()
    assert cli.main([*TINY, "--out", str(out)]) == 0
    return out, pd.read_csv(out / "profile-cpu.csv", keep_default_na=False,
                            na_values=[""]), time.perf_counter() - started


def test_tiny_run_writes_every_file(tiny_profile):
    out, frame, _ = tiny_profile
    names = sorted(p.name for p in out.iterdir())
    assert names == ["parts", "profile-cpu-memory.png", "profile-cpu-ops.md",
                     "profile-cpu-time.png", "profile-cpu.csv", "profile-cpu.md"]
    assert sorted(p.name for p in (out / "parts" / "cpu").iterdir()) == [
        "omniglot-5w1s.json", "sinusoid.json"]  # one saved part per configuration
    for png in ("profile-cpu-time.png", "profile-cpu-memory.png"):
        assert (out / png).read_bytes()[:8] == PNG
    for column in ("config", "meta_batch", "inner_steps", "device", "threads", "measured_at",
                   "load_1min", "flops_so",
                   "flops_fo", "flops_forward", "so_ours_gflops_s", "so_ours_peak_frac",
                   "so_over_fo_time", "so_over_fo_memory", "so_loop_over_ours",
                   "fo_loop_over_ours", *MEASURED):
        assert column in frame.columns, column
    assert set(frame["config"]) == {"sinusoid", "omniglot-5w1s"}
    assert sorted(frame["inner_steps"]) == [1, 1, 2, 2] and set(frame["meta_batch"]) == {2}
    assert (frame["threads"] == 1).all()  # per core, the default on the CPU
    report = (out / "profile-cpu.md").read_text()
    for text in ("## sinusoid", "## omniglot-5w1s", "Memory: CPU: growth of the process's "
                 "resident set", "Measured peak: matmul", "loop/ours SO",
                 "`maml-bench profile --config sinusoid --config omniglot-5w1s --device cpu",
                 "1-minute load average"):
        assert text in report, text
    ops = (out / "profile-cpu-ops.md").read_text()
    assert ops.count("### Outer backward (double backward)") == 2
    assert "convolution" in ops.split("## omniglot-5w1s")[1]


def test_both_paths_and_orders_are_measured(tiny_profile):
    _, frame, _ = tiny_profile
    for order in ("so", "fo"):
        for path in ("ours", "loop"):
            assert (frame[f"{order}_{path}_ms"] > 0).all(), (order, path)
            assert (frame[f"{order}_{path}_median_ms"] >= frame[f"{order}_{path}_ms"]).all()
            assert (frame[f"{order}_{path}_repeats"] == 1).all()
            assert frame[f"{order}_{path}_skipped"].isna().all()
            assert (frame[f"{order}_{path}_peak_mib"] >= 0).all()
        np.testing.assert_allclose(frame[f"{order}_loop_over_ours"],
                                   frame[f"{order}_loop_ms"] / frame[f"{order}_ours_ms"])


def test_ratios_are_ratios_of_the_csv_columns(tiny_profile):
    _, frame, _ = tiny_profile
    np.testing.assert_allclose(frame["so_over_fo_time"],
                               frame["so_ours_ms"] / frame["fo_ours_ms"])
    np.testing.assert_allclose(frame["so_over_fo_memory"],
                               frame["so_ours_peak_mib"] / frame["fo_ours_peak_mib"])
    np.testing.assert_allclose(frame["so_ours_gflops_s"],
                               frame["flops_so"] / (frame["so_ours_ms"] / 1e3) / 1e9)


def test_flop_counts_second_order_above_first_above_forward(tiny_profile):
    _, frame, _ = tiny_profile
    assert (frame["flops_so"] > frame["flops_fo"]).all()
    assert (frame["flops_fo"] > frame["flops_forward"]).all()
    assert (frame["flops_forward"] > 0).all()
    # another inner step adds FLOPs to both orders, not to the forward
    for _, part in frame.groupby("config"):
        one, two = part.sort_values("inner_steps").to_dict("records")
        assert two["flops_so"] > one["flops_so"] and two["flops_fo"] > one["flops_fo"]
        assert two["flops_forward"] == one["flops_forward"]


def test_flops_per_task_times_tasks_match_the_ours_count():
    """Counted per task (the counter ignores groups in a grouped conv's weight gradient): for
    the MLP, whose batched path has no groups, it equals the count of the batched step."""
    cfg = CONFIGS["sinusoid"]
    model = cfg.model().to("meta")
    theta = dict(model.named_parameters())
    batch = cfg.batch(3, "meta")
    with FlopCounterMode(display=False) as counter:
        loss = meta_loss(model.batched_forward, theta, batch, cfg.loss, 2, cfg.inner_lr).mean()
        torch.autograd.grad(loss, list(theta.values()))
    assert count_flops(cfg, 3, 2)["so"] == counter.get_total_flops()
    conv = CONFIGS["omniglot-5w1s"]
    assert count_flops(conv, 4, 1)["so"] == 4 * count_flops(conv, 1, 1)["so"]


def test_cpu_peak_rss_sees_one_steps_allocation():
    probe = CpuPeakRss()
    if probe.reason is not None:
        pytest.skip(probe.reason)

    def allocate() -> None:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        assert block.sum() > 0

    allocate()  # the second call must count it again: freed memory is handed back first
    peak = probe.measure(allocate)
    assert 60 <= peak <= 90, peak
    assert probe.measure(lambda: None) < 8


def test_over_budget_is_skipped_with_its_reason():
    clock, probe = Clock(torch.device("cpu")), CpuPeakRss()
    slow = measure(lambda: time.sleep(0.05), clock, probe, repeats=3, warmup=1, budget_s=0.02)
    assert slow.skipped.startswith("one step took") and "--budget" in slow.skipped
    assert np.isnan(slow.min_ms) and slow.repeats == 0
    fits = measure(lambda: None, clock, probe, repeats=3, warmup=1, budget_s=5)
    assert not fits.skipped and fits.repeats == 3
    # predicted from a smaller measurement: skipped without running the step
    predictor = Predictor()
    cfg = CONFIGS["sinusoid"]
    predictor.record((cfg.name, "so", "ours"), 2, 1, 1.0, 10.0)

    def never() -> None:
        raise AssertionError("a step predicted over the budget must not run")

    m = _measure_one(never, cfg, 8, 4, "so", "ours", clock, probe, predictor, 3, 1, 5.0)
    assert isinstance(m, Measurement) and m.skipped.startswith("predicted 10 s per step")


def test_default_sweeps():
    cfg = CONFIGS["sinusoid"]
    full = ProfileOptions(configs=("sinusoid",), device="cpu", out=None)
    quick = ProfileOptions(configs=("sinusoid",), device="cpu", out=None, quick=True)
    assert full.meta_batches_of(cfg) == (12, 25, 50) and quick.meta_batches_of(cfg) == (25,)
    assert full.resolved_steps() == (1, 2, 5, 10) and quick.resolved_steps() == (1, 2)
    assert CONFIGS["miniimagenet-5w5s"].default_meta_batches() == (1, 2, 4)


PROFILE_OPTIONS = [("--config", PROFILE_CONFIG), ("--steps", PROFILE_STEPS),
                   ("--meta-batch", PROFILE_META_BATCH), ("--device", PROFILE_DEVICE),
                   ("--repeats", PROFILE_REPEATS), ("--budget", PROFILE_BUDGET),
                   ("--threads", PROFILE_THREADS)]


@pytest.mark.parametrize(("option", "domain"), PROFILE_OPTIONS,
                         ids=[o for o, _ in PROFILE_OPTIONS])
def test_every_option_refuses_values_outside_its_domain(option, domain, capsys, tmp_path):
    out = tmp_path / "out"
    for text in [*domain.outside(), "x"]:
        with pytest.raises(SystemExit) as stop:
            cli.main(["profile", "--out", str(out), f"{option}={text}"])
        err = capsys.readouterr().err
        assert stop.value.code == 2, (option, text)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and option in lines[0] and domain.describe() in lines[0], err
    assert not out.exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maml_bench.cli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "1,0"], "argument --steps: '1,0' is not 1 to 16 comma-separated values"),
    (["--config", "omniglot"], "argument --config: 'omniglot' is not one of sinusoid |"),
    (["--out", "{file}"], "is a file; give a directory"),
])
def test_bad_options_are_one_line_errors(args, message, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_cli("profile", "--device", "cpu",
                     *[str(a_file) if a == "{file}" else a for a in args])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_cuda_without_a_device_is_refused(capsys, tmp_path):
    assert cli.main(["profile", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0] and "use --device cpu" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_stopped_profile_resumes_from_its_saved_parts(tiny_profile, tmp_path, monkeypatch,
                                                        caplog):
    """Configurations saved with the same settings are read back, not measured again; one
    measured with other settings, or whose file is damaged, is measured again."""
    import shutil

    from maml_bench.profile import sweep

    out, frame, _ = tiny_profile
    copy = tmp_path / "profile"
    shutil.copytree(out, copy)
    measured: list[str] = []
    real_measure = sweep.measure

    def counting(*args, **kwargs):
        measured.append("x")
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure", counting)
    assert cli.main([*TINY, "--out", str(copy)]) == 0
    assert measured == []  # everything read back
    again = pd.read_csv(copy / "profile-cpu.csv", keep_default_na=False, na_values=[""])
    # The same rows; only "% of peak" may move (this session's peak is measured again and
    # the best one seen is used).
    same = [c for c in frame.columns if not c.endswith("_peak_frac")]
    pd.testing.assert_frame_equal(again[same], frame[same])

    sinusoid = copy / "parts" / "cpu" / "sinusoid.json"
    sinusoid.write_text(sinusoid.read_text()[:100])  # a torn or damaged file
    only = [*TINY[:3], *TINY[5:]]  # sinusoid alone
    with caplog.at_level("WARNING"):
        assert cli.main([*only, "--out", str(copy)]) == 0
    assert len(measured) == 8 and "unreadable" in caplog.text  # 2 steps x 2 orders x 2 paths
    measured.clear()
    assert cli.main([*only, "--out", str(copy), "--repeats", "2"]) == 0
    assert len(measured) == 8  # other settings: measured again
    assert set(pd.read_csv(copy / "profile-cpu.csv")["config"]) == {"sinusoid"}
    from maml_bench.core import chunking

    measured.clear()
    monkeypatch.setattr(chunking, "CPU_MAX_TASKS", 4)  # another rule for ours' passes
    assert cli.main([*only, "--out", str(copy), "--repeats", "2"]) == 0
    assert len(measured) == 8  # timed under another rule: measured again


def test_sigterm_or_a_background_sigint_stops_the_profile_with_its_report(tmp_path,
                                                                          monkeypatch):
    """A profile started with `nohup ... &` (SIGINT ignored) and stopped with SIGTERM still
    writes the report of what it measured; the process's handlers are restored afterwards."""
    import os
    import signal

    from maml_bench.profile import sweep

    real_measure, calls = sweep.measure, []

    def stopped_on_second(*args, **kwargs):
        calls.append("x")
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(sweep, "measure", stopped_on_second)
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        only = [*TINY[:3], *TINY[5:]]  # sinusoid alone
        assert cli.main([*only, "--out", str(tmp_path)]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is before_term
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert len(calls) == 2
    assert "Interrupted" in (tmp_path / "profile-cpu.md").read_text()


def test_progress_lines_within_a_configuration_when_output_is_a_file(tmp_path, monkeypatch,
                                                                      capsys):
    """A MiniImagenet configuration takes about an hour on a CPU: a log shows measurements
    going by (every MAML_BENCH_PROGRESS_SECONDS), not only a line per configuration."""
    monkeypatch.setenv("MAML_BENCH_PROGRESS_SECONDS", "0")
    only = [*TINY[:3], *TINY[5:]]  # sinusoid alone: 2 steps x 2 orders x 2 paths
    assert cli.main([*only, "--out", str(tmp_path / "p")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "measurements (" in line]
    assert [line.split("profile: ")[1].split(" ")[0] for line in lines] == [
        f"{i}/8" for i in range(1, 9)]
    assert "sinusoid T=2 steps=2 so loop" in lines[-1]


def test_summary_at_the_paper_setting_quotes_the_csv(tmp_path):
    """The report opens with each configuration's paper setting, second against first order,
    next to the paper's 33%: the numbers are those of the CSV's paper row."""
    out = tmp_path / "p"
    assert cli.main(["profile", "--config", "sinusoid", "--steps", "1,2", "--meta-batch", "25",
                     "--repeats", "1", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    frame = pd.read_csv(out / "profile-cpu.csv")
    paper = frame[frame["is_paper"]]
    assert list(zip(paper["meta_batch"], paper["inner_steps"], strict=True)) == [(25, 1)]
    r = paper.iloc[0]
    text = (out / "profile-cpu.md").read_text()
    summary = text.split("## Second against first order at the paper's settings")[1]
    summary = summary.split("\n## ")[0]
    assert "33%" in summary
    row = [line for line in summary.splitlines() if line.startswith("| sinusoid |")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[1:3] == ["25", "1"]
    assert cells[5] == f"{r['so_over_fo_time']:.2f}x"
    assert cells[6] == f"{r['so_over_fo_memory']:.2f}x"
    assert cells[7] == f"{r['flops_so'] / r['flops_fo']:.2f}x"
    assert cells[8] == f"{r['so_loop_over_ours']:.2f}x"
    assert cells[10] == "whole"  # 25 sinusoid tasks fit one pass (task_chunk=auto)


def test_summary_without_a_paper_row_says_so(tiny_profile):
    out, frame, _ = tiny_profile
    assert not frame["is_paper"].any()
    assert "No configuration was measured at its paper setting" in (
        out / "profile-cpu.md").read_text()
