"""The meta-learner LSTM of Ravi & Larochelle (2017), "Optimization as a model for few-shot
learning" (ICLR 2017).

An LSTM, shared across the learner's parameter coordinates, is the learner's optimizer: its cell
state *is* the learner's parameter vector. Per coordinate, two layers:

1. an ordinary LSTM (hidden `metalstm_hidden`, paper 20) over the preprocessed gradient and loss
   (Andrychowicz et al. 2016, p = 10), and
2. the "meta-learner LSTM" cell: c_t = f_t * c_{t-1} - i_t * grad_t with
   i_t = sigmoid(W_I [h_t, c_{t-1}, i_{t-1}] + b_I), f_t = sigmoid(W_F [h_t, c_{t-1}, f_{t-1}] +
   b_F), c_0 the learned initial learner parameters. f ~ 1, i small at init (their code's biases)
   makes it start as gradient descent with a small step size.

Meta-training (their Algorithm 1): per episode, T updates of the learner on its support set, then
the query loss of c_T is backpropagated into the meta-learner and c_0. As in the paper, the
gradient and loss fed to the LSTM are constants (second derivatives through them dropped "to
simplify"); the path through c_t is differentiated.

Deviations from the paper (see also the settings `metalstm_*` of `FewShotConfig`):

* Batch norm: the paper (section 3.4) uses batch statistics for support and query sets in
  meta-training, and at meta-test running averages collected on each episode's support set
  (reset per episode) for its query set. Here the benchmark's Conv4 always uses the current
  batch's statistics (transductive, as the MAML runs), so every method meets the same convention.
* Every update sees the whole support set (the paper's batch sizes equal the support set size for
  5-way MiniImagenet), and a meta-batch of `meta_batch` episodes is averaged per Adam step (their
  code: one episode per step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.algorithms.base import Algorithm, adam, seeded_model
from maml_bench.core.chunking import PassSizes, summed_meta_gradient
from maml_bench.core.functional import (
    BatchedForward,
    SupervisedBatch,
    TaskLoss,
    make_batched_forward,
)
from maml_bench.tasks.base import SupervisedBenchmark

#: (gradient [T, P], loss [T]) fed to the meta-learner at one update
LearnerInputs = tuple[Tensor, Tensor]


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al. (2016): (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x).

    Gradients and losses span many orders of magnitude; this gives the LSTM inputs of order one.
    Shape [...] -> [..., 2]."""
    big = x.abs() >= math.exp(-p)
    # clamp: log(0) would be -inf in the branch torch.where discards
    magnitude = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(x))
    sign = torch.where(big, x.sign(), math.exp(p) * x)
    return torch.stack([magnitude, sign], dim=-1)


class ParamLayout:
    """The learner's named parameters as one flat vector per task (the meta-learner's cell
    state) and back."""

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        self.names = list(params)
        self.shapes = [tuple(p.shape) for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, params: Mapping[str, Tensor]) -> Tensor:
        """{name: [*shape]} -> [P] (differentiable)."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, c: Tensor) -> dict[str, Tensor]:
        """[T, P] -> {name: [T, *shape]} (differentiable), for a batched forward."""
        parts = c.split(self.sizes, dim=1)
        return {n: part.reshape(c.shape[0], *shape)
                for n, shape, part in zip(self.names, self.shapes, parts, strict=True)}


@dataclass
class MetaState:
    """The two layers' states for T tasks of P coordinates each."""

    h: Tensor  # [T * P, H] first layer output
    s: Tensor  # [T * P, H] first layer cell
    f: Tensor  # [T, P] previous forget gate
    i: Tensor  # [T, P] previous input gate
    c: Tensor  # [T, P] learner parameters


class MetaLearnerLSTM(nn.Module):
    """The two-layer coordinate-wise meta-learner; all weights are shared across coordinates.

    W_I [h, c, i] + b_I and W_F [h, c, f] + b_F are stored split by input: `from_hidden` holds
    the h columns of both gates (and b_I, b_F as its bias), `from_param` and `from_gate` the c
    and previous-gate columns. That is the same map, without concatenating [T * P, H + 2]."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, hidden)  # (preprocessed gradient, preprocessed loss)
        self.from_hidden = nn.Linear(hidden, 2)  # row 0: input gate, row 1: forget gate
        self.from_param = nn.Parameter(torch.empty(2))
        self.from_gate = nn.Parameter(torch.empty(2))
        # Their code: gate weights U(-0.01, 0.01); forget bias U(4, 6) and input bias U(-5, -4),
        # so f ~ 1 and i ~ 0.01: the meta-learner starts as gradient descent with a small step.
        for w in (self.from_hidden.weight, self.from_param, self.from_gate):
            nn.init.uniform_(w, -0.01, 0.01)
        with torch.no_grad():
            self.from_hidden.bias[0].uniform_(-5.0, -4.0)
            self.from_hidden.bias[1].uniform_(4.0, 6.0)

    def start(self, c0: Tensor) -> MetaState:
        """State before the first update: learner parameters c0 [T, P], zero LSTM state and
        zero previous gates (as their code)."""
        t, p = c0.shape
        zeros = c0.new_zeros(t * p, self.lstm.hidden_size)
        return MetaState(zeros, zeros, c0.new_zeros(t, p), c0.new_zeros(t, p), c0)

    def forward(self, grad: Tensor, loss: Tensor, state: MetaState) -> MetaState:
        """One update from the learner's gradient [T, P] and loss [T] (treated as constants)."""
        t, p = grad.shape
        grad, loss = grad.detach(), loss.detach()
        x = torch.cat([preprocess(grad), preprocess(loss).unsqueeze(1).expand(t, p, 2)], dim=-1)
        h, s = self.lstm(x.reshape(t * p, 4), (state.h, state.s))
        pre = self.from_hidden(h).view(t, p, 2)
        i = torch.sigmoid(pre[..., 0] + self.from_param[0] * state.c
                          + self.from_gate[0] * state.i)
        f = torch.sigmoid(pre[..., 1] + self.from_param[1] * state.c
                          + self.from_gate[1] * state.f)
        return MetaState(h, s, f, i, f * state.c - i * grad)


def learner_inputs(forward: BatchedForward, layout: ParamLayout, c: Tensor, x: Tensor,
                   y: Tensor, loss_fn: TaskLoss) -> LearnerInputs:
    """The learner's gradient [T, P] and loss [T] at parameters c [T, P] on (x, y), as constants
    (computed on a detached copy, also under no_grad)."""
    theta = c.detach().requires_grad_()
    with torch.enable_grad():
        losses = loss_fn(forward(layout.unflatten(theta), x), y)
        # Summed over tasks: d(sum)/d(theta[t]) is exactly task t's gradient.
        (grad,) = torch.autograd.grad(losses.sum(), theta)
    return grad, losses.detach()


def unroll(
    meta: MetaLearnerLSTM,
    forward: BatchedForward,
    layout: ParamLayout,
    c0: Tensor,
    x: Tensor,
    y: Tensor,
    loss_fn: TaskLoss,
    steps: int,
    replay: Sequence[LearnerInputs] | None = None,
) -> tuple[list[Tensor], list[LearnerInputs]]:
    """Learner parameters [T, P] after 0..steps meta-learner updates on the support sets (x, y)
    of T tasks from c0 [T, P], and the (gradient, loss) fed at each update.

    `replay` feeds recorded inputs instead of computing them: the query loss is then a smooth
    function of the meta-parameters whose exact derivative is the meta-gradient (tests)."""
    state = meta.start(c0)
    params, fed = [c0], []
    for step in range(steps):
        inputs = replay[step] if replay is not None else learner_inputs(
            forward, layout, state.c, x, y, loss_fn)
        state = meta(*inputs, state)
        params.append(state.c)
        fed.append(inputs)
    return params, fed


class MetaLSTM(Algorithm):
    """The meta-learner LSTM (Ravi & Larochelle 2017) with the benchmark's model as learner."""

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.model = seeded_model(benchmark, seed)
        self.forward = make_batched_forward(self.model)
        self._pass_sizes = PassSizes()  # task_chunk resolved, by batch shape
        self.theta = dict(self.model.named_parameters())  # c_0, learned
        self.layout = ParamLayout(self.theta)
        with torch.random.fork_rng(devices=[]):  # seeded alone, independent of global RNG state
            torch.manual_seed(seed)
            self.meta = MetaLearnerLSTM(config.metalstm_hidden).to(self.device)
        self.optimizer = adam(self.meta_parameters(), config.meta_lr)
        self.info["train_updates"] = self.train_updates

    @property
    def train_updates(self) -> int:
        return self.config.metalstm_steps or self.config.eval_steps

    def meta_parameters(self) -> list[Tensor]:
        return [*self.theta.values(), *self.meta.parameters()]

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "metalearner": self.meta, "optimizer": self.optimizer}

    def adapt(self, batch: SupervisedBatch, steps: int) -> list[Tensor]:
        """Learner parameters [T, P] of every task after 0..steps updates on its support set."""
        c0 = self.layout.flatten(self.theta).unsqueeze(0).expand(batch.n_tasks, -1)
        params, _ = unroll(self.meta, self.forward, self.layout, c0, batch.x_support,
                           batch.y_support, self.benchmark.loss, steps)
        return params

    def query_losses(self, batch: SupervisedBatch) -> Tensor:
        """Per-task query loss [T] of the learner after `train_updates` updates."""
        final = self.adapt(batch, self.train_updates)[-1]
        return self.benchmark.loss(self.forward(self.layout.unflatten(final), batch.x_query),
                                   batch.y_query)

    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        batch = self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots, c.train_query)
        params = self.meta_parameters()
        chunk = self.info["tasks_per_pass"] = self._pass_sizes(c.task_chunk, self.model, batch)
        total, grads = summed_meta_gradient(self.query_losses, batch, params, chunk)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        if c.grad_clip > 0:
            for p in params:
                p.grad.clamp_(-c.grad_clip, c.grad_clip)
        if c.metalstm_clip_norm > 0:
            nn.utils.clip_grad_norm_(params, c.metalstm_clip_norm)
        self.optimizer.step()
        return total

    def curves(self, sets: Mapping[int, SupervisedBatch]) -> dict[int, Tensor]:
        """Query metric [tasks, eval_steps + 1] per K after 0..eval_steps meta-learner updates,
        `eval_chunk` tasks at a time."""
        c = self.config
        out = {}
        with torch.no_grad():  # the learner's gradients enable grad locally (learner_inputs)
            for k, batch in sets.items():
                rows = []
                for part in batch.chunks(c.eval_chunk):
                    params = self.adapt(part, c.eval_steps)
                    rows.append(torch.stack([
                        self.benchmark.metric(self.forward(self.layout.unflatten(p),
                                                           part.x_query), part.y_query)
                        for p in params], dim=1))
                out[k] = torch.cat(rows)
        return out

    def evaluate(self) -> dict[int, Tensor]:
        return self.curves(self.benchmark.eval_sets("test"))

    def validation_score(self) -> float | None:
        """Mean validation metric after eval_steps meta-learner updates (no fine_tuner: its
        updates are not plain gradient steps, so the base class's version does not apply)."""
        scores = [curve[:, -1].mean().item()
                  for curve in self.curves(self.benchmark.eval_sets("val")).values()]
        return sum(scores) / len(scores)
