"""The pre-trained baselines of few-shot classification (Ravi & Larochelle 2017, as cited in the
MAML paper's Table 1): one network trained on all training classes at once, then at meta-test

* fine-tuning: a new N-way head (zeros) and the whole network fine-tuned on the support set
  with plain gradient steps, the step size tuned on validation episodes;
* nearest neighbour: each query labelled by its nearest support example (cosine) in the
  network's feature space; no steps, so its curve is flat.

That is the suite's protocol (batch statistics always, as MAML's network). `baseline_protocol=
ravi` runs them as Ravi & Larochelle's code did (running batch-norm statistics, SGD with a
decay, a random head: algorithms/ravi_baselines.py).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maml_bench.algorithms.base import (
    Algorithm,
    adam,
    flat_curves,
    seeded_model,
    tuned_finetune,
)
from maml_bench.algorithms.ravi_baselines import (
    nearest_labels,
    nearest_neighbour,
    new_head,
    torch7_batch_norm_init,
    tuned_sgd,
)
from maml_bench.core.functional import BatchedForward, SupervisedBatch, make_batched_forward
from maml_bench.errors import UserError
from maml_bench.models.conv import keep_running_statistics
from maml_bench.tasks.base import SupervisedBenchmark

#: what pre-training with its own batch (pretrain_batch > 0) reads: the data, the network, the
#: optimizer and its length; beside these only the run's seed
PRETRAINING_SETTINGS = frozenset({
    "dataset", "split", "rotations", "preprocessing", "network", "filters", "bn_scale", "bn_eps",
    "init", "padding", "baseline_protocol", "pretrain_batch", "iterations", "meta_lr",
    "ways"})  # ways: the N-way head is drawn before init=reference redraws the trunk


class FineTuning(Algorithm):
    """Pre-train on all training classes, fine-tune on each episode's support set."""

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        if not hasattr(benchmark, "classification_batch"):
            raise UserError(f"{type(self).__name__} needs a classification benchmark")
        self.model = seeded_model(benchmark, seed)  # the N-way network of the episodes
        # The same trunk with one output per training class for pre-training.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.model.classifier = nn.Linear(self.model.classifier.in_features,
                                              benchmark.n_train_classes).to(self.device)
        if self.ravi:
            keep_running_statistics(self.model)
            torch7_batch_norm_init(self.model, seed + 4)
        self.optimizer = adam(list(self.model.parameters()), config.meta_lr)
        c = config
        # By default the images MAML sees per meta-iteration, as plain labelled examples.
        self.batch_size = c.pretrain_batch or c.meta_batch * c.ways * (c.train_shots
                                                                       + c.train_query)

    def _with_new_head(self, seed: int) -> nn.Module:
        """A copy of the pre-trained network with a new random N-way head."""
        net = copy.deepcopy(self.model)
        net.classifier = new_head(net.classifier.in_features, self.config.ways, seed,
                                  self.device)
        return net

    @classmethod
    def training_settings(cls, config: Any) -> frozenset[str] | None:
        """With its own pre-training batch the pre-training draws plain labelled images: it
        reads neither the episodes' shape (ways, shots, queries, meta-batch) nor MAML's inner
        loop, so 1-shot and 5-shot experiments train the same network (tested)."""
        if not getattr(config, "pretrain_batch", 0):
            return None
        return PRETRAINING_SETTINGS

    @property
    def ravi(self) -> bool:
        """Ravi & Larochelle's protocol (baseline_protocol=ravi: algorithms/ravi_baselines.py)."""
        return getattr(self.config, "baseline_protocol", "suite") == "ravi"

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def train_step(self, iteration: int) -> Tensor:
        x, y = self.benchmark.classification_batch(self.gen, self.batch_size)
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def episode_theta(self) -> dict[str, Tensor]:
        """The pre-trained trunk with a zero N-way head: uniform predictions before any step."""
        theta = {k: v.detach() for k, v in self.model.named_parameters()
                 if not k.startswith("classifier.")}
        width = self.model.classifier.in_features
        theta["classifier.weight"] = torch.zeros(self.config.ways, width, device=self.device)
        theta["classifier.bias"] = torch.zeros(self.config.ways, device=self.device)
        return theta

    def episode_forward(self) -> BatchedForward:
        return make_batched_forward(self.benchmark.make_model())

    def evaluate(self) -> dict[int, Tensor]:
        if self.ravi:
            search, test_net = (self._with_new_head(self.seed + i) for i in (2, 3))
            return tuned_sgd(search, test_net, self.benchmark, self.config, self.info,
                             type(self).__name__)
        return tuned_finetune(self.benchmark, self.episode_forward(), self.episode_theta(),
                              self.config, self.info)

    def fine_tuner(self, shots: int) -> tuple[BatchedForward, dict[str, Tensor], float] | None:
        if self.ravi:
            return None  # SGD with a decay, in training mode: not a plain functional step
        tuned = self.info.get("tuned_finetune_lr", {})  # set by evaluate
        if str(shots) not in tuned:
            return None
        return self.episode_forward(), self.episode_theta(), tuned[str(shots)]


class NearestNeighbour(FineTuning):
    """Pre-train as FineTuning; label each query by its nearest support example (cosine)."""

    adapts_weights_at_test = False
    trains_as = "finetune"  # the same pre-training

    def evaluate(self) -> dict[int, Tensor]:
        if self.ravi:
            net = self._network()
            return flat_curves(self.benchmark, "test",
                               lambda part: F.one_hot(nearest_labels(net, part),
                                                      self.config.ways).float(),
                               self.config.eval_steps, self.config.eval_chunk)
        model = self.benchmark.make_model()
        if not hasattr(model, "batched_features"):
            raise UserError("nearest-neighbour needs a network with a feature extractor "
                            "(--set network=conv)")
        theta = self.episode_theta()

        def scores(batch: SupervisedBatch) -> Tensor:
            n = batch.n_tasks
            params = {name: v.unsqueeze(0).expand(n, *v.shape) for name, v in theta.items()}
            support = F.normalize(model.batched_features(params, batch.x_support), dim=-1)
            query = F.normalize(model.batched_features(params, batch.x_query), dim=-1)
            nearest = (query @ support.transpose(1, 2)).argmax(-1)  # [T, Nq]
            # The nearest support example's label, as one-hot scores for the metric.
            return F.one_hot(batch.y_support.gather(1, nearest), self.config.ways).float()

        # No gradient steps: the same accuracy after every number of steps.
        return flat_curves(self.benchmark, "test", scores, self.config.eval_steps,
                           self.config.eval_chunk)

    def fine_tuner(self, shots: int) -> None:
        return None  # nothing is fine-tuned

    def validation_score(self) -> float | None:
        """baseline_protocol=ravi: nearest-neighbour accuracy on the validation episodes, as
        Ravi & Larochelle's pre-training printed it; else none (nothing is fine-tuned)."""
        if not self.ravi:
            return None
        scores = [nearest_neighbour(self._network(), batch, self.config.eval_chunk).mean().item()
                  for batch in self.benchmark.eval_sets("val").values()]
        return sum(scores) / len(scores)

    def _network(self) -> nn.Module:
        if not hasattr(self.model, "embedding"):
            raise UserError("nearest-neighbour needs a network with a feature extractor "
                            "(--set network=conv)")
        return self.model
