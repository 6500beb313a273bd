"""Sinusoid regression (paper 5.1): y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.models.mlp import MLP, reference_code_init_
from maml_bench.settings import MetaConfig
from maml_bench.tasks.base import SupervisedBenchmark


@dataclass(frozen=True)
class SinusoidConfig(MetaConfig):
    amplitude_min: float = 0.1
    amplitude_max: float = 5.0
    phase_min: float = 0.0
    phase_max: float = math.pi
    x_min: float = -5.0
    x_max: float = 5.0
    hidden: tuple[int, ...] = (40, 40)
    """hidden layer widths of the ReLU MLP (paper: 40, 40)"""
    test_query: int = 0
    """held-out points per test task; 0 = K points, as the reference code"""
    # --- multi-task parameter-averaging baselines (paper App. C.1) ---
    multitask_networks: int = 500
    """separate regressors, one per task, whose parameters are averaged"""
    multitask_steps: int = 3_000
    """Adam steps per regressor"""
    multitask_points: int = 100
    """fresh points per step for each regressor ("plenty of data")"""
    multitask_lr: float = 1e-2
    """Adam step size of each regressor"""
    multitask_chunk: int = 50
    """regressors trained side by side; the 'mean theta' pull uses all finished chunks"""
    multitask_l2: float = 1e-3
    """l2 weight decay coefficient of the 'l2 reg' variant"""
    multitask_mean_pull: float = 1e-3
    """coefficient of the l2 pull towards the mean of earlier regressors ('reg to mean')"""
    multitask_target_mse: float = 0.02
    """each regressor should reach this MSE (the paper: < 0.02); the run reports the fraction"""

    def validate(self) -> None:
        super().validate()
        if not (0 < self.amplitude_min <= self.amplitude_max):
            raise UserError("need 0 < amplitude_min <= amplitude_max")
        if self.x_min >= self.x_max or self.phase_min > self.phase_max:
            raise UserError("need x_min < x_max and phase_min <= phase_max")
        if self.multitask_networks <= 0 or self.multitask_chunk <= 0:
            raise UserError("multitask_networks and multitask_chunk must be positive")


@dataclass(frozen=True)
class SinusoidCodeConfig(SinusoidConfig):
    """Sinusoid settings with a choice of weight init (a subclass, so that the configs and
    hashes of the experiments that predate this option are unchanged)."""

    weight_init: str = "reference-code"
    """torch (PyTorch's default) | reference-code (truncated normal std 0.01, zero biases)"""

    def validate(self) -> None:
        super().validate()
        if self.weight_init not in ("torch", "reference-code"):
            raise UserError("weight_init must be torch or reference-code")


class Sinusoid(SupervisedBenchmark):
    """Few-shot regression of y = A sin(x - phi) (paper 5.1); metric: MSE on query points."""

    metric_name = "mse"
    higher_is_better = False
    config_class = SinusoidConfig

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

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).pow(2).flatten(1).mean(1)

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
