"""The algorithm interface the runner drives, and helpers shared by algorithms."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.core.functional import (
    BatchedForward,
    StepSizes,
    SupervisedBatch,
    evaluate_adaptation,
)
from maml_bench.tasks.base import SupervisedBenchmark


class Algorithm(ABC):
    """A method: `iterations` calls of `train_step`, then `evaluate` on the fixed test tasks.

    Everything random comes from `self.gen` (task sampling) and the seeded model init, and all
    of it is in `state_dict`, so a resumed run continues with exactly the same numbers.
    """

    #: splits its meta-batch over torchrun's processes (`maml_bench.distributed`): train_step
    #: all-reduces its meta-gradient and evaluation goes through `evaluate_adaptation`
    data_parallel: bool = False
    #: why this method trains on the CPU only (`maml_bench/devices.py`), or None
    cpu_only: str | None = None
    #: meta-test holds adapted weights per task of a chunk (`maml_bench/memory_floor.py`)
    adapts_weights_at_test: bool = True
    #: meta-trains its meta-batch in passes of `task_chunk` tasks (MAML's meta-step): the
    #: memory floor counts one pass's activations, else one task's
    meta_trains_in_passes: bool = False
    #: the registry id of the method whose training this one's is (the nearest neighbour
    #: pre-trains as fine-tuning does), so a finished run of that method can be meta-tested as
    #: this one (`run --evaluate-from DIR --trained-by EXPERIMENT/METHOD`); None: its own id
    trains_as: str | None = None

    @classmethod
    def training_settings(cls, config: Any) -> frozenset[str] | None:
        """The settings this method's training reads under `config`, where that is known to be
        fewer than all of them (a run whose config agrees on these, with the same seed, trained
        the same parameters); None: every setting but the evaluation-only ones."""
        return None

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        self.benchmark = benchmark
        self.config = config
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed)  # on the CPU on every device
        #: where the run's tensors live: the benchmark's (`devices.OnDevice`), else the CPU.
        #: Models made by the benchmark are there already; an algorithm's own go there too.
        self.device = getattr(benchmark, "device", torch.device("cpu"))
        #: extra facts for run.json (tuned step sizes, fractions...)
        self.info: dict[str, Any] = {}

    @property
    def iterations(self) -> int:
        return self.config.iterations

    @abstractmethod
    def train_step(self, iteration: int) -> Tensor:
        """One training iteration; returns the training loss (a 0-d tensor, not synced)."""

    @abstractmethod
    def evaluate(self) -> dict[int, Tensor]:
        """Meta-test metric per K: tensor [test tasks, eval_steps + 1]."""

    def fine_tuner(self, shots: int) -> tuple[BatchedForward, dict[str, Tensor], StepSizes] | None:
        """(batched forward, theta, step sizes) with which this method fine-tunes at meta-test
        with `shots` examples, after `evaluate`; None if it does not fine-tune theta that way."""
        return None

    def validation_score(self) -> float | None:
        """Mean metric on the fixed validation tasks after eval_steps fine-tuning steps, for the
        convergence curve of meta-training; None for methods without a fine_tuner then."""
        scores = []
        for k, batch in self.benchmark.eval_sets("val").items():
            tuner = self.fine_tuner(k)
            if tuner is None:
                return None
            forward, theta, lrs = tuner
            curve = evaluate_adaptation(forward, theta, batch, self.benchmark.loss,
                                        self.benchmark.metric, self.config.eval_steps, lrs,
                                        self.config.eval_chunk)
            scores.append(curve[:, -1].mean().item())
        return sum(scores) / len(scores)

    @abstractmethod
    def modules(self) -> dict[str, Any]:
        """Everything that makes up the state: modules, tensors, optimizers."""

    def state_dict(self) -> dict[str, Any]:
        state = {name: obj.state_dict() if hasattr(obj, "state_dict") else obj
                 for name, obj in self.modules().items()}
        state["generator"] = self.gen.get_state()
        state["info"] = dict(self.info)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, obj in self.modules().items():
            if hasattr(obj, "load_state_dict"):
                obj.load_state_dict(state[name])
            elif isinstance(obj, Tensor):
                with torch.no_grad():
                    obj.copy_(state[name])
        self.gen.set_state(state["generator"])
        self.info = dict(state["info"])

    def tensors(self) -> list[Tensor]:
        """Learned tensors, checked for NaN/inf by the runner."""
        out: list[Tensor] = []
        for obj in self.modules().values():
            if isinstance(obj, nn.Module):
                out.extend(obj.parameters())
            elif isinstance(obj, Tensor):
                out.append(obj)
        return out


def adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """Adam for meta-parameters; the fused CPU kernel is several times faster on small nets."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def seeded_model(benchmark: SupervisedBenchmark, seed: int, extra_inputs: int = 0) -> nn.Module:
    """The benchmark's model, initialised from `seed` alone (independent of global RNG state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return benchmark.make_model(extra_inputs)


def adapt_and_measure(
    benchmark: SupervisedBenchmark,
    forward: BatchedForward,
    theta: dict[str, Tensor],
    sets: dict[int, SupervisedBatch],
    lrs: StepSizes,
    steps: int,
    chunk: int,
    lr_per_shots: dict[int, float] | None = None,
) -> dict[int, Tensor]:
    """Fine-tune on each K's support sets and measure the query metric after 0..steps steps."""
    out = {}
    for k, batch in sets.items():
        lr = lr_per_shots[k] if lr_per_shots else lrs
        out[k] = evaluate_adaptation(
            forward, theta, batch, benchmark.loss, benchmark.metric, steps, lr, chunk
        )
    return out


def tuned_finetune(
    benchmark: SupervisedBenchmark,
    forward: BatchedForward,
    theta: dict[str, Tensor],
    config: Any,
    info: dict[str, Any],
) -> dict[int, Tensor]:
    """'Fine-tuned with a tuned step size': for each K, pick from `finetune_lrs` the step size
    with the best mean metric over steps 1..eval_steps on the validation tasks, then test."""
    val = benchmark.eval_sets("val")
    best: dict[int, float] = {}
    sign = -1.0 if benchmark.higher_is_better else 1.0
    for k, batch in val.items():
        scores = {}
        for lr in config.finetune_lrs:
            curve = evaluate_adaptation(forward, theta, batch, benchmark.loss, benchmark.metric,
                                        config.eval_steps, lr, config.eval_chunk)
            score = sign * curve[:, 1:].mean().item() if config.eval_steps else 0.0
            scores[lr] = float("inf") if math.isnan(score) else score  # diverged: never best
        best[k] = min(scores, key=scores.__getitem__)
    info["tuned_finetune_lr"] = {str(k): v for k, v in best.items()}
    test = benchmark.eval_sets("test")
    return adapt_and_measure(benchmark, forward, theta, test, 0.0, config.eval_steps,
                             config.eval_chunk, lr_per_shots=best)


def flat_curves(
    benchmark: SupervisedBenchmark,
    split: str,
    scores: Callable[[SupervisedBatch], Tensor],
    steps: int,
    chunk: int,
) -> dict[int, Tensor]:
    """Metric curves of a method without gradient steps at meta-test (nearest neighbour,
    metric learners): `scores` maps a chunk of episodes to query scores [T, Nq, classes] whose
    argmax is the prediction; per K a tensor [tasks, steps + 1], the same value in every column.

    Chunks bound memory; no_grad because nothing is trained here.
    """
    out = {}
    with torch.no_grad():
        for k, batch in benchmark.eval_sets(split).items():
            metric = torch.cat([benchmark.metric(scores(part), part.y_query)
                                for part in batch.chunks(chunk)])
            out[k] = metric.unsqueeze(1).expand(-1, steps + 1)
    return out
