"""The meta-RL methods end to end on 2D navigation (needs the rl extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("gymnasium")

import pandas as pd  # noqa: E402

from maml_bench.experiments import EXPERIMENTS  # noqa: E402
from maml_bench.runner import execute, plan_runs  # noqa: E402

RL_PAIRS = [(e, m.algorithm) for e in EXPERIMENTS.names()
            if EXPERIMENTS.get(e).benchmark == "meta-rl" for m in EXPERIMENTS.get(e).methods]


@pytest.mark.parametrize(("experiment", "method"), RL_PAIRS)
def test_every_rl_method_runs_end_to_end(experiment, method, tmp_path):
    (run,) = plan_runs(experiment, "tiny", [], [method], 1, tmp_path)
    records = pd.read_csv(execute(run, progress=False) / "records.csv.gz")
    config = run.config
    assert len(records) == config.test_tasks * len(config.eval_shots) * (config.eval_steps + 1)
    assert records["metric"].eq("return").all() and records["value"].notna().all()
    if "Navigation" in config.env:
        assert (records["value"] <= 0).all()  # navigation rewards are minus distances


def test_the_oracle_is_not_adapted_at_meta_test(tmp_path):
    """Given the task, the oracle is the upper reference (a flat line in Figure 4); the other
    methods' curves move with each step."""
    curves = {}
    for method in ("rl-oracle", "rl-pretrained"):
        (run,) = plan_runs("navigation2d-v1", "tiny", [], [method], 1, tmp_path)
        records = pd.read_csv(execute(run, progress=False) / "records.csv.gz")
        curves[method] = records.pivot_table(index="task", columns="step", values="value")
    oracle, pretrained = curves["rl-oracle"], curves["rl-pretrained"]
    assert oracle.shape[1] > 1 and oracle.nunique(axis=1).eq(1).all()
    assert not pretrained.nunique(axis=1).eq(1).all()


def test_the_same_seed_gives_the_same_records(tmp_path):
    frames = []
    for out in ("a", "b"):
        (run,) = plan_runs("navigation2d-v1", "tiny", [], ["maml-trpo"], 1, tmp_path / out)
        frames.append(pd.read_csv(execute(run, progress=False) / "records.csv.gz"))
    keep = [c for c in frames[0].columns if c not in ("date", "git_sha")]
    pd.testing.assert_frame_equal(frames[0][keep], frames[1][keep])


def test_a_few_maml_trpo_iterations_improve_the_post_adaptation_return(tmp_path):
    """10 meta-iterations of 5 tasks x 5 trajectories (about 4 s): the return after one
    policy-gradient step on 10 test tasks rises from about -95 (untrained) to about -23."""
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.tasks.rl import MetaRL

    overrides = ["meta_batch=5", "train_shots=5", "eval_shots=10", "test_tasks=10",
                 "horizon=100", "hidden=32,32", "iterations=10"]
    (run,) = plan_runs("navigation2d-v1", "tiny", overrides, ["maml-trpo"], 1, tmp_path)
    algo = ALGORITHMS.get("maml-trpo")(MetaRL(run.config), run.config, 0)
    before = algo.evaluate()[10].mean(0)
    for i in range(run.config.iterations):
        algo.train_step(i)
    after = algo.evaluate()[10].mean(0)
    assert before[1] < -50.0 < after[1]
    assert after[1] > after[0]  # and the step itself helps


def test_the_training_curve_of_rl_is_the_return(tmp_path):
    """train_loss is minus the return: the figure draws the return itself, on a linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    from maml_bench.report.experiment import build_figures

    (run,) = plan_runs("navigation2d-v1", "tiny", ["iterations=3"], ["maml-trpo"], 1, tmp_path)
    execute(run, progress=False)
    paths = build_figures("navigation2d-v1", tmp_path)
    assert tmp_path / "navigation2d-v1" / "figures" / "training-curves.png" in paths
    log = pd.read_csv(run.directory / "train_log.csv")
    assert (log["train_loss"] > 0).all()  # minus negative navigation returns


def test_sampler_workers_and_jobs_together_are_one_line_before_any_work(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "maml_bench.cli", "run", "navigation2d-v1",
                          "--scale", "tiny", "--set", "workers=2", "--jobs", "2", "--out",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "workers=2" in out.stderr and not any(tmp_path.iterdir())


def test_meta_test_evaluates_the_iteration_with_the_best_training_return(tmp_path):
    """The paper's protocol: the checkpoint with the best training return is evaluated."""
    import torch

    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.tasks.rl import MetaRL

    (run,) = plan_runs("navigation2d-v1", "tiny", ["iterations=4"], ["maml-trpo"], 1, tmp_path)
    algo = ALGORITHMS.get("maml-trpo")(MetaRL(run.config), run.config, 0)
    before, returns = [], []
    for i in range(run.config.iterations):
        before.append({k: v.detach().clone() for k, v in algo.theta.items()})
        returns.append(-algo.train_step(i).item())
    best = max(range(len(returns)), key=returns.__getitem__)
    assert algo.info["best_iteration"] == best
    for name, value in algo.best_policy.named_parameters():
        torch.testing.assert_close(value, before[best][name], rtol=0, atol=0)
    algo.evaluate()
    assert algo.info["evaluated"] == f"best training return, iteration {best}"
    # resumable: the best policy is part of the state
    state = algo.state_dict()
    other = ALGORITHMS.get("maml-trpo")(MetaRL(run.config), run.config, 1)
    other.load_state_dict(state)
    for (_, a), (_, b) in zip(other.best_policy.named_parameters(),
                              algo.best_policy.named_parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_run_draws_rollouts_of_the_adapted_policy_unless_told_not_to(tmp_path, capsys):
    from PIL import Image

    (run,) = plan_runs("navigation2d-v1", "tiny", ["horizon=20", "render=true"], ["maml-trpo"],
                       1, tmp_path)
    directory = execute(run, progress=False)
    said = capsys.readouterr()
    for i in (0, 1):
        gif = Image.open(directory / f"rollout-task{i}.gif")
        assert gif.n_frames > 1  # an episode, not a still
        assert gif.size[0] >= 320 and gif.size[1] > gif.size[0]  # readable, a caption band
        gif.seek(gif.n_frames - 1)
        assert gif.info["duration"] >= 1000  # the end is held, so a short episode is seen
        assert str(directory / f"rollout-task{i}.gif") in said.out + said.err  # listed
    (quiet,) = plan_runs("navigation2d-v1", "tiny", ["render=false"], ["maml-trpo"], 1,
                         tmp_path / "quiet")
    assert not list(execute(quiet, progress=False).glob("rollout-*.gif"))


def test_a_machine_that_cannot_draw_loses_the_gif_not_the_run(tmp_path, monkeypatch, caplog):
    import logging

    monkeypatch.setattr("sys.executable", "/nonexistent/python")  # the drawing child fails
    (run,) = plan_runs("navigation2d-v1", "tiny", ["render=true"], ["maml-trpo"], 1, tmp_path)
    with caplog.at_level(logging.WARNING):
        directory = execute(run, progress=False)
    assert (directory / "records.csv.gz").exists() and not list(directory.glob("*.gif"))
    assert "not drawn" in caplog.text
