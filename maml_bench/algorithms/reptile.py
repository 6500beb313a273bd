"""Reptile (Nichol et al. 2018): move theta towards the weights SGD reaches on each task."""

from __future__ import annotations

import torch
from torch import Tensor

from maml_bench.algorithms.maml import MAML
from maml_bench.core.functional import expand_params, inner_adapt, make_batched_forward


class Reptile(MAML):
    """Reptile: move theta towards the weights SGD reaches on each task (Nichol et al. 2018).

    Outer 'gradient' theta - mean_i(theta'_i) after `reptile_inner_steps` SGD steps with
    step size inner_lr on each task's support set, fed to Adam (the Reptile paper's variant for
    batched tasks). Meta-test: plain fine-tuning with inner_lr, like MAML."""

    data_parallel = False  # its own train_step, without the all-reduce of MAML's

    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        batch = self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots, c.train_query)
        forward = self.forward or make_batched_forward(self.model)
        theta = {k: v.detach() for k, v in self.theta.items()}
        params = {k: v.clone().requires_grad_() for k, v in expand_params(
            theta, batch.n_tasks).items()}
        with torch.enable_grad():
            adapted = inner_adapt(forward, params, batch.x_support, batch.y_support,
                                  self.benchmark.loss, c.reptile_inner_steps, c.inner_lr,
                                  first_order=True)
        with torch.no_grad():
            query = self.benchmark.loss(forward(adapted, batch.x_query), batch.y_query).mean()
            for name, p in self.theta.items():
                p.grad = theta[name] - adapted[name].mean(0)
        if c.grad_clip > 0:
            for p in self.theta.values():
                p.grad.clamp_(-c.grad_clip, c.grad_clip)
        self.optimizer.step()
        return query
