"""Fits for people to look at (paper Figure 2): a method's predictions on a dense grid for a
few fixed test tasks after 0..eval_steps fine-tuning steps, beside the true function and the K
points it was fine-tuned on. Written by the runner as `fits.csv.gz` next to the records."""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from maml_bench.algorithms import Algorithm
from maml_bench.core.functional import evaluate_adaptation
from maml_bench.tasks.base import SupervisedBenchmark

FITS_FILE = "fits.csv.gz"
FIT_COLUMNS = ["kind", "shots", "task", "step", "x", "y"]  # kind: truth | support | prediction


def _predictions(pred: Tensor, target: Tensor) -> Tensor:
    return pred  # evaluate_adaptation's "metric": keep the predictions themselves


def fit_frame(algorithm: Algorithm, benchmark: SupervisedBenchmark, steps: int
              ) -> pd.DataFrame | None:
    """Long-form fits of every K the benchmark draws, or None where there is nothing to draw
    (a benchmark without curves, a method that does not fine-tune)."""
    sets = benchmark.fit_sets()
    if not sets:
        return None
    frames = []
    for k, batch in sets.items():
        tuner = algorithm.fine_tuner(k)
        if tuner is None:
            return None
        forward, theta, lrs = tuner
        # The same adaptation as the meta-test (evaluate_adaptation), read on the grid.
        preds = evaluate_adaptation(forward, theta, batch, benchmark.loss, _predictions, steps,
                                    lrs)  # [tasks, steps + 1, points, 1]
        tasks, n_steps, points = preds.shape[:3]
        grid = batch.x_query[..., 0]
        frames.append(_rows("prediction", k, grid.unsqueeze(1).expand(-1, n_steps, -1),
                            preds[..., 0], steps=torch.arange(n_steps)))
        frames.append(_rows("truth", k, grid, batch.y_query[..., 0]))
        frames.append(_rows("support", k, batch.x_support[..., 0], batch.y_support[..., 0]))
    return pd.concat(frames, ignore_index=True)[FIT_COLUMNS]


def _rows(kind: str, shots: int, x: Tensor, y: Tensor, steps: Tensor | None = None
          ) -> pd.DataFrame:
    """x, y: [tasks, points] (or [tasks, steps, points] with `steps`) -> long rows."""
    x, y = x.detach().cpu(), y.detach().cpu()  # a run on a GPU: its predictions come back
    index = torch.nonzero(torch.ones_like(y, dtype=torch.bool))
    frame = pd.DataFrame({"kind": kind, "shots": shots, "task": index[:, 0].numpy(),
                          "x": x.reshape(-1).double().numpy(),
                          "y": y.detach().reshape(-1).double().numpy()})
    frame["step"] = steps[index[:, 1]].numpy() if steps is not None else -1
    return frame
