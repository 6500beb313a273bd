"""Meta-RL methods of the paper's section 5.3 (Tables 4/5, Figures 4/5): MAML-TRPO, its
first-order variant, the context vector, and the baselines pretrained, random initialisation and
oracle.

Every method is evaluated the same way on the 40 fixed test tasks: K trajectories with the
current policy, a vanilla policy-gradient step (alpha, then alpha / 2), K new trajectories with
the adapted policy, and so on; column s of a curve is the average return after s steps (the
oracle, given the task, takes none: a flat curve).
`train_step` returns minus the average return of the episodes its update was computed on
(post-update for MAML), so the training log's `train_loss` falls as the return rises.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from maml_bench.algorithms.base import Algorithm
from maml_bench.tasks.rl import MetaRL, average_return


class MAMLTRPO(Algorithm):
    """MAML with VPG inner steps and a TRPO meta-update (Finn et al. 2017, section 5.3)."""

    first_order = False
    #: inner steps taken during training (None: the config's inner_steps); 0 trains the policy
    #: itself on all tasks (the pretrained baseline)
    train_inner_steps: int | None = None
    #: the task parameters are appended to the observation (the oracle)
    oracle = False
    #: False: meta-test takes no step (the oracle is given the task), a flat curve at its return
    adapts_at_test = True

    def __init__(self, benchmark: MetaRL, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        from maml_bench.rl.trpo import TRPOConfig

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = self.build_policy(benchmark)
        self.theta = dict(self.policy.named_parameters())
        # The paper evaluates the meta-iteration whose training return was best: kept here.
        self.best_policy = copy.deepcopy(self.policy).requires_grad_(False)
        self.info["best_train_return"] = -math.inf
        self.trpo = TRPOConfig(max_kl=config.max_kl, cg_iters=config.cg_iters,
                               damping=config.cg_damping)

    def build_policy(self, benchmark: MetaRL) -> Any:
        return benchmark.make_policy(benchmark.task_dim if self.oracle else 0)

    def adapted_names(self) -> list[str] | None:
        """The parameters the inner steps adapt (None: all; the context vector: z)."""
        return None

    def modules(self) -> dict[str, Any]:
        return {"policy": self.policy, "best_policy": self.best_policy}

    def sample(self, params: dict[str, Tensor], tasks: list, episodes: int,
               gen: torch.Generator, min_steps: int = 0) -> Any:
        return self.benchmark.sample(self.policy, params, tasks, episodes, gen, self.oracle,
                                     min_steps)

    def adapted(self, inner: list, step_sizes: list[float], n_tasks: int,
                theta: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        from maml_bench.rl.maml_rl import adapt

        with torch.no_grad():
            return adapt(self.policy, self.theta if theta is None else theta, inner, step_sizes,
                         n_tasks=n_tasks, names=self.adapted_names())

    def train_step(self, iteration: int) -> Tensor:
        from maml_bench.rl.maml_rl import maml_trpo_step

        c = self.config
        steps = c.inner_steps if self.train_inner_steps is None else self.train_inner_steps
        tasks = self.benchmark.sample_tasks(self.gen, c.meta_batch)
        # The original trains with alpha at every inner step (alpha / 2 is for evaluation).
        step_sizes = [c.inner_lr] * max(steps, 1)
        inner: list = []
        params = {k: v.detach() for k, v in self.theta.items()}
        for _ in range(steps):
            inner.append(self.sample(params, tasks, c.train_shots, self.gen))
            params = self.adapted(inner, step_sizes, len(tasks))
        outer = self.sample(params, tasks, c.train_shots, self.gen)
        train_return = average_return(outer).mean()
        self.keep_if_best(train_return, iteration)
        result = maml_trpo_step(self.policy, self.theta, inner, outer, step_sizes, self.trpo,
                                self.first_order, self.adapted_names(),
                                gauss_newton=c.kl_product == "gauss-newton")
        self.info["trpo_accepted"] = self.info.get("trpo_accepted", 0) + int(result.accepted)
        return -train_return

    def keep_if_best(self, train_return: Tensor, iteration: int) -> None:
        """Keep theta (before this iteration's update) if its training return is the best."""
        if train_return.item() > self.info["best_train_return"]:
            self.info["best_train_return"] = train_return.item()
            self.info["best_iteration"] = iteration
            self.best_policy.load_state_dict(self.policy.state_dict())

    def test_step_sizes(self, steps: int) -> list[float]:
        """Meta-test's fine-tuning step sizes: test_lr (0: inner_lr), then x test_lr_later."""
        from maml_bench.rl.maml_rl import inner_step_sizes

        c = self.config
        return inner_step_sizes(c.test_lr or c.inner_lr, steps, c.test_lr_later)

    def evaluates_best(self) -> bool:
        """Meta-test uses the best training iteration's policy (the paper), once there is one."""
        return self.config.evaluate_checkpoint == "best" and "best_iteration" in self.info

    def evaluated_theta(self) -> dict[str, Tensor]:
        policy = self.best_policy if self.evaluates_best() else self.policy
        return {k: v.detach() for k, v in policy.named_parameters()}

    def evaluate(self) -> dict[int, Tensor]:
        c = self.config
        tasks = self.benchmark.test_tasks()
        theta = self.evaluated_theta()
        self.info["evaluated"] = (f"best training return, iteration {self.info['best_iteration']}"
                                  if self.evaluates_best() else "last iteration")
        out = {}
        for k in c.eval_shots:
            # The same evaluation trajectories' randomness for every method and run.
            gen = torch.Generator().manual_seed(c.test_seed + k)
            inner: list = []
            params = dict(theta)
            curve = []
            steps = c.eval_steps if self.adapts_at_test else 0
            for step in range(steps + 1):
                episodes = self.sample(params, tasks, k, gen, c.test_min_steps)
                curve.append(average_return(episodes))
                if step < steps:
                    inner.append(episodes)
                    params = self.adapted(inner, self.test_step_sizes(len(inner)),
                                          len(tasks), theta)
            out[k] = torch.stack(curve, dim=1).expand(-1, c.eval_steps + 1).clone()
        return out

    def validation_score(self) -> None:
        return None  # the training log's return is the convergence curve

    def write_artifacts(self, directory: Path) -> list[Path]:
        """`rollout-task<i>.gif`: the evaluated policy after one policy-gradient step on each of
        the first two test tasks (behaviour, not only a number; paper Figures 4/5)."""
        from maml_bench.rl.render import render_in_child

        c = self.config
        tasks = self.benchmark.test_tasks()[:2]
        theta = self.evaluated_theta()
        gen = torch.Generator().manual_seed(c.test_seed)
        episodes = self.sample(theta, tasks, c.eval_shots[0], gen)
        adapted = (self.adapted([episodes], self.test_step_sizes(1), len(tasks), theta)
                   if self.adapts_at_test else {k: v.expand(len(tasks), *v.shape)
                                                for k, v in theta.items()})
        paths = []
        what = "after one policy-gradient step" if self.adapts_at_test else "not adapted"
        for i, task in enumerate(tasks):
            out = directory / f"rollout-task{i}.gif"
            if render_in_child(out, c.env, task, self.policy, {k: v[i] for k, v in
                                                               adapted.items()},
                               self.benchmark.horizon, {"oracle": True} if self.oracle else None,
                               title=f"{c.env.split('/')[-1]}, test task {i}: {what}"):
                paths.append(out)
        return paths


class FOMAMLTRPO(MAMLTRPO):
    """MAML-TRPO with the inner gradients treated as constants (first order)."""

    first_order = True


class PretrainedRL(MAMLTRPO):
    """One policy trained with TRPO on all tasks, fine-tuned at meta-test (paper's "pretrained").

    No inner step in training; at meta-test the same policy-gradient steps as MAML. With
    `pretrain_update=adam` each iteration is one Adam step on the policy-gradient loss of the
    meta-batch's episodes, as the reference trained it (its MAML script, use_maml=False)."""

    train_inner_steps = 0

    def __init__(self, benchmark: MetaRL, config: Any, seed: int) -> None:
        super().__init__(benchmark, config, seed)
        self.optimizer = (torch.optim.Adam(self.policy.parameters(), lr=config.pretrain_lr)
                          if config.pretrain_update == "adam" else None)

    def modules(self) -> dict[str, Any]:
        extra = {"optimizer": self.optimizer} if self.optimizer is not None else {}
        return {**super().modules(), **extra}

    def train_step(self, iteration: int) -> Tensor:
        if self.optimizer is None:
            return super().train_step(iteration)
        from maml_bench.rl.vpg import vpg_loss

        c = self.config
        tasks = self.benchmark.sample_tasks(self.gen, c.meta_batch)
        episodes = self.sample({k: v.detach() for k, v in self.theta.items()}, tasks,
                               c.train_shots, self.gen)
        train_return = average_return(episodes).mean()
        self.keep_if_best(train_return, iteration)
        self.optimizer.zero_grad()
        vpg_loss(self.policy, self.theta, episodes).mean().backward()  # mean over tasks
        self.optimizer.step()
        return -train_return


class RandomRL(MAMLTRPO):
    """A randomly initialised policy, fine-tuned at meta-test (the paper's "random")."""

    @property
    def iterations(self) -> int:
        return 0


class OracleRL(PretrainedRL):
    """A policy that sees the task parameters in its observation: the upper reference.

    Trained on all tasks like the pretrained one; about -2.3 on 2D navigation (Figure 4). Not
    adapted at meta-test (Figure 4's horizontal line): a policy-gradient step of alpha on a
    converged policy only wrecks it (docs/rl.md, 2D navigation)."""

    oracle = True
    adapts_at_test = False


class RLContextVector(MAMLTRPO):
    """MAML-TRPO adapting only free inputs z joined to the observation (paper App. C.2).

    The Tables 4/5 comparison: network and z's initial value are meta-learned with TRPO as in
    MAML; the inner steps move z alone."""

    def build_policy(self, benchmark: MetaRL) -> Any:
        from maml_bench.rl.policy import ContextPolicy

        return ContextPolicy(benchmark.obs_dim, benchmark.act_dim, self.config.context_size,
                             hidden_sizes=tuple(self.config.hidden),
                             nonlinearity=self.config.nonlinearity)

    def adapted_names(self) -> list[str]:
        return ["context"]
