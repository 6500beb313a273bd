"""The paper's multi-task parameter-averaging baselines (App. C.1, Table 2).

Many regressors, each trained from its own random init on plenty of data of its own task, are
averaged into one parameter vector, which is then fine-tuned at meta-test with a tuned step
size. Variants: no regularisation; l2 weight decay; an l2 pull towards the mean of the
regressors trained so far. Regressors train side by side in chunks (one batched network per
chunk); "so far" means all earlier chunks, the first chunk has nothing to be pulled to.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from maml_bench.algorithms.base import Algorithm, adam, seeded_model, tuned_finetune
from maml_bench.core.functional import make_batched_forward
from maml_bench.tasks.base import SupervisedBenchmark


class MultiTaskAverage(Algorithm):
    """Average of many single-task regressors, fine-tuned with a tuned step size (no reg)."""

    regularizer = "none"
    checkpoint_interval = 1  # one chunk of regressors is a long step: checkpoint each

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.model = seeded_model(benchmark, seed)
        self.forward = make_batched_forward(self.model)
        names = [n for n, _ in self.model.named_parameters()]
        # Sum of finished regressors' parameters and their count: the running mean.
        self.param_sum = {n: torch.zeros_like(p) for n, p in self.model.named_parameters()}
        self.count = torch.zeros((), device=self.device)
        self.final_mse = torch.full((config.multitask_networks,), float("nan"),
                                    device=self.device)
        self._names = names

    @property
    def iterations(self) -> int:
        c = self.config
        return -(-c.multitask_networks // c.multitask_chunk)

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "count": self.count, "final_mse": self.final_mse,
                **{f"sum/{n}": t for n, t in self.param_sum.items()}}

    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        start = iteration * c.multitask_chunk
        n = min(c.multitask_chunk, c.multitask_networks - start)
        tasks = self.benchmark.sample_tasks(self.gen, n)
        # A fresh random init for every regressor.
        inits = [dict(seeded_model(self.benchmark, int(s)).named_parameters())
                 for s in torch.randint(0, 2**31 - 1, (n,), generator=self.gen)]
        params = {name: torch.stack([init[name].detach() for init in inits]).requires_grad_()
                  for name in self._names}
        mean = ({k: v / self.count for k, v in self.param_sum.items()}
                if self.count > 0 else None)
        opt = adam(list(params.values()), c.multitask_lr)
        for _ in range(c.multitask_steps):
            x, y = self.benchmark.sample_points(self.gen, tasks, c.multitask_points)
            # Summed over regressors so each one's gradient is its own.
            loss = self.benchmark.loss(self.forward(params, x), y).sum()
            reg = self.penalty(params, mean)
            opt.zero_grad(set_to_none=True)
            (loss + reg).backward()
            opt.step()
        with torch.no_grad():
            x, y = self.benchmark.sample_points(self.gen, tasks, 1000)
            mse = self.benchmark.loss(self.forward(params, x), y)
            self.final_mse[start : start + n] = mse
            for name, p in params.items():
                self.param_sum[name] += p.sum(0)
            self.count += n
        return mse.mean()

    def penalty(self, params: dict[str, Tensor], mean: dict[str, Tensor] | None) -> Tensor:
        return torch.zeros((), device=self.device)

    def tensors(self) -> list[Tensor]:
        return list(self.param_sum.values())  # final_mse starts as NaN on purpose (not yet run)

    def evaluate(self) -> dict[int, Tensor]:
        c = self.config
        reached = (self.final_mse < c.multitask_target_mse).float().mean().item()
        self.info["fraction_below_target_mse"] = reached
        self.info["median_final_mse"] = self.final_mse.median().item()
        theta = {k: v / self.count for k, v in self.param_sum.items()}
        return tuned_finetune(self.benchmark, self.forward, theta, c, self.info)


class MultiTaskL2(MultiTaskAverage):
    """Multi-task average whose regressors are trained with l2 weight decay."""

    regularizer = "l2"

    def penalty(self, params: dict[str, Tensor], mean: dict[str, Tensor] | None) -> Tensor:
        return self.config.multitask_l2 * sum(p.pow(2).sum() for p in params.values())


class MultiTaskMean(MultiTaskAverage):
    """Multi-task average whose regressors are pulled towards the mean of earlier ones."""

    regularizer = "mean"

    def penalty(self, params: dict[str, Tensor], mean: dict[str, Tensor] | None) -> Tensor:
        if mean is None:
            return torch.zeros((), device=self.device)
        return self.config.multitask_mean_pull * sum(
            (p - mean[n]).pow(2).sum() for n, p in params.items())
