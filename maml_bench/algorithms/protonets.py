"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot
Learning"), and the episodic metric learner they share with Matching Networks.

The benchmark's Conv4 trunk embeds every image; a class prototype is the mean embedding of its
support images, and a query's logits are its negative squared Euclidean distances to the
prototypes; cross-entropy on the queries, Adam. The paper's training details are settings:
more ways per training episode than at test (`protonet_train_ways`, 60 for Omniglot) and the
step size halved every 2,000 episodes (`protonet_lr_halving`). At meta-test there are no
gradient steps: the accuracy curve is flat.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from maml_bench.algorithms.base import Algorithm, adam, flat_curves, seeded_model
from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.tasks.base import SupervisedBenchmark
from maml_bench.tasks.fewshot.episodes import episodes


class MetricLearner(Algorithm):
    """An embedding trained on episodes: query scores computed from the embedded support set,
    cross-entropy on the queries, Adam. Nothing is fine-tuned at meta-test, so `evaluate` gives
    the same accuracy after every number of steps and there is no `fine_tuner`."""

    adapts_weights_at_test = False

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.model = seeded_model(benchmark, seed)
        if not hasattr(self.model, "batched_features"):
            raise UserError(f"{type(self).__name__} needs a network with a feature extractor "
                            "(--set network=conv)")
        # Only the trunk embeds; the classifier head stays unused (and untrained).
        self.trunk = {name: p for name, p in self.model.named_parameters()
                      if not name.startswith("classifier.")}
        self.optimizer = adam(list(self.trunk.values()), config.meta_lr)

    @property
    def embedding_size(self) -> int:
        return self.model.classifier.in_features

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def embed(self, batch: SupervisedBatch) -> tuple[Tensor, Tensor]:
        """Support [T, S, D] and query [T, Q, D] embeddings. One pass per episode, so batch norm
        uses the whole episode's statistics, alike in training and at test (transductive)."""
        t, s = batch.x_support.shape[:2]
        params = {name: p.unsqueeze(0).expand(t, *p.shape) for name, p in self.trunk.items()}
        h = self.model.batched_features(params, torch.cat([batch.x_support, batch.x_query], 1))
        return h[:, :s], h[:, s:]

    @abstractmethod
    def scores(self, support: Tensor, y_support: Tensor, query: Tensor, ways: int) -> Tensor:
        """Query logits [T, Q, ways] (any scores whose softmax is the predicted distribution)."""

    def episode_scores(self, batch: SupervisedBatch, ways: int) -> Tensor:
        support, query = self.embed(batch)
        return self.scores(support, batch.y_support, query, ways)

    def train_episodes(self) -> tuple[SupervisedBatch, int]:
        """This iteration's training episodes and their number of ways."""
        c = self.config
        return self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots,
                                          c.train_query), c.ways

    def train_step(self, iteration: int) -> Tensor:
        batch, ways = self.train_episodes()
        loss = self.benchmark.loss(self.episode_scores(batch, ways), batch.y_query).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.clamp_(-self.config.grad_clip, self.config.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def curves(self, split: str, steps: int) -> dict[int, Tensor]:
        return flat_curves(self.benchmark, split,
                           lambda batch: self.episode_scores(batch, self.config.ways),
                           steps, self.config.eval_chunk)

    def evaluate(self) -> dict[int, Tensor]:
        return self.curves("test", self.config.eval_steps)

    def validation_score(self) -> float:
        """Mean accuracy on the fixed validation episodes: the convergence curve."""
        scores = [curve[:, 0].mean().item() for curve in self.curves("val", 0).values()]
        return sum(scores) / len(scores)

    def fine_tuner(self, shots: int) -> None:
        return None  # nothing is fine-tuned at meta-test


def prototype_logits(support: Tensor, y_support: Tensor, query: Tensor, ways: int) -> Tensor:
    """Support [T, S, D] with labels [T, S] and query [T, Q, D] embeddings -> logits
    [T, Q, ways]: minus the squared Euclidean distance to each class's mean support embedding."""
    onehot = F.one_hot(y_support, ways).to(support.dtype)  # [T, S, N]
    prototypes = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)  # [T, N, D]
    # |q - p|^2 = |q|^2 - 2 q.p + |p|^2: no [T, Q, N, D] differences (60-way training episodes)
    squared = torch.baddbmm(query.pow(2).sum(-1, keepdim=True) + prototypes.pow(2).sum(-1)
                            .unsqueeze(1), query, prototypes.transpose(1, 2), alpha=-2.0)
    return -squared.clamp_min(0.0)  # rounding can leave a tiny negative distance


class ProtoNets(MetricLearner):
    """Prototypical Networks (Snell et al. 2017): nearest class mean in the learned embedding."""

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.train_ways = config.protonet_train_ways or config.ways  # >= ways: validate()
        classes = benchmark.pools["train"].shape[0]
        if self.train_ways > classes:
            raise UserError(f"protonet_train_ways={self.train_ways}: the training split has "
                            f"{classes} classes; lower it")
        self.info["train_ways"] = self.train_ways

    def scores(self, support: Tensor, y_support: Tensor, query: Tensor, ways: int) -> Tensor:
        return prototype_logits(support, y_support, query, ways)

    def train_episodes(self) -> tuple[SupervisedBatch, int]:
        c = self.config
        if self.train_ways == c.ways:
            return super().train_episodes()
        # Wider episodes from the same training classes, rotations and generator.
        bench = self.benchmark
        batch = episodes(bench.pools["train"], self.gen, c.meta_batch, self.train_ways,
                         c.train_shots, c.train_query, bench.rotate)
        return batch.to_device(self.device), self.train_ways

    def train_step(self, iteration: int) -> Tensor:
        # The step size follows from the iteration alone, so a resumed run gets the same one.
        halving = self.config.protonet_lr_halving
        lr = self.config.meta_lr * 0.5 ** (iteration // halving if halving else 0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return super().train_step(iteration)
