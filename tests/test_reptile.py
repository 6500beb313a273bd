"""Reptile: the sinusoid form (SGD on each task, Adam towards the mean) and its own protocol on
few-shot classification (Nichol et al. 2018's code: inner Adam with carried moments on
minibatches, annealed interpolation, fine-tuning with the same Adam); a learning signal on real
Omniglot (skipped without it)."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.func import functional_call

from maml_bench.algorithms import ALGORITHMS
from maml_bench.algorithms.reptile import InnerOptimizer, minibatch_order
from maml_bench.config import apply_overrides
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.report.tables import format_table, summarize
from maml_bench.runner import plan_runs
from maml_bench.tasks import BENCHMARKS
from maml_bench.tasks.fewshot.data_root import data_root

needs_omniglot = pytest.mark.skipif(
    not (data_root() / "omniglot").is_dir(),
    reason=f"real Omniglot not found at {data_root() / 'omniglot'}: put images_background.zip "
           "and images_evaluation.zip there (or set MAML_BENCH_DATA)")


def reptile(experiment: str, scale: str, tmp_path: Path, *overrides: str):
    (run,) = plan_runs(experiment, scale, list(overrides), ["reptile"], None, tmp_path)
    bench = BENCHMARKS.get(EXPERIMENTS.get(experiment).benchmark)(run.config)
    return ALGORITHMS.get("reptile")(bench, run.config, 0)


def test_sinusoid_reptile_is_sgd_on_each_task_then_adam_towards_the_mean(tmp_path):
    algo = reptile("sinusoid-table2-v1", "tiny", tmp_path)
    c = algo.config
    assert algo.tasks_at_once and algo.maml_fine_tuning and algo.inner_state is None
    gen = torch.Generator()
    gen.set_state(algo.gen.get_state())
    batch = algo.benchmark.train_batch(gen, c.meta_batch, c.train_shots, c.train_query)
    theta = {k: v.detach().clone() for k, v in algo.theta.items()}
    adapted = []
    for t in range(batch.n_tasks):  # each task alone, plain SGD on its support set
        params = {k: v.clone().requires_grad_() for k, v in theta.items()}
        for _ in range(c.reptile_inner_steps):
            pred = functional_call(algo.model, params, (batch.x_support[t],))
            loss = algo.benchmark.loss(pred.unsqueeze(0), batch.y_support[t].unsqueeze(0)).sum()
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {k: (p - c.inner_lr * g).detach().requires_grad_()
                      for (k, p), g in zip(params.items(), grads, strict=True)}
        adapted.append(params)
    expected = {k: v.clone() for k, v in theta.items()}
    adam = torch.optim.Adam(list(expected.values()), lr=c.meta_lr)
    for k, p in expected.items():
        p.grad = theta[k] - torch.stack([a[k].detach() for a in adapted]).mean(0)
    adam.step()
    algo.train_step(0)
    for k, p in algo.theta.items():
        torch.testing.assert_close(p.detach(), expected[k])


def test_minibatches_are_passes_over_reshuffled_examples_that_may_straddle_two():
    order = minibatch_order(3, 5, 3, 4, torch.Generator().manual_seed(0))  # 12 of 3 passes
    assert order.shape == (3, 4, 3)
    flat = order.flatten(1)
    for task in flat:
        assert sorted(task[:5].tolist()) == list(range(5))  # the first pass, whole
        assert sorted(task[5:10].tolist()) == list(range(5))  # the second straddles batches
    whole = minibatch_order(2, 4, 0, 3, torch.Generator())
    assert whole.shape == (2, 3, 4) and (whole == torch.arange(4)).all()


def test_inner_adam_is_tensorflows_update_with_beta1_zero():
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(1, 6, generator=gen, dtype=torch.float64)
    opt = InnerOptimizer("adam", 0.01, (0.0, 0.999))
    state = opt.initial_state({"w": param[0]})
    ours, reference = {"w": param.clone()}, param.clone().requires_grad_()
    torch_adam = torch.optim.Adam([reference], lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    for _ in range(5):
        g = torch.randn(1, 6, generator=gen, dtype=torch.float64)
        ours, state = opt.step(ours, {"w": g}, state)
        reference.grad = g.clone()
        torch_adam.step()
        # the same up to where epsilon is added (TF: to sqrt(v) before bias correction)
        torch.testing.assert_close(ours["w"], reference.detach(), rtol=1e-6, atol=1e-9)
    assert state.step == 5
    torch.testing.assert_close(state.m["w"], g)  # beta1 = 0: the last gradient


def test_interpolation_towards_the_mean_with_a_linearly_annealed_step(tmp_path):
    algo = reptile("sinusoid-table2-v1", "tiny", tmp_path, "reptile_outer=interpolate",
                   "reptile_meta_step=1", "reptile_meta_step_final=0", "iterations=20")
    for iteration, eps in ((0, 1.0), (5, 0.75), (10, 0.5)):
        before = {k: v.detach().clone() for k, v in algo.theta.items()}
        algo.outer_update(before, {k: b + 1.0 for k, b in before.items()}, iteration)
        for k, p in algo.theta.items():
            torch.testing.assert_close(p.detach(), before[k] + eps)


def test_reptile_settings_are_checked_before_any_work(tmp_path):
    config = EXPERIMENTS.get("omniglot-5w1s-v1").config
    for bad, name in (("reptile_inner_optimizer=rmsprop", "reptile_inner_optimizer"),
                      ("reptile_adam_betas=0.9", "reptile_adam_betas"),
                      ("reptile_adam_betas=1,0.999", "reptile_adam_betas"),
                      ("reptile_inner_batch=-1", "reptile_inner_batch"),
                      ("reptile_meta_step=0", "reptile_meta_step"),
                      ("reptile_outer=sgd", "reptile_outer"),
                      ("reptile_inner_loss=max", "reptile_inner_loss")):
        with pytest.raises(UserError, match=name):
            apply_overrides(config, [bad])
    good = apply_overrides(config, ["reptile_adam_betas=0.5,0.99", "reptile_meta_step_final=0"])
    assert good.reptile_adam_betas == (0.5, 0.99) and good.reptile_meta_step_final == 0.0


def test_fewshot_experiments_pass_reptile_its_papers_protocol(tmp_path):
    (run,) = plan_runs("omniglot-5w1s-v1", "paper", [], ["reptile"], None, tmp_path)
    c = run.config
    assert (c.reptile_inner_optimizer, c.reptile_adam_betas, c.inner_lr) == ("adam", (0, 0.999),
                                                                              0.001)
    assert (c.meta_batch, c.train_shots, c.reptile_inner_batch, c.reptile_inner_steps) == (
        5, 10, 10, 5)
    assert (c.reptile_outer, c.reptile_meta_step, c.reptile_meta_step_final) == (
        "interpolate", 1.0, 0.0)
    assert (c.iterations, c.eval_steps, c.reptile_eval_batch, c.eval_shots) == (
        100_000, 50, 5, (1,))
    (run,) = plan_runs("omniglot-20w1s-v1", "paper", [], ["reptile"], None, tmp_path)
    c = run.config
    assert (c.inner_lr, c.reptile_inner_batch, c.reptile_inner_steps, c.iterations,
            c.reptile_eval_batch) == (0.0005, 20, 10, 200_000, 10)
    (run,) = plan_runs("miniimagenet-5w5s-v2", "paper", [], ["reptile"], None, tmp_path)
    c = run.config
    assert (c.train_shots, c.reptile_inner_batch, c.reptile_inner_steps,
            c.reptile_eval_batch) == (15, 10, 8, 15)
    # MAML's own settings are untouched by Reptile's
    (run,) = plan_runs("omniglot-5w1s-v1", "paper", [], ["maml"], None, tmp_path)
    assert run.config == EXPERIMENTS.get("omniglot-5w1s-v1").config


def test_methods_table_shows_each_method_after_its_own_last_step():
    experiment = EXPERIMENTS.get("omniglot-5w1s-v1")
    (spec,) = [t for t in experiment.tables if t.name == "methods"]
    steps = dict(spec.method_steps)
    assert steps["reptile"] == 50 and steps["protonets"] == 3 and spec.steps == (3,)
    paper = experiment.paper_frame()
    assert paper.loc[paper["method"] == "reptile", "steps"].tolist() == [50]
    rows = [(m, s, task, 90.0 + s / 10) for m, last in (("maml", 3), ("reptile", 50))
            for s in range(last + 1) for task in range(3)]
    records = pd.DataFrame(rows, columns=["method", "step", "task", "value"]).assign(
        experiment=experiment.id, run_id=lambda f: f["method"], run_seed=0, seed=0, shots=1,
        metric="accuracy", scale="quick")
    summary = summarize(records, paper, include_paper_only=True)
    wide = format_table(summary, 1, [3], metric="accuracy", method_steps=steps).set_index(
        "method")
    assert list(wide.columns) == ["steps", "ours", "seeds: min-max", "paper"]
    assert wide.loc["reptile", "steps"] == "50" and wide.loc["maml", "steps"] == "3"
    assert wide.loc["reptile", "ours"].startswith("95.00") and wide.loc["reptile", "paper"] == (
        "97.68")
    assert wide.loc["maml", "ours"].startswith("90.30")
    assert wide.loc["maml", "paper"] == "98.70 ± 0.40"  # the paper's interval beside its value


@needs_omniglot
def test_inner_adam_state_carries_over_tasks_and_meta_test_starts_from_a_copy(tmp_path):
    algo = reptile("omniglot-5w1s-v1", "tiny", tmp_path, "eval_steps=4")
    c = algo.config
    assert not algo.tasks_at_once and not algo.maml_fine_tuning and algo.fine_tuner(1) is None
    algo.train_step(0)
    assert algo.inner_state.step == c.meta_batch * c.reptile_inner_steps
    carried = {k: v.clone() for k, v in algo.inner_state.v.items()}
    curves = algo.evaluate()[1]
    assert curves.shape == (c.test_tasks, 5) and algo.validation_score() is not None
    assert algo.inner_state.step == c.meta_batch * c.reptile_inner_steps
    for k, v in algo.inner_state.v.items():
        assert torch.equal(v, carried[k])  # meta-test leaves the carried state alone
    algo.train_step(1)
    assert algo.inner_state.step == 2 * c.meta_batch * c.reptile_inner_steps


@needs_omniglot
def test_a_checkpoint_reproduces_the_next_training_losses(tmp_path):
    original = reptile("omniglot-5w1s-v1", "tiny", tmp_path)
    for it in range(2):
        original.train_step(it)
    buffer = io.BytesIO()  # through bytes, as the runner's checkpoints
    torch.save(original.state_dict(), buffer)
    expected = [original.train_step(it).item() for it in (2, 3)]
    resumed = reptile("omniglot-5w1s-v1", "tiny", tmp_path)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert [resumed.train_step(it).item() for it in (2, 3)] == expected


@needs_omniglot
def test_a_short_run_clearly_beats_chance_on_real_omniglot(tmp_path):
    """5-way 1-shot with Reptile's protocol, 300 meta-iterations of 5 tasks with 16 filters:
    measured 31.6% untrained -> 52.6% after 50 fine-tuning steps (100 test episodes, seed 0);
    chance is 20%."""
    algo = reptile("omniglot-5w1s-v1", "tiny", tmp_path, "iterations=300", "meta_batch=5",
                   "filters=16", "test_tasks=100", "eval_chunk=100")
    untrained = algo.evaluate()[1][:, -1].mean().item()
    for i in range(algo.config.iterations):
        algo.train_step(i)
    trained = algo.evaluate()[1][:, -1].mean().item()
    print(f"reptile: {untrained:.1f}% untrained -> {trained:.1f}% after 300 iterations")
    assert trained > 45.0 > untrained


@pytest.mark.parametrize("path", ["loop", "batched"])
def test_run_info_names_the_forward_reptile_steps_through(tmp_path, path):
    # loop has no forward of its own: Reptile's inner optimizer steps through the batched one,
    # and run.json must say so rather than suggest a per-task loop
    algo = reptile("sinusoid-table2-v1", "tiny", tmp_path, f"path={path}")
    assert algo.info["path"] == path
    assert algo.info.get("inner_forward") == ("batched" if path == "loop" else None)
