"""Meta-SGD (Li et al. 2017): MAML that also meta-learns one step size per parameter entry."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.algorithms.maml import MAML
from maml_bench.core.functional import StepSizes
from maml_bench.tasks.base import SupervisedBenchmark


class MetaSGD(MAML):
    """MAML with a meta-learned step size for every parameter entry (Li et al. 2017)."""

    #: its learned step sizes absorb any scale of the inner loss, and its paper has no clipping
    #: of a scaled query loss: the reference code's loss_convention is MAML's, not its own
    follows_loss_convention = False

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        # The step sizes must exist before MAML builds the optimizer over meta_parameters().
        self.alpha = nn.ParameterDict()
        model = benchmark.make_model()
        for name, p in model.named_parameters():
            key = name.replace(".", "__")
            self.alpha[key] = nn.Parameter(torch.full_like(p, config.metasgd_init_lr))
        super().__init__(benchmark, config, seed)

    def meta_parameters(self) -> list[Tensor]:
        return [*self.theta.values(), *self.alpha.values()]

    def step_sizes(self) -> StepSizes:
        return {name: self.alpha[name.replace(".", "__")] for name in self.theta}

    eval_step_sizes = step_sizes

    def adapted(self) -> None:
        """Every parameter, each with its own step size (Li et al. 2017), whatever adapt_norm."""
        return None

    def modules(self) -> dict[str, Any]:
        return {**super().modules(), "alpha": self.alpha}
