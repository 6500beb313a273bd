"""Ravi & Larochelle's (2017) baselines at meta-test, as their code ran them
(twitter/meta-learning-lstm: model/baselines/pre-trained-SGD.lua and the nearest-neighbour
test), the protocol behind the fine-tuning and nearest-neighbour rows the MAML paper cites
(`baseline_protocol=ravi`; the pre-training is FineTuning's, with running batch-norm statistics):

* fine-tuning: one random N-way head, drawn once and the same for every episode and setting, on
  the pre-trained trunk; per episode the whole network takes `steps` plain SGD steps on its full
  support set, step t of lr / (1 + t decay) (Torch's optim.sgd), in training mode (each step's
  batch statistics, which also move the running ones); queries are scored in evaluation mode.
  (lr, decay) is the pair with the best mean accuracy after the last step on the validation
  episodes, per K.
* nearest neighbour: each query labelled by its most cosine-similar support image in the
  trunk's flattened last-block features, in evaluation mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_bench.core.functional import SupervisedBatch
from maml_bench.progress import IterationProgress, terminal
from maml_bench.tasks.base import SupervisedBenchmark


def torch7_batch_norm_init(net: nn.Module, seed: int) -> None:
    """Torch7's BatchNormalization:reset(), which Ravi & Larochelle's network had: the scale
    uniform in [0, 1] (PyTorch's starts at 1), the offset 0; drawn from `seed` alone. Torch7's
    convolutions and linear layers start as PyTorch's do (uniform in +-1/sqrt(fan in))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen))
                module.bias.zero_()


def new_head(in_features: int, ways: int, seed: int, device: torch.device) -> nn.Linear:
    """A linear N-way head with the default initialisation of Torch's nn.Linear (and
    PyTorch's): weight and bias uniform in +-1/sqrt(in_features), drawn from `seed` alone."""
    head = nn.Linear(in_features, ways)
    bound = 1.0 / math.sqrt(in_features)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
    return head.to(device)


def _accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    """Query accuracy in evaluation mode; NaN where a logit is not finite (diverged)."""
    net.eval()
    with torch.no_grad():
        logits = net(x)
        acc = ((logits.argmax(-1) == y).double().mean().item() * 100.0
               if torch.isfinite(logits).all() else math.nan)
    net.train()
    return acc


def sgd_steps(net: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float, decay: float,
              after_step: Callable[[int], None] = lambda t: None) -> bool:
    """Torch's optim.sgd without momentum on the mean cross-entropy of (x, y), in `net`'s
    current mode: step t (from 0) of lr / (1 + t decay). False, and no further steps, once the
    loss or a parameter is not finite (`after_step` is not called for that step)."""
    params = list(net.parameters())
    for t in range(steps):
        with torch.enable_grad():  # meta-test may run under no_grad
            loss = F.cross_entropy(net(x), y)
            if not torch.isfinite(loss):
                return False
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=lr / (1.0 + t * decay))
            if not all(torch.isfinite(p).all() for p in params):
                return False
        after_step(t)
    return True


def finetune_episode(base: nn.Module, batch: SupervisedBatch, task: int, steps: int, lr: float,
                     decay: float, every_step: bool) -> list[float]:
    """Query accuracies of episode `task` after 0..steps SGD steps (every_step), else after the
    last one only. Once the support loss is not finite, the remaining accuracies are NaN: a
    diverged episode is counted as such, never as a chance-level score."""
    net = copy.deepcopy(base).train()
    xq, yq = batch.x_query[task], batch.y_query[task]
    out = [_accuracy(net, xq, yq)] if every_step else []

    def measure(t: int) -> None:
        if every_step or t == steps - 1:
            out.append(_accuracy(net, xq, yq))

    if not sgd_steps(net, batch.x_support[task], batch.y_support[task], steps, lr, decay,
                     measure):
        out += [math.nan] * ((steps + 1 if every_step else 1) - len(out))
    return out


def finetune_curves(base: nn.Module, batch: SupervisedBatch, steps: int, lr: float, decay: float,
                    every_step: bool, tick: Callable[[], None] = lambda: None) -> Tensor:
    """[tasks, steps + 1] accuracies (every_step), else [tasks, 1] after the last step; `tick`
    after each episode."""
    rows = []
    for task in range(batch.n_tasks):
        rows.append(finetune_episode(base, batch, task, steps, lr, decay, every_step))
        tick()
    return torch.tensor(rows, dtype=torch.float64)


def tuned_sgd(search: nn.Module, test_net: nn.Module, benchmark: SupervisedBenchmark,
              config: Any, info: dict[str, Any], name: str) -> dict[int, Tensor]:
    """Choose (lr, decay) per K on the validation episodes, fine-tuning `search`, then the test
    curves, fine-tuning `test_net` (their code draws a new head for each: `bestSGD`)."""
    val, test = benchmark.eval_sets("val"), benchmark.eval_sets("test")
    grid = [(lr, d) for lr in config.finetune_lrs for d in config.finetune_lr_decays]
    total = (sum(b.n_tasks for b in val.values()) * len(grid)
             + sum(b.n_tasks for b in test.values()))
    progress = IterationProgress(f"{name}: fine-tuning episodes", total, 0,
                                 "bar" if terminal() else "lines", unit="episode")
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        progress.update(done)

    chosen: dict[str, dict[str, float]] = {}
    out = {}
    for k, batch in val.items():
        scores = {}
        for lr, decay in grid:
            final = finetune_curves(search, batch, config.eval_steps, lr, decay, False, tick)
            mean = final.mean().item()
            scores[(lr, decay)] = -math.inf if math.isnan(mean) else mean  # diverged: never
        lr, decay = max(grid, key=scores.__getitem__)  # the first of equals, as the grid's order
        chosen[str(k)] = {"lr": lr, "decay": decay, "val_accuracy": scores[(lr, decay)]}
    for k, batch in test.items():
        best = chosen[str(k)]
        out[k] = finetune_curves(test_net, batch, config.eval_steps, best["lr"], best["decay"],
                                 True, tick)
    progress.close(finished=False)
    info["ravi_finetune"] = chosen
    return out


def _embed(net: nn.Module, x: Tensor) -> Tensor:
    """[T, n, C, H, W] -> [T, n, features], unit length."""
    return F.normalize(net.embedding(x.flatten(0, 1)), dim=-1).view(*x.shape[:2], -1)


def nearest_labels(net: nn.Module, part: SupervisedBatch) -> Tensor:
    """[tasks, queries]: each query's label by 1-nearest-neighbour (cosine) in the space of
    `net.embedding` (the features its head sees), the network in evaluation mode."""
    net.eval()
    with torch.no_grad():
        support, query = _embed(net, part.x_support), _embed(net, part.x_query)
        nearest = (query @ support.transpose(1, 2)).argmax(-1)
    net.train()
    return part.y_support.gather(1, nearest)


def nearest_neighbour(net: nn.Module, batch: SupervisedBatch, chunk: int) -> Tensor:
    """[tasks] accuracy of `nearest_labels`, `chunk` episodes at a time."""
    return torch.cat([(nearest_labels(net, part) == part.y_query).double().mean(-1) * 100.0
                      for part in batch.chunks(chunk)])
