"""Non-meta baselines trained by plain regression/classification on all tasks.

* pretrain: one network trained on all training tasks, then fine-tuned at meta-test with K
  examples and a step size tuned on validation tasks (paper 5.1 "pretrained").
* oracle: the same network given the task parameters (amplitude, phase) as extra inputs; it
  needs no adaptation, so its curve is flat.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from maml_bench.algorithms.base import Algorithm, adam, seeded_model, tuned_finetune
from maml_bench.core.functional import BatchedForward, expand_params, make_batched_forward
from maml_bench.tasks.base import SupervisedBenchmark


class Pretrain(Algorithm):
    """One network trained on all tasks, fine-tuned at meta-test with a tuned step size."""

    extra_inputs = 0

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.model = seeded_model(benchmark, seed, self.extra_inputs)
        self.forward = make_batched_forward(self.model)
        self.theta = dict(self.model.named_parameters())
        self.optimizer = adam(list(self.model.parameters()), config.meta_lr)

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def inputs(self, x: Tensor, batch: Any) -> Tensor:
        return x

    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        batch = self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots, c.train_query)
        # Same tasks and data budget per iteration as MAML, used as plain training data.
        x = torch.cat([batch.x_support, batch.x_query], dim=1)
        y = torch.cat([batch.y_support, batch.y_query], dim=1)
        params = expand_params(self.theta, batch.n_tasks)
        loss = self.benchmark.loss(self.forward(params, self.inputs(x, batch)), y).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def evaluate(self) -> dict[int, Tensor]:
        return tuned_finetune(self.benchmark, self.forward, self.theta, self.config, self.info)

    def fine_tuner(self, shots: int) -> tuple[BatchedForward, dict[str, Tensor], float] | None:
        tuned = self.info.get("tuned_finetune_lr", {})  # set by evaluate
        if str(shots) not in tuned:
            return None
        return self.forward, self.theta, tuned[str(shots)]


class Oracle(Pretrain):
    """Trained on all tasks with the task parameters as extra inputs; no adaptation needed."""

    extra_inputs = 2

    def inputs(self, x: Tensor, batch: Any) -> Tensor:
        return self.benchmark.with_task_info(x, batch.task_info)

    def fine_tuner(self, shots: int) -> None:
        return None  # its inputs carry the task parameters: nothing is fine-tuned

    def evaluate(self) -> dict[int, Tensor]:
        out = {}
        with torch.no_grad():
            for k, batch in self.benchmark.eval_sets("test").items():
                params = expand_params(self.theta, batch.n_tasks)
                pred = self.forward(params, self.inputs(batch.x_query, batch))
                metric = self.benchmark.metric(pred, batch.y_query)
                # No gradient steps: the same error after every number of steps.
                out[k] = metric.unsqueeze(1).expand(-1, self.config.eval_steps + 1)
        return out
