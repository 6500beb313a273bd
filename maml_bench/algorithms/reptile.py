"""Reptile (Nichol et al. 2018): move theta towards the weights an optimizer reaches on each task.

Two forms share one class. The default (the sinusoid experiments): every task of the meta-batch
adapted at once with SGD on its whole support set, theta - mean(adapted) fed to Adam, and MAML's
fine-tuning at meta-test. Their code's protocol (openai/supervised-reptile; the few-shot
experiments pass it through the method's overrides): an inner Adam with beta1 = 0 on minibatches
of the task's examples, its moments carried from task to task, theta interpolated towards the
mean adapted weights with an annealed step, and the same inner Adam at meta-test on minibatches
of the support set, every query predicted at once (transductive batch norm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from maml_bench.algorithms.maml import MAML
from maml_bench.core.functional import (
    BatchedForward,
    StepSizes,
    SupervisedBatch,
    expand_params,
    inner_adapt,
    make_batched_forward,
)
from maml_bench.tasks.base import SupervisedBenchmark

Params = dict[str, Tensor]
TF_ADAM_EPSILON = 1e-8  # tf.train.AdamOptimizer's default, as in their code


@dataclass
class AdamState:
    """The inner Adam's moments, each [T, *param] (T = 1 for the state carried over tasks), and
    its step count (TF's beta power accumulators)."""

    step: int
    m: Params
    v: Params

    def expand(self, n_tasks: int) -> AdamState:
        """A copy for each of n_tasks tasks that start from this state (meta-test)."""
        return AdamState(self.step, *({k: t.expand(n_tasks, *t.shape[1:]) for k, t in d.items()}
                                      for d in (self.m, self.v)))


class InnerOptimizer:
    """SGD or Adam (TF's update) over parameter dicts with a leading task dimension."""

    def __init__(self, kind: str, lr: float, betas: tuple[float, ...]) -> None:
        self.kind, self.lr, self.betas = kind, lr, betas

    def initial_state(self, theta: Mapping[str, Tensor]) -> AdamState | None:
        if self.kind == "sgd":
            return None
        zeros = {k: torch.zeros_like(p.detach()).unsqueeze(0) for k, p in theta.items()}
        return AdamState(0, zeros, {k: z.clone() for k, z in zeros.items()})

    def step(self, params: Params, grads: Params, state: AdamState | None
             ) -> tuple[Params, AdamState | None]:
        if state is None:
            return {k: p - self.lr * grads[k] for k, p in params.items()}, None
        b1, b2 = self.betas
        t = state.step + 1
        m = {k: b1 * state.m[k] + (1 - b1) * g for k, g in grads.items()}
        v = {k: b2 * state.v[k] + (1 - b2) * g * g for k, g in grads.items()}
        # TF: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), epsilon added to the uncorrected sqrt(v)
        lr_t = self.lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        new = {k: p - lr_t * m[k] / (v[k].sqrt() + TF_ADAM_EPSILON) for k, p in params.items()}
        return new, AdamState(t, m, v)


def minibatch_order(n_tasks: int, size: int, batch: int, steps: int, gen: torch.Generator
                    ) -> Tensor:
    """Example indices [n_tasks, steps, batch] of each step's minibatch: passes over the task's
    `size` examples, each reshuffled, cut into batches that may straddle two passes (their
    `_mini_batches` without replacement); batch 0: every example at every step."""
    if batch == 0:
        return torch.arange(size).expand(n_tasks, steps, size)
    passes = math.ceil(steps * batch / size)
    order = torch.rand(n_tasks, passes, size, generator=gen).argsort(-1).flatten(1)
    return order[:, :steps * batch].reshape(n_tasks, steps, batch)


def take(x: Tensor, index: Tensor) -> Tensor:
    """Per task t the examples x[t, index[t]]: [T, N, ...], [T, B] -> [T, B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), index.to(x.device)]


class Reptile(MAML):
    """Reptile (Nichol et al. 2018): theta moves towards the mean of the weights that
    `reptile_inner_steps` steps of the inner optimizer reach on each task (see the module)."""

    data_parallel = False  # its own train_step, without the all-reduce of MAML's
    # It never differentiates through an inner loop: its backend is gated (and chosen) for
    # first-order use. As second order, the gate checked fused second derivatives it never
    # uses, a long wait at MiniImagenet's 84 x 84 before the first iteration (docs/speed.md).
    meta_trains_in_passes = False  # one task at a time, task_chunk unread
    first_order = True
    needs_forward = True  # its inner optimizer steps through `self.forward`

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        if self.forward is None:  # loop and higher differentiate per task; Reptile needs a forward
            self.backend_info["inner_forward"] = "batched"
            self.info.update(self.backend_info)
        c = config
        self.inner = InnerOptimizer(c.reptile_inner_optimizer, c.inner_lr, c.reptile_adam_betas)
        self.inner_state = self.inner.initial_state(self.theta)

    # --- which form ---
    @property
    def tasks_at_once(self) -> bool:
        """Stateless SGD on whole task sets: every task of a meta-batch adapted at once (the
        sinusoid form); else one task after another, carrying the inner optimizer's state."""
        c = self.config
        return c.reptile_inner_optimizer == "sgd" and c.reptile_inner_batch == 0

    @property
    def maml_fine_tuning(self) -> bool:
        """SGD on the whole support set's mean loss is MAML's fine-tuning (also for fits)."""
        c = self.config
        return (c.reptile_inner_optimizer == "sgd" and c.reptile_eval_batch == 0
                and c.reptile_inner_loss == "mean")

    # --- state: theta, the outer Adam and the inner optimizer's carried moments ---
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.inner_state is not None:
            s = self.inner_state
            state["inner_optimizer"] = {"step": s.step, "m": dict(s.m), "v": dict(s.v)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.inner_state is not None:
            s = state["inner_optimizer"]
            self.inner_state = AdamState(s["step"], *({k: t.to(self.device) for k, t in
                                                       s[d].items()} for d in ("m", "v")))

    # --- meta-training ---
    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        batch = self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots, c.train_query)
        forward = self.forward or make_batched_forward(self.model)
        theta = {k: v.detach() for k, v in self.theta.items()}
        if self.tasks_at_once:
            mean, query = self.adapt_all_at_once(forward, theta, batch)
        else:
            mean, query = self.adapt_one_by_one(forward, theta, batch)
        self.outer_update(theta, mean, iteration)
        return query

    def adapt_all_at_once(self, forward: BatchedForward, theta: Params, batch: SupervisedBatch
                          ) -> tuple[Params, Tensor]:
        """Mean adapted weights and mean query loss after SGD on each whole support set."""
        c = self.config
        params = {k: v.clone().requires_grad_() for k, v in expand_params(
            theta, batch.n_tasks).items()}
        with torch.enable_grad():
            adapted = inner_adapt(forward, params, batch.x_support, batch.y_support,
                                  self.benchmark.loss, c.reptile_inner_steps, c.inner_lr,
                                  first_order=True)
        with torch.no_grad():
            query = self.benchmark.loss(forward(adapted, batch.x_query), batch.y_query).mean()
            return {k: a.mean(0) for k, a in adapted.items()}, query

    def adapt_one_by_one(self, forward: BatchedForward, theta: Params, batch: SupervisedBatch
                         ) -> tuple[Params, Tensor]:
        """Mean adapted weights and mean query loss, the tasks in turn: each one's inner loop
        starts from theta and from the inner optimizer's state the previous one left."""
        c = self.config
        order = minibatch_order(batch.n_tasks, batch.x_support.shape[1], c.reptile_inner_batch,
                                c.reptile_inner_steps, self.gen)
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        query = torch.zeros((), device=self.device)
        for part, idx in zip(batch.chunks(1), order.split(1), strict=True):
            params = {k: v.unsqueeze(0) for k, v in theta.items()}
            params, self.inner_state = self.inner_loop(forward, params, part, idx,
                                                       self.inner_state)
            with torch.no_grad():
                query += self.benchmark.loss(forward(params, part.x_query), part.y_query).sum()
            for k, p in params.items():
                total[k] += p[0]
        return {k: t / batch.n_tasks for k, t in total.items()}, query / batch.n_tasks

    def inner_loop(self, forward: BatchedForward, params: Params, batch: SupervisedBatch,
                   order: Tensor, state: AdamState | None) -> tuple[Params, AdamState | None]:
        """One inner step per row of `order` [T, steps, B] on each task's support examples."""
        for step in range(order.shape[1]):
            params, state = self.inner_step(forward, params, batch, order[:, step], state)
        return params, state

    def inner_step(self, forward: BatchedForward, params: Params, batch: SupervisedBatch,
                   index: Tensor, state: AdamState | None) -> tuple[Params, AdamState | None]:
        x, y = take(batch.x_support, index), take(batch.y_support, index)
        params = {k: p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad():
            loss = self.benchmark.loss(forward(params, x), y)  # per-task means [T]
            if self.config.reptile_inner_loss == "sum":
                loss = loss * index.shape[1]
            grads = torch.autograd.grad(loss.sum(), list(params.values()))
        with torch.no_grad():
            return self.inner.step(params, dict(zip(params, grads, strict=True)), state)

    def outer_update(self, theta: Params, mean: Params, iteration: int) -> None:
        c = self.config
        if c.reptile_outer == "interpolate":
            done = iteration / self.iterations  # their linear annealing of the meta step
            eps = done * c.reptile_meta_step_final + (1 - done) * c.reptile_meta_step
            with torch.no_grad():
                for k, p in self.theta.items():
                    p.add_(mean[k] - theta[k], alpha=eps)
            return
        for k, p in self.theta.items():
            p.grad = theta[k] - mean[k]
        if c.grad_clip > 0:
            for p in self.theta.values():
                p.grad.clamp_(-c.grad_clip, c.grad_clip)
        self.optimizer.step()

    # --- meta-test ---
    def fine_tuner(self, shots: int) -> tuple[BatchedForward, dict[str, Tensor], StepSizes] | None:
        return super().fine_tuner(shots) if self.maml_fine_tuning else None

    def evaluate(self) -> dict[int, Tensor]:
        if self.maml_fine_tuning:
            return super().evaluate()
        return {k: self.fine_tune_curves(b) for k, b in self.benchmark.eval_sets("test").items()}

    def validation_score(self) -> float | None:
        if self.maml_fine_tuning:
            return super().validation_score()
        curves = [self.fine_tune_curves(b)[:, -1].mean().item()
                  for b in self.benchmark.eval_sets("val").values()]
        return sum(curves) / len(curves)

    def fine_tune_curves(self, batch: SupervisedBatch) -> Tensor:
        """Query metric [tasks, eval_steps + 1] after 0..eval_steps steps of the inner optimizer
        on minibatches of reptile_eval_batch support examples, every task from theta and from
        a copy of the carried inner state; all queries predicted at once (transductive)."""
        c = self.config
        forward = self.forward or make_batched_forward(self.model)
        # Minibatches from a generator of their own: evaluating leaves the task stream alone.
        order = minibatch_order(batch.n_tasks, batch.x_support.shape[1], c.reptile_eval_batch,
                                c.eval_steps, torch.Generator().manual_seed(self.seed))
        out = []
        for part, idx in zip(batch.chunks(c.eval_chunk), order.split(c.eval_chunk), strict=True):
            params = {k: v.clone() for k, v in expand_params(
                {k: v.detach() for k, v in self.theta.items()}, part.n_tasks).items()}
            state = None if self.inner_state is None else self.inner_state.expand(part.n_tasks)
            per_step = []
            for step in range(c.eval_steps + 1):
                with torch.no_grad():
                    per_step.append(self.benchmark.metric(forward(params, part.x_query),
                                                          part.y_query))
                if step < c.eval_steps:
                    params, state = self.inner_step(forward, params, part, idx[:, step], state)
            out.append(torch.stack(per_step, dim=1))
        return torch.cat(out)
