"""Fits (paper Figure 2): predictions on a grid after fine-tuning, checked against a manual
loop, written by the runner for methods that fine-tune, and drawn by `maml-bench plot`."""

from __future__ import annotations

import pandas as pd
import torch
from torch.func import functional_call

from maml_bench.cli import main
from maml_bench.fits import FITS_FILE
from maml_bench.runner import execute


def manual_fit(model, theta, x_support, y_support, grid, lr, steps):
    """Plain SGD on one task's support points, then predictions on the grid."""
    params = {k: v.detach().clone() for k, v in theta.items()}
    for _ in range(steps):
        params = {k: v.requires_grad_() for k, v in params.items()}
        loss = (functional_call(model, params, (x_support,)) - y_support).pow(2).mean()
        grads = torch.autograd.grad(loss, list(params.values()))
        params = {k: (v - lr * g).detach() for (k, v), g in zip(params.items(), grads,
                                                                strict=True)}
    with torch.no_grad():
        return functional_call(model, params, (grid,))[:, 0]


def test_fits_match_a_manual_fine_tuning_loop(tiny_runs):
    from maml_bench.algorithms import ALGORITHMS
    from maml_bench.tasks.sinusoid import Sinusoid

    for method in ("maml", "pretrain"):
        (run,) = tiny_runs([method])
        fits = pd.read_csv(execute(run) / FITS_FILE)
        # The trained state is in the last checkpoint; rebuild it to fine-tune by hand.
        bench = Sinusoid(run.config)
        algo = ALGORITHMS.get(method)(bench, run.config, run.seed)
        state = torch.load(run.directory / "checkpoint.pt", weights_only=False)
        algo.load_state_dict(state["algorithm"])
        with torch.no_grad():
            algo.evaluate()  # pretrain tunes its step size here
        forward, theta, lr = algo.fine_tuner(5)
        support = fits[(fits["kind"] == "support") & (fits["shots"] == 5) & (fits["task"] == 1)]
        x_s = torch.tensor(support["x"].to_numpy(), dtype=torch.float32)[:, None]
        y_s = torch.tensor(support["y"].to_numpy(), dtype=torch.float32)[:, None]
        for step in (0, 1, run.config.eval_steps):
            pred = fits[(fits["kind"] == "prediction") & (fits["shots"] == 5)
                        & (fits["task"] == 1) & (fits["step"] == step)]
            grid = torch.tensor(pred["x"].to_numpy(), dtype=torch.float32)[:, None]
            want = manual_fit(algo.model, theta, x_s, y_s, grid, float(lr), step)
            torch.testing.assert_close(torch.tensor(pred["y"].to_numpy(), dtype=torch.float32),
                                       want, rtol=1e-4, atol=1e-5, msg=f"{method} step {step}")
        truth = fits[(fits["kind"] == "truth") & (fits["shots"] == 5) & (fits["task"] == 1)]
        amplitude, phase = bench.eval_sets("test")[5].task_info[1].tolist()
        expected = amplitude * torch.sin(torch.tensor(truth["x"].to_numpy()) - phase)
        torch.testing.assert_close(torch.tensor(truth["y"].to_numpy()), expected.double(),
                                   rtol=1e-5, atol=1e-5)


def test_methods_that_do_not_fine_tune_write_no_fits(tiny_runs):
    for method in ("oracle", "multitask-noreg"):
        (run,) = tiny_runs([method])
        assert not (execute(run) / FITS_FILE).exists()


def test_plot_draws_figure2_from_fits_and_skips_it_without(tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["run", "--scale", "tiny", "--method", "maml", "--method", "pretrain",
                 "--out", str(out)]) == 0
    figure = out / "sinusoid-table2-v1" / "figures" / "figure2.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure.unlink()
    for method in ("maml", "pretrain"):
        (out / "sinusoid-table2-v1" / "raw" / method / "seed-0" / FITS_FILE).unlink()
    assert main(["plot", "--scale", "tiny", "--out", str(out)]) == 0
    assert not figure.exists()
    assert "figure2: no fits.csv.gz" in caplog.text
