"""Meta-reinforcement learning as a benchmark (paper section 5.3): an environment family with a
task distribution, a trajectory sampler, and 40 fixed test tasks; metric: the average return.

Unlike supervised benchmarks, every inner and outer step's data is sampled by the current
(adapted) policy, so RL algorithms call `sample` themselves instead of drawing fixed batches.
Records keep the suite's long form: "shots" is the number of trajectories per gradient step
(K), the metric `return` (the undiscounted sum of rewards of an episode, averaged over K).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from maml_bench.config import STEP, MetaConfig
from maml_bench.domains import Flag, Items, Number, OneOf, require, setting
from maml_bench.errors import UserError, install_command
from maml_bench.rl.env_ids import ENV_IDS

INSTALL = f"the RL benchmarks need gymnasium with MuJoCo: {install_command('rl')}"


@dataclass(frozen=True)
class RLConfig(MetaConfig):
    """MAML-TRPO's protocol (paper App. A.2, paper-protocol.md section 4). Of MetaConfig's
    fields, `train_shots` is K, the trajectories per task per inner and outer step, and
    `eval_shots` K at meta-test; `inner_lr` is alpha (alpha / 2 after the first test step)."""

    env: str = setting("maml_bench/Navigation2D-v0", OneOf(ENV_IDS))
    """the environment family (registered gymnasium id)"""
    horizon: int = setting(0, Number(int, 0, 10_000))
    """steps per episode; 0 = the environment's registered horizon"""
    hidden: tuple[int, ...] = setting((100, 100), Items(Number(int, 1, 4096), 1, 8))
    """policy hidden layers (ReLU), Gaussian with a learned state-independent log-std"""
    gamma: float = setting(0.99, Number(float, 0.0, 1.0))
    """discount of the returns the advantages are computed from"""
    gae_lambda: float = setting(1.0, Number(float, 0.0, 1.0))
    """GAE lambda (1: returns minus the linear feature baseline)"""
    max_kl: float = setting(0.01, Number(float, 0.0, 10.0, lo_open=True))
    """TRPO's bound on the mean KL of the post-update policy"""
    cg_iters: int = setting(10, Number(int, 1, 1_000))
    """conjugate-gradient iterations of the TRPO step"""
    cg_damping: float = setting(1e-5, Number(float, 0.0, 10.0))
    """damping added to the KL Hessian"""
    kl_product: str = setting("gauss-newton", OneOf(("gauss-newton", "exact")))
    """how TRPO's KL Hessian-vector products are computed: both exact at the old policy;
    gauss-newton (one inner step) avoids third derivatives, so it is faster (docs/rl.md)"""
    evaluate_checkpoint: str = setting("best", OneOf(("best", "last")), evaluation_only=True)
    """which policy meta-test evaluates: the meta-iteration with the best training return (the
    paper's protocol) or the last"""
    render: bool = setting(True, Flag(), hashed_at_default=False, evaluation_only=True)
    """draw a GIF of the evaluated policy after one step on two test tasks (run folder)"""
    workers: int = setting(1, Number(int, 1, 64))
    """sampler processes (1: sampled in the run's process)"""
    # --- the reference code's protocol (cbfinn/maml_rl; docs/rl.md "Protocol"); added after
    # runs existed, so left out of the hash at their defaults
    nonlinearity: str = setting("relu", OneOf(("relu", "tanh")), hashed_at_default=False)
    """the policy's hidden units (the paper's policies: relu; the reference test script's
    random-init policy: tanh, rllab's default)"""
    test_lr: float = setting(0.0, Number(float, 0.0, 100.0), hashed_at_default=False,
                             evaluation_only=True)
    """meta-test: the first fine-tuning step's size, 0 = inner_lr (the reference's test scripts
    set it per method and domain, "manually tuned", paper App. A.2)"""
    test_lr_later: float = setting(0.5, Number(float, 0.0, 1.0), hashed_at_default=False,
                                   evaluation_only=True)
    """meta-test: every later fine-tuning step's size as a fraction of the first (the
    reference: 0.5; ant direction 0.01)"""
    baseline: str = setting("per-task", OneOf(("per-task", "shared")), hashed_at_default=False)
    """the linear feature baseline and the advantages' standardisation: per task (MAML's) or
    one for the whole batch (the reference's plain TRPO, which trains its oracle on
    trajectories each of a new goal)"""
    pretrain_update: str = setting("trpo", OneOf(("trpo", "adam")), hashed_at_default=False,
                                   used_by=("rl-pretrained", "rl-oracle"))
    """how the pretrained and oracle policies train: a TRPO step on the pre-update surrogate |
    adam: one Adam step of pretrain_lr on the policy-gradient loss (the reference's pretrained
    policy: its MAML script with use_maml=False)"""
    test_min_steps: int = setting(0, Number(int, 0, 10_000_000), hashed_at_default=False,
                                  evaluation_only=True)
    """meta-test: each task's sample (before and after every fine-tuning step) takes whole
    episodes until at least this many environment steps (the reference: 4,000, i.e. more than
    K episodes where episodes end early); 0 = exactly K episodes"""
    pretrain_lr: float = setting(1e-3, STEP, hashed_at_default=False,
                                 used_by=("rl-pretrained", "rl-oracle"))
    """pretrain_update=adam: Adam's step size (the reference: 1e-3, Adam's default)"""

    def validate(self) -> None:
        super().validate()
        require(self.test_tasks <= 40, ["test_tasks"], "test_tasks <= 40 (the fixed test tasks)")


class MetaRL:
    """An environment family: training tasks from the run's generator, the 40 fixed test tasks
    of the original code, and a sampler of K trajectories per task with a (per-task) policy."""

    metric_name = "return"
    higher_is_better = True
    config_class = RLConfig
    #: the training log's train_loss is minus this: (title, axis label) for training-curves.png
    training_curve = ("return", "average return (each update's episodes)")
    #: why its runs train on the CPU (`maml_bench/devices.py`): auto keeps them there, an
    #: explicit --device cuda is refused with this reason
    cpu_only = ("its sampler steps gymnasium environments on the CPU every time step, and its "
                "policies are small MLPs: a GPU would only add copies")

    def __init__(self, config: RLConfig) -> None:
        self.config = config
        try:
            import gymnasium

            import maml_bench.rl.envs  # noqa: F401  (registers the ids)
        except ImportError:
            raise UserError(INSTALL) from None
        probe = gymnasium.make(config.env)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        self.task_dim = len(probe.unwrapped.task_array(self.test_tasks()[0]))
        self.max_horizon = int(probe.spec.max_episode_steps)
        probe.close()
        self._samplers: dict[tuple[int, int, bool], Any] = {}

    @property
    def horizon(self) -> int:
        return self.config.horizon or self.max_horizon

    def make_policy(self, extra_inputs: int = 0):  # -> GaussianMLPPolicy
        from maml_bench.rl.policy import GaussianMLPPolicy

        return GaussianMLPPolicy(self.obs_dim + extra_inputs, self.act_dim,
                                 hidden_sizes=tuple(self.config.hidden),
                                 nonlinearity=self.config.nonlinearity)

    def sample_tasks(self, gen: torch.Generator, n: int) -> list[dict[str, Any]]:
        """`n` training tasks; the numpy generator is seeded from the run's torch generator, so
        the checkpointed generator state also fixes the tasks."""
        from maml_bench.rl.envs import sample_tasks

        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        return sample_tasks(self.config.env, n, np.random.default_rng(seed))

    def test_tasks(self) -> list[dict[str, Any]]:
        from maml_bench.rl.envs import get_test_tasks

        return get_test_tasks(self.config.env)[: self.config.test_tasks]

    def task_features(self, tasks: Sequence[Mapping[str, Any]]) -> Tensor:
        """Task parameters as a [N, d] tensor (the oracle's extra inputs)."""
        from maml_bench.rl.envs import env_class

        cls = env_class(self.config.env)
        return torch.as_tensor(np.stack([cls.task_array(t) for t in tasks]), dtype=torch.float32)

    def sample(self, policy, params: Mapping[str, Tensor], tasks: Sequence[Mapping[str, Any]],
               episodes: int, gen: torch.Generator, oracle: bool = False, min_steps: int = 0
               ):  # -> Episodes
        """K = `episodes` trajectories per task with `params` (shared or [N, ...]), returns and
        standardised advantages filled in (linear feature baseline per task).

        `min_steps`: then more whole episodes for each task whose episodes took fewer
        environment steps than that, until they reach it (the reference's sampler: at least
        `batch_size` steps of whole paths); a task's unneeded extra episodes are masked out."""
        from maml_bench.rl.episodes import join_episodes
        from maml_bench.rl.returns import process_episodes

        batch = self._draw(policy, params, tasks, episodes, gen, oracle)
        while min_steps:
            steps = batch.mask.sum((-2, -1))  # [N]
            if bool((steps >= min_steps).all()):
                break
            need = int(min_steps - steps.min().item())
            # each count keeps a sampler of its own (at most min_steps / horizon of them)
            extra = self._draw(policy, params, tasks, -(-need // self.horizon), gen, oracle)
            lengths = extra.mask.sum(-2)  # [N, B]: steps of each extra episode
            before = steps.unsqueeze(-1) + lengths.cumsum(-1) - lengths
            extra.mask = extra.mask * (before < min_steps).unsqueeze(-2).to(extra.mask.dtype)
            batch = join_episodes(batch, extra)
        return process_episodes(batch, self.config.gamma, self.config.gae_lambda,
                                shared=self.config.baseline == "shared")

    def _draw(self, policy, params: Mapping[str, Tensor], tasks: Sequence[Mapping[str, Any]],
              episodes: int, gen: torch.Generator, oracle: bool):  # -> Episodes
        from maml_bench.rl.sampler import Sampler

        key = (episodes, len(tasks), oracle)
        if key not in self._samplers:
            self._samplers[key] = Sampler(self.config.env, episodes, len(tasks), self.horizon,
                                          {"oracle": True} if oracle else None,
                                          self.config.workers)
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        return self._samplers[key].sample(policy, params, tasks, seed)

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()

    def fit_sets(self) -> None:
        return None  # no curves to draw (Figure 2 is regression only)


def average_return(episodes) -> Tensor:
    """Per task: the undiscounted return of each episode, averaged over its episodes -> [N]
    (episodes masked out from their first step, padding or unneeded extras, do not count)."""
    taken = episodes.mask[..., 0, :]
    return (episodes.rewards * episodes.mask).sum(-2).mul(taken).sum(-1) / taken.sum(-1)
