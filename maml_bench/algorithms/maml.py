"""MAML (second order) and first-order MAML (Finn et al. 2017, Algorithm 2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from maml_bench import distributed
from maml_bench.algorithms.base import (
    Algorithm,
    adam,
    adapt_and_measure,
    seeded_model,
)
from maml_bench.core.backends import (
    CHECK_TASKS,
    THREAD_SAFE,
    MetaProblem,
    forward_of,
    query_losses,
)
from maml_bench.core.backends import select as select_backend
from maml_bench.core.chunking import PassSizes, summed_meta_gradient
from maml_bench.core.functional import (
    BatchedForward,
    StepSizes,
    SupervisedBatch,
    make_batched_forward,
    restrict,
)
from maml_bench.errors import UserError
from maml_bench.tasks.base import SupervisedBenchmark


class MAML(Algorithm):
    """Second-order MAML: Adam on the loss after inner gradient steps (Finn et al. 2017).

    theta <- theta - beta * grad_theta sum_i L_i(theta - alpha grad L_i(theta))."""

    meta_trains_in_passes = True
    first_order = False
    data_parallel = True  # also FOMAML, Meta-SGD, ANIL, context vector (same train_step)
    needs_forward = False  # Reptile: its own inner loop runs through the batched forward
    #: applies the config's loss_convention (the reference code's sum-per-shot scales)
    follows_loss_convention = True

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.model = self.build_model(benchmark, seed)
        self.theta = dict(self.model.named_parameters())
        self.problem = MetaProblem(self.model, benchmark.loss, config.inner_steps,
                                   self.step_sizes(), self.first_order,
                                   None if self.adapted() is None else tuple(self.adapted()),
                                   self.needs_forward)
        # The gate's check batch: 2 tasks of the benchmark's own training batch, drawn with a
        # generator of its own, so the run's task stream (self.gen) is untouched.
        self.backend, skipped = select_backend(config.path, self.problem, lambda: (
            benchmark.train_batch(torch.Generator().manual_seed(seed), CHECK_TASKS,
                                  config.train_shots, config.train_query)))
        self.forward = forward_of(self.backend, self.model)
        self.backend_info = {"path": self.backend, **({"path_skipped": skipped} if skipped
                                                      else {})}
        self.info.update(self.backend_info)
        if config.task_threads > 1 and self.backend not in THREAD_SAFE:
            raise UserError(
                f"--set task_threads={config.task_threads} runs tasks side by side, but the "
                f"{self.backend} backend swaps the module's own parameters while it runs "
                f"(functional_call, higher), so its tasks cannot share the module: use "
                f"task_threads=auto or 1 with path={self.backend}, or path=auto")
        self.optimizer = adam(self.meta_parameters(), config.meta_lr)
        self._graph = None  # the CUDA graph of cuda_graph=on, captured at the first step
        self._pass_sizes = PassSizes()  # task_chunk resolved, by batch shape
        device = next(self.model.parameters()).device
        if getattr(config, "cuda_graph", "off") == "on" and device.type != "cuda":
            raise UserError(f"--set cuda_graph=on replays CUDA graphs, but this run trains on "
                            f"{device}: add --device cuda, or drop it")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # info comes back from the checkpoint; the backend and graph are this process's
        self.info.pop("path_skipped", None)
        self.info.pop("cuda_graph", None)
        self.info.update(self.backend_info)

    def build_model(self, benchmark: SupervisedBenchmark, seed: int) -> nn.Module:
        """The network theta belongs to (a hook for methods that wrap it)."""
        return seeded_model(benchmark, seed)

    def meta_parameters(self) -> list[Tensor]:
        return list(self.theta.values())

    def step_sizes(self) -> StepSizes:
        return self.config.inner_lr * self.inner_loss_scale

    @property
    def inner_loss_scale(self) -> float:
        """The inner loss over the mean loss: N for the reference code's sum-per-shot (a sum of
        N K cross-entropies / K), so its step of alpha is a step of N alpha on the mean."""
        return float(self.config.ways) if self._reference_loss() else 1.0

    def _reference_loss(self) -> bool:
        return (self.follows_loss_convention
                and getattr(self.config, "loss_convention", "mean") == "sum-per-shot")

    def query_loss_scale(self, batch: SupervisedBatch) -> float:
        """The query loss over the mean loss: N Q / K under sum-per-shot (Q queries per class),
        which the meta-gradient is scaled by before grad_clip and Adam, as in the reference."""
        if not self._reference_loss():
            return 1.0
        return batch.y_query.shape[1] / self.config.train_shots

    def modules(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def adapted(self) -> list[str] | None:
        """The parameters the inner loop adapts; None: all of theta (MAML). Subclasses that
        adapt a part (ANIL: the head; context vector: z) return their names; adapt_norm=no
        leaves the batch-norm parameters out (the reference code's inner loop)."""
        if getattr(self.config, "adapt_norm", "yes") == "no":
            norm = set(self.model.norm_keys)
            return [k for k in self.theta if k not in norm]
        return None

    def query_losses(self, batch: Any) -> Tensor:
        """Per-task query losses [T] by the chosen backend (`core/backends.py`)."""
        return query_losses(self.backend, self.problem, self.theta, batch, self.forward)

    def train_step(self, iteration: int) -> Tensor:
        c = self.config
        batch = self.benchmark.train_batch(self.gen, c.meta_batch, c.train_shots, c.train_query)
        params = self.meta_parameters()
        if distributed.active():
            # Every rank drew this same batch; each differentiates its share of the tasks
            # (divided by the whole batch's count), so the sums over ranks are the mean loss
            # and its gradient, identical on every rank.
            part = distributed.shard(batch)
            loss, grads = summed_meta_gradient(self.query_losses, part, params,
                                               self.tasks_per_pass(part), batch.n_tasks,
                                               self.task_threads(part))
            loss, *grads = distributed.all_reduce_sum([loss, *grads])
        elif c.cuda_graph == "on":
            loss, grads = self.replayed_meta_gradient(batch, params)
        else:
            loss, grads = self.meta_gradient(batch, params)
        scale = self.query_loss_scale(batch)
        # Gradients assigned, not accumulated: no zero_grad pass over the optimizer needed.
        for p, g in zip(params, grads, strict=True):
            p.grad = g if scale == 1.0 else g * scale
        if c.grad_clip > 0:
            for p in params:
                p.grad.clamp_(-c.grad_clip, c.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def meta_gradient(self, batch: SupervisedBatch, params: list[Tensor]
                      ) -> tuple[Tensor, list[Tensor]]:
        """The mean query loss of `batch` and its gradient: whole, or by `task_chunk` and
        `task_threads`."""
        chunk, threads = self.tasks_per_pass(batch), self.task_threads(batch)
        if chunk >= batch.n_tasks and threads == 1:
            loss = self.query_losses(batch).mean()
            return loss, list(torch.autograd.grad(loss, params))
        # one graph per chunk of tasks, freed before the next: the same mean gradient
        return summed_meta_gradient(self.query_losses, batch, params, chunk, threads=threads)

    def tasks_per_pass(self, batch: SupervisedBatch) -> int:
        """`task_chunk` resolved for batches shaped like `batch` (auto: once per shape), and
        recorded in the run's info (run.json)."""
        n = self.info["tasks_per_pass"] = self._pass_sizes(self.config.task_chunk, self.model,
                                                           batch)
        return n

    def task_threads(self, batch: SupervisedBatch) -> int:
        """`task_threads` resolved for batches shaped like `batch`, recorded in run.json; tasks
        too big for them get the run's CPUs as torch's own threads instead (auto)."""
        # auto on a backend whose tasks cannot share the module: one thread (refused if set)
        setting = self.config.task_threads if self.backend in THREAD_SAFE else 1
        intra = self._pass_sizes.torch_threads(setting, self.model, batch)
        if intra is not None:
            if torch.get_num_threads() != intra:
                torch.set_num_threads(intra)
            self.info["torch_threads"] = intra
        n = self.info["task_threads"] = self._pass_sizes.threads(setting, self.model, batch)
        return n

    def replayed_meta_gradient(self, batch: SupervisedBatch, params: list[Tensor]
                               ) -> tuple[Tensor, list[Tensor]]:
        """`meta_gradient` replayed as one CUDA graph, captured at the first call (after a
        resume too: loading a checkpoint copies into the same parameter tensors). A capture
        that fails or replays differently from eager leaves the run eager, with the reason."""
        if self._graph is None and "cuda_graph" not in self.info:
            from maml_bench.core.graphed import GraphedMetaGradient

            def compute(b: SupervisedBatch) -> list[Tensor]:
                loss, grads = self.meta_gradient(b, params)
                return [loss, *grads]

            try:
                self._graph = GraphedMetaGradient(compute, batch)
                self.info["cuda_graph"] = "on"
            except RuntimeError as err:
                self.info["cuda_graph"] = f"off: {str(err).splitlines()[0]}"
        if self._graph is None:
            return self.meta_gradient(batch, params)
        loss, *grads = self._graph(batch)
        return loss, grads

    def eval_step_sizes(self) -> StepSizes:
        return self.config.inner_lr * self.inner_loss_scale

    def fine_tuner(self, shots: int) -> tuple[BatchedForward, dict[str, Tensor], StepSizes]:
        # Meta-test needs no second derivatives: the batched forward serves the loop path too.
        forward = self.forward or make_batched_forward(self.model)
        names = self.adapted()
        if names is None:
            return forward, self.theta, self.eval_step_sizes()
        forward, theta = restrict(forward, self.theta, names, detach_rest=True)
        return forward, theta, self.eval_step_sizes()

    def evaluate(self) -> dict[int, Tensor]:
        c = self.config
        forward, theta, _ = self.fine_tuner(0)
        return adapt_and_measure(self.benchmark, forward, theta,
                                 self.benchmark.eval_sets("test"), self.eval_step_sizes(),
                                 c.eval_steps, c.eval_chunk)


class FOMAML(MAML):
    """MAML with inner gradients treated as constants (the paper's first-order approximation)."""

    first_order = True
