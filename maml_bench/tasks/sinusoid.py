"""Sinusoid regression (paper 5.1): y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from maml_bench.config import COUNT, SIZE, STEP, MetaConfig
from maml_bench.core.functional import SupervisedBatch, task_mse
from maml_bench.domains import Items, Number, OneOf, require, setting
from maml_bench.models.mlp import MLP, reference_code_init_
from maml_bench.tasks.base import SupervisedBenchmark

PARAM = Number(float, -1e4, 1e4)  # a coordinate or phase
FIT_TASKS = 3  # test tasks drawn in the fits figure (paper Figure 2)
FIT_POINTS = 100


@dataclass(frozen=True)
class SinusoidConfig(MetaConfig):
    amplitude_min: float = setting(0.1, Number(float, 0.0, 1e3, lo_open=True))
    """smallest amplitude A of a task (paper 0.1)"""
    amplitude_max: float = setting(5.0, Number(float, 0.0, 1e3, lo_open=True))
    """largest amplitude A of a task (paper 5.0)"""
    phase_min: float = setting(0.0, PARAM)
    """smallest phase of a task (paper 0)"""
    phase_max: float = setting(math.pi, PARAM)
    """largest phase of a task (paper pi)"""
    x_min: float = setting(-5.0, PARAM)
    """inputs are drawn uniformly from [x_min, x_max] (paper -5, 5)"""
    x_max: float = setting(5.0, PARAM)
    """see x_min"""
    hidden: tuple[int, ...] = setting((40, 40), Items(Number(int, 1, 4096), 1, 16))
    """hidden layer widths of the ReLU MLP (paper: 40, 40)"""
    test_query: int = setting(0, Number(int, 0, 10_000), evaluation_only=True)
    """held-out points per test task; 0 = K points, as the reference code"""
    # --- multi-task parameter-averaging baselines (paper App. C.1) ---
    multitask_networks: int = setting(500, SIZE)
    """separate regressors, one per task, whose parameters are averaged"""
    multitask_steps: int = setting(3_000, Number(int, 1, COUNT))
    """Adam steps per regressor"""
    multitask_points: int = setting(100, Number(int, 1, 100_000))
    """fresh points per step for each regressor ("plenty of data")"""
    multitask_lr: float = setting(1e-2, STEP)
    """Adam step size of each regressor"""
    multitask_chunk: int = setting(50, SIZE)
    """regressors trained side by side; the 'mean theta' pull uses all finished chunks"""
    multitask_l2: float = setting(1e-3, Number(float, 0.0, 1e6))
    """l2 weight decay coefficient of the 'l2 reg' variant"""
    multitask_mean_pull: float = setting(1e-3, Number(float, 0.0, 1e6))
    """coefficient of the l2 pull towards the mean of earlier regressors ('reg to mean')"""
    multitask_target_mse: float = setting(0.02, Number(float, 0.0, 1e6, lo_open=True))
    """each regressor should reach this MSE (the paper: < 0.02); the run reports the fraction"""

    def validate(self) -> None:
        super().validate()
        require(self.amplitude_min <= self.amplitude_max, ["amplitude_min", "amplitude_max"],
                "amplitude_min <= amplitude_max")
        require(self.phase_min <= self.phase_max, ["phase_min", "phase_max"],
                "phase_min <= phase_max")
        require(self.x_min < self.x_max, ["x_min", "x_max"], "x_min < x_max")


@dataclass(frozen=True)
class SinusoidCodeConfig(SinusoidConfig):
    """Sinusoid settings with a choice of weight init (a subclass, so that the configs and
    hashes of the experiments that predate this option are unchanged)."""

    weight_init: str = setting("reference-code", OneOf(("torch", "reference-code")))
    """torch (PyTorch's default) | reference-code (truncated normal std 0.01, zero biases)"""


class Sinusoid(SupervisedBenchmark):
    """Few-shot regression of y = A sin(x - phi) (paper 5.1); metric: MSE on query points."""

    metric_name = "mse"
    higher_is_better = False
    config_class = SinusoidConfig
    #: the settings the network's size grows with (named by a memory refusal)
    size_settings = ("hidden",)
    #: the test sets of every K are views of one draw (`_cached_eval_sets`)
    eval_sets_shared = True

    def make_model(self, extra_inputs: int = 0) -> nn.Module:
        model = MLP(1 + extra_inputs, self.config.hidden, 1)
        if getattr(self.config, "weight_init", "torch") == "reference-code":
            reference_code_init_(model)
        return model

    def sample_tasks(self, gen: torch.Generator, n: int) -> Tensor:
        """[n, 2] amplitude and phase."""
        c = self.config
        u = torch.rand(n, 2, generator=gen)
        amp = c.amplitude_min + (c.amplitude_max - c.amplitude_min) * u[:, 0]
        phase = c.phase_min + (c.phase_max - c.phase_min) * u[:, 1]
        return torch.stack([amp, phase], dim=1)

    def sample_points(self, gen: torch.Generator, tasks: Tensor, n: int) -> tuple[Tensor, Tensor]:
        c = self.config
        x = c.x_min + (c.x_max - c.x_min) * torch.rand(tasks.shape[0], n, 1, generator=gen)
        y = tasks[:, 0, None, None] * torch.sin(x - tasks[:, 1, None, None])
        return x, y

    def train_batch(self, gen: torch.Generator, n_tasks: int, shots: int, query: int
                    ) -> SupervisedBatch:
        tasks = self.sample_tasks(gen, n_tasks)
        # One draw of K + Q points per task, as the reference code (2K points per task).
        x, y = self.sample_points(gen, tasks, shots + query)
        return SupervisedBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], tasks)

    def eval_sets(self, split: str) -> dict[int, SupervisedBatch]:
        c = self.config
        return _eval_sets(
            self, split, c.test_seed, c.test_tasks if split == "test" else c.val_tasks,
            c.eval_shots, c.test_query,
        )

    def fit_sets(self) -> dict[int, SupervisedBatch]:
        """The first FIT_TASKS test tasks with their K support points, queried on a grid of
        FIT_POINTS inputs over [x_min, x_max] against the true sinusoid (paper Figure 2)."""
        c = self.config
        grid = torch.linspace(c.x_min, c.x_max, FIT_POINTS)
        out = {}
        for k, batch in self.eval_sets("test").items():
            tasks = batch.task_info[:FIT_TASKS]
            x = grid.expand(tasks.shape[0], -1).unsqueeze(-1)
            y = tasks[:, 0, None, None] * torch.sin(x - tasks[:, 1, None, None])
            out[k] = SupervisedBatch(batch.x_support[:FIT_TASKS], batch.y_support[:FIT_TASKS],
                                     x, y, tasks)
        return out

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return task_mse(pred, target)

    metric = loss

    def with_task_info(self, x: Tensor, task_info: Tensor) -> Tensor:
        info = task_info.unsqueeze(-2).expand(*x.shape[:-1], task_info.shape[-1])
        return torch.cat([x, info], dim=-1)


@cache
def _cached_eval_sets(
    config: SinusoidConfig, split: str, seed: int, n: int, shots: tuple[int, ...], query: int
) -> dict[int, SupervisedBatch]:
    bench = Sinusoid(config)
    # Validation tasks use a different seed so tuning never sees a test task.
    gen = torch.Generator().manual_seed(seed if split == "test" else seed + 1)
    tasks = bench.sample_tasks(gen, n)
    k_max = max(shots)
    q_max = query if query > 0 else k_max
    xs, ys = bench.sample_points(gen, tasks, k_max)
    xq, yq = bench.sample_points(gen, tasks, q_max)
    # The same tasks for every K; K support points are the first K of each task's pool.
    return {
        k: SupervisedBatch(xs[:, :k], ys[:, :k], xq[:, : (query or k)], yq[:, : (query or k)],
                           tasks)
        for k in shots
    }


def _eval_sets(bench: Sinusoid, split: str, seed: int, n: int, shots: tuple[int, ...],
               query: int) -> dict[int, SupervisedBatch]:
    if split not in ("test", "val"):
        raise ValueError(f"split must be test or val, got {split!r}")
    return _cached_eval_sets(bench.config, split, seed, n, tuple(shots), query)
