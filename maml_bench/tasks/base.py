"""What a supervised benchmark offers to algorithms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch


class SupervisedBenchmark(ABC):
    """A task distribution: training batches, fixed test tasks, the loss and the metric."""

    #: name of the reported metric ("mse", "accuracy")
    metric_name: str
    #: True when a larger metric is better
    higher_is_better: bool
    #: why its runs train on the CPU only (`maml_bench/devices.py`), or None
    cpu_only: str | None = None

    def __init__(self, config: Any) -> None:
        self.config = config

    @abstractmethod
    def make_model(self, extra_inputs: int = 0) -> nn.Module:
        """The paper's network; `extra_inputs` widens the input (oracle, context vector)."""

    @abstractmethod
    def train_batch(self, gen: torch.Generator, n_tasks: int, shots: int, query: int
                    ) -> SupervisedBatch:
        """Fresh training tasks, drawn with `gen`."""

    @abstractmethod
    def eval_sets(self, split: str) -> dict[int, SupervisedBatch]:
        """Fixed tasks for `split` ("test" or "val"), one batch per meta-test K."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-task training loss, shape [T]."""

    @abstractmethod
    def metric(self, pred: Tensor, target: Tensor) -> Tensor:
        """Per-task reported metric, shape [T]."""

    def fit_sets(self) -> dict[int, SupervisedBatch] | None:
        """A few fixed test tasks per K whose query inputs are a dense grid and query targets
        the true function on it, for drawing fits (paper Figure 2); None where a task has no
        curve to draw (classification)."""
        return None

    def with_task_info(self, x: Tensor, task_info: Tensor) -> Tensor:
        """Inputs with the task parameters appended (for oracles)."""
        raise NotImplementedError(f"{type(self).__name__} has no task parameters for an oracle")
