"""Meta-gradient backends (`--set path=...`): each equals the reference, is gated per model by
float64 reference and finite-difference checks, and is refused with its reason otherwise."""

from __future__ import annotations

import json

import pytest
import torch
from test_gradients import assert_close, conv_setup, grads, mlp_bn_setup, regression_setup
from torch import nn

from maml_bench.cli import main
from maml_bench.core import backends
from maml_bench.core.backends import MetaProblem, gate, query_losses, select
from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.tasks.fewshot.data_root import data_root

OMNIGLOT_ROOT = data_root() / "omniglot"
needs_omniglot = pytest.mark.skipif(not OMNIGLOT_ROOT.is_dir(),
                                    reason=f"real Omniglot not found at {OMNIGLOT_ROOT}")
TINY = ["run", "sinusoid-table2-v1", "--scale", "tiny", "--no-report"]


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    """Gate verdicts are cached per process: each test starts without any."""
    monkeypatch.setattr(backends, "_CHECKED", {})


def small_conv():
    return conv_setup(tasks=2, ways=2, channels=3)


@pytest.mark.parametrize("setup", [regression_setup, mlp_bn_setup, small_conv],
                         ids=["mlp", "mlp-bn", "conv4"])
@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
@pytest.mark.parametrize("backend", ["fused", "factored", "batched", "vmap", "higher"])
def test_every_backend_equals_the_reference(setup, first_order, backend):
    model, batch, loss_fn = setup()
    if backend == "fused" and not hasattr(model, "fused_forward"):
        pytest.skip("fused is Conv4's own path")
    if backend == "factored" and not hasattr(model, "linear_keys"):
        pytest.skip("factored is the MLP's own path")
    if backend == "vmap" and setup is mlp_bn_setup:
        pytest.skip("vmap refuses batch norm (tested below)")
    theta = dict(model.named_parameters())
    problem = MetaProblem(model, loss_fn, 2, [0.05, 0.02], first_order)
    ours = grads(query_losses(backend, problem, theta, batch).mean(), theta)
    ref = grads(query_losses("loop", problem, theta, batch).mean(), theta)
    assert_close(ours, ref)


@pytest.mark.parametrize(("setup", "fastest"), [(mlp_bn_setup, "factored"),
                                                 (small_conv, "fused")], ids=["mlp", "conv4"])
def test_auto_picks_the_models_own_fastest_forward(setup, fastest):
    model, batch, loss_fn = setup()
    problem = MetaProblem(model, loss_fn, 1, 0.1)
    assert select("auto", problem, lambda: batch) == (fastest, {})


def test_auto_keeps_batched_where_low_rank_corrections_are_not_small():
    """The sinusoid-sized MLP: 6 support examples against 12-unit layers (measured slower)."""
    model, batch, loss_fn = regression_setup()
    used, skipped = select("auto", MetaProblem(model, loss_fn, 1, 0.1), lambda: batch)
    assert used == "batched" and "not much smaller than per-task weight copies" in skipped[
        "factored"]


@pytest.mark.parametrize(("lrs", "adapted", "needs_forward", "reason"), [
    ({"net.0.weight": 0.1}, None, False, "per-parameter step sizes"),
    (torch.full((2,), 0.1), None, False, "one number per step"),
    (0.1, ("net.2.weight",), False, "adapts only part of theta"),
    (0.1, None, True, "inner loop runs through a batched forward"),  # Reptile
])
def test_factored_refuses_what_is_not_low_rank(lrs, adapted, needs_forward, reason):
    model, _, loss_fn = mlp_bn_setup()
    problem = MetaProblem(model, loss_fn, 1, lrs, adapted=adapted, needs_forward=needs_forward)
    assert reason in backends.unsupported("factored", problem)
    conv = small_conv()[0]
    assert "not a fully connected net" in backends.unsupported(
        "factored", MetaProblem(conv, loss_fn, 1, 0.1))


def test_auto_keeps_batched_for_first_order_conv4():
    """Fused saves second-derivative work only; first order is faster batched (measured)."""
    model, batch, loss_fn = small_conv()
    used, skipped = select("auto", MetaProblem(model, loss_fn, 1, 0.1, True), lambda: batch)
    assert used == "batched" and "first order" in skipped["fused"]


def test_a_wrong_backend_is_refused_by_the_gate_and_skipped_by_auto(monkeypatch):
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    problem = MetaProblem(model, loss_fn, 1, 0.1)
    honest = backends.meta_loss

    def off_by_a_little(*args, **kwargs):  # a forward that drops a term of second order
        return honest(*args, **kwargs) * (1 + 1e-4)

    monkeypatch.setattr(backends, "meta_loss", off_by_a_little)
    reason = gate("batched", problem, lambda: batch)
    assert reason is not None and "differs from the reference loop" in reason
    with pytest.raises(UserError, match=r"path=batched refused for MLP: .*--set path=loop"):
        select("batched", problem, lambda: batch)
    used, skipped = select("auto", problem, lambda: batch)
    assert used == "loop" and set(skipped) == {"factored", "batched", "vmap"}


def test_finite_differences_catch_a_wrong_reference(monkeypatch):
    """Backend and reference wrong the same way: only finite differences can tell."""
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    problem = MetaProblem(model, loss_fn, 1, 0.1)
    monkeypatch.setattr(backends, "FD_RTOL", -1.0)  # nothing agrees: the FD step refuses
    assert "finite differences" in gate("vmap", problem, lambda: batch)


def test_vmap_refuses_batch_norm_with_running_statistics(monkeypatch, tmp_path):
    from maml_bench.tasks.sinusoid import Sinusoid

    def running_stats_model(self, extra_inputs=0):
        return nn.Sequential(nn.Linear(1 + extra_inputs, 8), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Linear(8, 1))

    monkeypatch.setattr(Sinusoid, "make_model", running_stats_model)
    out = tmp_path / "out"
    code = main([*TINY, "--method", "maml", "--out", str(out), "--set", "path=vmap"])
    assert code == 2
    assert not out.exists() or not any(p.is_file() and p.name != ".run.lock"
                                       for p in out.rglob("*"))


def error_lines(capsys):
    """The CLI's error: one line, no traceback (a 'started' progress line may precede it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("maml-bench: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_the_cli_refusal_is_one_line(monkeypatch, tmp_path, capsys):
    from maml_bench.tasks.sinusoid import Sinusoid

    monkeypatch.setattr(Sinusoid, "make_model", lambda self, extra_inputs=0: nn.Sequential(
        nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)))
    assert main([*TINY, "--method", "maml", "--out", str(tmp_path), "--set", "path=vmap"]) == 2
    line = error_lines(capsys)
    assert "path=vmap refused for Sequential" in line
    assert "running statistics" in line and "--set path=loop" in line
    assert not list(tmp_path.iterdir())  # no empty run folder left to look like a started run


def test_higher_refuses_learned_step_sizes(tmp_path, capsys):
    pytest.importorskip("higher")
    assert main([*TINY, "--method", "metasgd", "--out", str(tmp_path), "--set",
                 "path=higher"]) == 2
    line = error_lines(capsys)
    assert "path=higher refused for MLP" in line and "per-parameter" in line


def test_higher_refuses_partial_adaptation():
    pytest.importorskip("higher")
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    head = ("net.4.weight", "net.4.bias")
    with pytest.raises(UserError, match="path=higher refused for MLP: .* adapts only net.4"):
        select("higher", MetaProblem(model, loss_fn, 1, 0.1, adapted=head), lambda: batch)
    # the batched backends adapt the head alone, as the reference does
    used, skipped = select("auto", MetaProblem(model, loss_fn, 1, 0.1, adapted=head),
                           lambda: batch)
    assert used == "batched" and "adapts only part of theta" in skipped["factored"]


@needs_omniglot
def test_higher_refuses_anil_from_the_cli(tmp_path, capsys):
    pytest.importorskip("higher")
    assert main(["run", "omniglot-5w1s-v1", "--scale", "tiny", "--no-report", "--method",
                 "anil", "--out", str(tmp_path), "--set", "path=higher"]) == 2
    line = error_lines(capsys)
    assert "path=higher refused for Conv4" in line and "adapts only classifier" in line


def test_higher_honours_per_step_step_sizes():
    model, batch, loss_fn = regression_setup(tasks=2, k=4)
    theta = dict(model.named_parameters())
    problem = MetaProblem(model, loss_fn, 3, [0.05, 0.02])  # the last repeats for step 3
    pytest.importorskip("higher")
    assert gate("higher", problem, lambda: batch) is None
    ours = grads(query_losses("higher", problem, theta, batch).mean(), theta)
    assert_close(ours, grads(query_losses("loop", problem, theta, batch).mean(), theta))


def test_an_algorithm_records_its_backend():
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.runner import plan_runs
    from maml_bench.tasks.sinusoid import Sinusoid

    (run,) = plan_runs("sinusoid-table2-v1", "tiny", ["path=higher"], ["fomaml"], None, "unused")
    pytest.importorskip("higher")
    algorithm = ALGORITHMS.get("fomaml")(Sinusoid(run.config), run.config, run.seed)
    assert algorithm.info["path"] == "higher"
    assert torch.isfinite(algorithm.train_step(0))


@needs_omniglot
def test_auto_picks_fused_for_omniglot_conv4(tmp_path):
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.runner import plan_runs
    from maml_bench.tasks import BENCHMARKS

    (run,) = plan_runs("omniglot-5w1s-v1", "tiny", [], ["maml"], None, tmp_path)
    benchmark = BENCHMARKS.get(EXPERIMENTS.get(run.experiment).benchmark)(run.config)
    algorithm = ALGORITHMS.get("maml")(benchmark, run.config, run.seed)
    assert algorithm.info["path"] == "fused" and "path_skipped" not in algorithm.info


def test_auto_backend_is_the_backend_auto_takes_where_its_gates_pass():
    """The profiler's and benchmarks' "ours": fused for Conv4's second order on the CPU only
    (measured faster there), batched for its first order and on another device; factored for
    a wide MLP with few support examples, batched for a narrow one."""
    conv = conv_setup()[0]
    assert backends.auto_backend(conv, False, 1, 3) == "fused"
    assert backends.auto_backend(conv, True, 1, 3) == "batched"
    assert backends.auto_backend(conv.to("meta"), False, 1, 3) == "batched"
    assert backends.auto_backend(mlp_bn_setup()[0], False, 1, 3) == "factored"
    # measured on the CPU only: elsewhere auto keeps batched until it is
    assert backends.auto_backend(mlp_bn_setup()[0].to("meta"), False, 1, 3) == "batched"
    assert backends.auto_backend(mlp_bn_setup()[0], True, 5, 25) == "batched"
    assert backends.auto_backend(regression_setup()[0], False, 1, 10) == "batched"


def test_cuda_graph_needs_a_cuda_batch():
    """The graph path refuses a CPU batch before capturing anything (its float64 replay checks
    run on a GPU: benchmarks/test_meta_step_cuda.py)."""
    from maml_bench.core.graphed import GraphedMetaGradient
    from maml_bench.profile.configs import CONFIGS

    batch = CONFIGS["sinusoid"].batch(2)
    with pytest.raises(ValueError, match="needs the batch on a CUDA device"):
        GraphedMetaGradient(lambda b: [b.x_support.sum()], batch)


def test_cuda_graph_setting_is_refused_on_the_cpu(capsys):
    """--set cuda_graph=on without a GPU: one line naming the fix, exit 2, before any run;
    and the algorithm itself refuses it on a CPU model (a cluster node's auto device)."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.runner import resolve_config
    from maml_bench.tasks import BENCHMARKS

    assert main([*TINY, "--method", "maml", "--set", "cuda_graph=on"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cuda" in err[0], err
    experiment = EXPERIMENTS.get("sinusoid-table2-v1")
    config = resolve_config(experiment, "tiny", ["cuda_graph=on"], "maml")
    with pytest.raises(UserError, match="--device cuda"):
        ALGORITHMS.get("maml")(BENCHMARKS.get(experiment.benchmark)(config), config, 0)


@pytest.mark.parametrize("shots", [1, 5])
def test_factored_passes_the_gate_on_the_papers_no_conv_network(shots):
    """The run-time gate (float64 reference and finite differences) on the 784-256-128-64-64
    net with batch norm, 5-way, at the paper's inner step."""
    from test_gradients import cross_entropy

    from maml_bench.tasks.fewshot.episodes import FlatMLP

    torch.manual_seed(0)
    model = FlatMLP(28 * 28, 5)
    x = torch.rand(2, 10 * shots, 1, 28, 28)
    labels = torch.arange(5).repeat(2 * shots).expand(2, -1)
    n = 5 * shots
    batch = SupervisedBatch(x[:, :n], labels[:, :n], x[:, n:], labels[:, n:])
    problem = MetaProblem(model, cross_entropy, 1, 0.4)
    assert gate("factored", problem, lambda: batch) is None
    assert select("auto", problem, lambda: batch) == ("factored", {})


@needs_omniglot
def test_a_no_conv_omniglot_run_trains_on_factored(tmp_path):
    assert main(["run", "omniglot-5w1s-noconv-v1", "--scale", "tiny", "--method", "maml",
                 "--no-report", "--out", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "omniglot-5w1s-noconv-v1" / "raw" / "maml" / "seed-0" /
                       "run.json").read_text())["info"]
    assert info["path"] == "factored"
