"""task_chunk: tasks per meta-gradient pass, and the rule `auto` (-1) picks them by."""

from __future__ import annotations

import pytest
import torch

from maml_bench.core import chunking
from maml_bench.core.chunking import (
    AUTO,
    auto_task_chunk,
    summed_meta_gradient,
    task_activation_mib,
    tasks_per_pass,
)
from maml_bench.profile.configs import CONFIGS


def test_explicit_chunks_resolve_to_themselves_and_zero_to_the_whole_batch():
    cfg = CONFIGS["omniglot-5w1s"]
    model, batch = cfg.model(), cfg.batch(6)
    assert tasks_per_pass(0, model, batch) == 6
    assert tasks_per_pass(3, model, batch) == 3
    assert tasks_per_pass(100, model, batch) == 6


def test_one_tasks_activation_is_its_first_layers_output():
    cfg = CONFIGS["omniglot-5w1s"]  # 5 support + 5 query images, 64 x 14 x 14 after conv 1
    assert task_activation_mib(cfg.model(), cfg.batch(2)) == pytest.approx(
        10 * 64 * 14 * 14 * 4 / 2**20)


@pytest.mark.parametrize(("budget", "most", "expected"), [
    (100.0, 100, 32), (100.0, 8, 8), (10.0, 8, 8), (10.0, 4, 4), (4.0, 100, 8), (2.0, 100, 4),
    (1.5, 100, 2), (0.1, 100, 1)])
def test_auto_fills_the_cpu_budget_with_a_power_of_two_tasks(monkeypatch, budget, most,
                                                             expected):
    # one 5-way 1-shot task is 0.48 MiB: 100 MiB hold all 32 (under the cap), 10 MiB hold 20 ->
    # the cap, 4 MiB hold 8, 1.5 MiB hold 3 -> 2, 0.1 MiB none -> 1
    monkeypatch.setattr(chunking, "CPU_PASS_MIB", budget)
    monkeypatch.setattr(chunking, "CPU_MAX_TASKS", most)
    cfg = CONFIGS["omniglot-5w1s"]
    assert auto_task_chunk(cfg.model(), cfg.batch(32)) == expected
    assert tasks_per_pass(AUTO, cfg.model(), cfg.batch(32)) == expected


@pytest.mark.parametrize(("config", "expected"), [
    ("omniglot-5w1s", 8), ("omniglot-5w5s", 4), ("omniglot-20w1s", 4), ("omniglot-20w5s", 1),
    ("miniimagenet-5w1s", 1), ("miniimagenet-5w5s", 1), ("sinusoid", 25)])
def test_auto_takes_the_chunks_measured_fastest(config, expected):
    """The fastest chunk of each paper configuration in results/benchmarks/task-chunks-cpu.md
    (20-way 5-shot: 1, 2 and 4 within 1.5%); the sinusoid's tiny tasks in one pass."""
    cfg = CONFIGS[config]
    assert auto_task_chunk(cfg.model(), cfg.batch(cfg.meta_batch)) == expected


def test_auto_takes_the_whole_batch_off_the_cpu():
    cfg = CONFIGS["miniimagenet-5w1s"]  # 69 MiB a task: one per pass on the CPU
    assert auto_task_chunk(cfg.model(), cfg.batch(4)) == 1
    model = cfg.model().to("meta")  # stands in for a GPU: no activations are computed there
    assert auto_task_chunk(model, cfg.batch(4, torch.device("meta"))) == 4


def test_the_summed_chunks_are_the_whole_batch_meta_gradient():
    cfg = CONFIGS["sinusoid"]
    torch.manual_seed(0)
    model = cfg.model().double()
    params = list(model.parameters())
    batch = cfg.batch(7).map(lambda t: t.double())

    def losses(part):
        return torch.stack([cfg.loss(model(x).unsqueeze(0), y.unsqueeze(0)).sum()
                            for x, y in zip(part.x_query, part.y_query, strict=True)])

    whole = losses(batch).mean()
    grads = torch.autograd.grad(whole, params)
    for chunk in (1, 3, 7):
        loss, parts = summed_meta_gradient(losses, batch, params, chunk)
        torch.testing.assert_close(loss, whole.detach())
        for a, b in zip(parts, grads, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("tasks", "expected"), [(32, 8), (16, 8), (9, 8), (8, 8), (6, 6)])
def test_auto_caps_passes_at_eight_tasks_whatever_the_batch(tasks, expected):
    """16 tasks of 5-way 1-shot fit 10 MiB but measured slower than 8 per pass: a smaller
    meta-batch, or one process's share under torchrun, is capped too; 8 or fewer are whole."""
    cfg = CONFIGS["omniglot-5w1s"]
    assert auto_task_chunk(cfg.model(), cfg.batch(tasks)) == expected


def test_tiny_tasks_stay_one_pass_however_many():
    cfg = CONFIGS["sinusoid"]
    assert auto_task_chunk(cfg.model(), cfg.batch(100)) == 100


@pytest.mark.parametrize(("text", "value"), [("auto", -1), ("AUTO", -1), ("whole", 0), ("4", 4),
                                             ("-1", -1)])
def test_task_chunk_takes_its_words_on_the_command_line(text, value):
    from maml_bench.config import apply_overrides
    from maml_bench.experiments import EXPERIMENTS

    config = apply_overrides(EXPERIMENTS.get("omniglot-5w1s-v1").config, [f"task_chunk={text}"])
    assert config.task_chunk == value


def test_a_bad_task_chunk_names_the_words():
    from maml_bench.config import apply_overrides
    from maml_bench.errors import UserError
    from maml_bench.experiments import EXPERIMENTS

    with pytest.raises(UserError, match=r"task_chunk must be an integer in \[-1, 100_000\], "
                                        r"or auto \(-1\), or whole \(0\)"):
        apply_overrides(EXPERIMENTS.get("omniglot-5w1s-v1").config, ["task_chunk=most"])


# --- task_threads -------------------------------------------------------------------------


def conv_losses(cfg, model):
    """Per-task second-order MAML query losses of `cfg`'s Conv4 by the default backend."""
    from maml_bench.core.backends import MetaProblem, auto_backend, query_losses

    theta = dict(model.named_parameters())
    problem = MetaProblem(model, cfg.loss, cfg.inner_steps, cfg.inner_lr)

    def losses(part):
        backend = auto_backend(model, False, cfg.inner_steps, part.x_support.shape[1])
        return query_losses(backend, problem, theta, part)

    return losses


@pytest.mark.parametrize(("threads", "chunk"), [(2, 8), (3, 2), (4, 1), (7, 7)])
def test_task_threads_give_the_one_thread_meta_gradient_in_float64(threads, chunk):
    """Shares of the tasks on threads of their own, each in its chunks: the gradient of the
    whole batch in one pass (float64, Conv4 at Omniglot's 28 x 28, second order), and the
    same bits on every call with the same count (the shares are summed in order)."""
    cfg = CONFIGS["omniglot-5w1s"]
    torch.manual_seed(0)
    model = cfg.model().double()
    params = list(model.parameters())
    batch = cfg.batch(7).to(torch.float64)
    losses = conv_losses(cfg, model)
    whole = losses(batch).mean()
    grads = torch.autograd.grad(whole, params)
    loss, parts = summed_meta_gradient(losses, batch, params, chunk, threads=threads)
    torch.testing.assert_close(loss, whole.detach(), rtol=1e-12, atol=1e-14)
    for a, b in zip(parts, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    again = summed_meta_gradient(losses, batch, params, chunk, threads=threads)[1]
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


def test_task_threads_run_torch_on_one_thread_each_and_leave_the_callers_alone():
    torch.set_num_threads(2)
    try:
        pool = chunking.task_pool(3)
        seen = set(pool.map(lambda _: torch.get_num_threads(), range(9)))
        assert seen == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize(("tasks", "shares", "sizes"), [
    (7, 2, [3, 4]), (8, 2, [4, 4]), (3, 5, [1, 1, 1]), (10, 3, [3, 3, 4])])
def test_tasks_split_into_contiguous_even_shares(tasks, shares, sizes):
    batch = CONFIGS["sinusoid"].batch(tasks)
    parts = chunking.split_tasks(batch, shares)
    assert [p.n_tasks for p in parts] == sizes
    torch.testing.assert_close(torch.cat([p.x_support for p in parts]), batch.x_support,
                               rtol=0, atol=0)


def test_auto_task_threads_use_the_runs_cpus_for_conv_tasks_only(monkeypatch):
    conv, tiny = CONFIGS["omniglot-5w1s"], CONFIGS["sinusoid"]
    monkeypatch.setattr(chunking, "_run_cpus", 3)
    assert chunking.task_threads(AUTO, conv.model(), conv.batch(32)) == 3
    assert chunking.task_threads(AUTO, conv.model(), conv.batch(2)) == 2  # no empty share
    assert chunking.task_threads(AUTO, tiny.model(), tiny.batch(25)) == 1  # tiny tasks
    assert chunking.task_threads(5, tiny.model(), tiny.batch(25)) == 5  # asked for: given
    assert chunking.task_threads(0, conv.model(), conv.batch(32)) == 1
    model = conv.model().to("meta")  # stands in for a GPU
    assert chunking.task_threads(AUTO, model, conv.batch(32, torch.device("meta"))) == 1
    assert chunking.torch_threads(AUTO, conv.model(), conv.batch(32)) is None


def test_auto_gives_tasks_too_big_for_the_cache_torch_threads_instead(monkeypatch):
    """MiniImagenet's 69 MiB tasks: 2 torch threads 1.6x, 2 task threads 1.0-1.2x (measured)."""
    big = CONFIGS["miniimagenet-5w1s"]
    monkeypatch.setattr(chunking, "_run_cpus", 3)
    assert chunking.task_threads(AUTO, big.model(), big.batch(4)) == 1
    assert chunking.torch_threads(AUTO, big.model(), big.batch(4)) == 3
    assert chunking.torch_threads(1, big.model(), big.batch(4)) is None  # asked for: as set
    assert chunking.task_threads(2, big.model(), big.batch(4)) == 2


def test_run_cpus_default_to_the_machines_shared_by_torchruns_local_processes(monkeypatch):
    monkeypatch.setattr(chunking, "_run_cpus", None)
    monkeypatch.setattr(chunking, "machine_cpus", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert chunking.run_cpus() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert chunking.run_cpus() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert chunking.run_cpus() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setenv("WORLD_SIZE", "4")  # a launcher that does not say how many are local
    assert chunking.run_cpus() == 1
    chunking.set_run_cpus(2)  # the runner's, for this run
    assert chunking.run_cpus() == 2


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", 16), ("200000 100000\n", 2), ("150000 100000\n", 2), ("5000 100000", 1),
    ("garbage", 16)])
def test_machine_cpus_honour_a_cgroup_quota(monkeypatch, tmp_path, cpu_max, expected):
    """A container started with --cpus sees every core of its host in its affinity."""
    monkeypatch.setattr(chunking.os, "sched_getaffinity", lambda pid: set(range(16)))
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(chunking, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert chunking.machine_cpus() == expected
    monkeypatch.setattr(chunking, "CGROUP_CPU_MAX", tmp_path / "missing")
    assert chunking.machine_cpus() == 16


@pytest.mark.parametrize("path", ["loop", "vmap"])
def test_backends_that_swap_the_modules_parameters_refuse_task_threads(path, monkeypatch):
    """functional_call swaps the module's own parameters while it runs: two threads would race
    (measured: 'backward through the graph a second time' in 3 of 5 tries). auto: 1 thread."""
    import dataclasses

    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.errors import UserError
    from maml_bench.experiments import EXPERIMENTS
    from maml_bench.tasks import BENCHMARKS

    monkeypatch.setattr(chunking, "CPU_THREAD_TASK_MIB", 0.0)  # the sinusoid's tasks count
    monkeypatch.setattr(chunking, "_run_cpus", 2)
    experiment = EXPERIMENTS.get("sinusoid-table2-v1")
    config = dataclasses.replace(experiment.config, path=path, meta_batch=4)
    bench = BENCHMARKS.get(experiment.benchmark)(config)
    with pytest.raises(UserError, match=rf"task_threads=2 .* {path} backend swaps"):
        ALGORITHMS.get("maml")(bench, dataclasses.replace(config, task_threads=2), 0)
    algo = ALGORITHMS.get("maml")(bench, config, 0)
    algo.train_step(0)
    assert algo.backend == path and algo.info["task_threads"] == 1


@pytest.mark.parametrize(("text", "value"), [("auto", -1), ("2", 2), ("1", 1)])
def test_task_threads_take_their_words_on_the_command_line(text, value):
    from maml_bench.config import apply_overrides
    from maml_bench.experiments import EXPERIMENTS

    config = apply_overrides(EXPERIMENTS.get("omniglot-5w1s-v1").config,
                             [f"task_threads={text}"])
    assert config.task_threads == value


def test_task_threads_leave_the_config_hash_at_auto():
    """Added after runs existed: at auto they keep their hash (and resume); a count is hashed."""
    import dataclasses

    from maml_bench.config import config_hash
    from maml_bench.experiments import EXPERIMENTS

    config = EXPERIMENTS.get("omniglot-5w1s-v1").config
    base = config_hash(dataclasses.replace(config, task_threads=-1))
    assert config_hash(config) == base
    assert config_hash(dataclasses.replace(config, task_threads=2)) != base
