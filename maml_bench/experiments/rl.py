"""Meta-reinforcement learning: paper Table 4 and Figure 4 (2D navigation), more to come."""

from __future__ import annotations

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.tasks.rl import RLConfig

#: paper Table 4, 2D navigation: average return after 0..3 gradient steps
PAPER_NAVIGATION = {"maml-trpo": (-40.41, -11.68, -3.33, -3.23),
                    "rl-context-vector": (-42.42, -13.90, -5.17, -3.18)}

METHODS = (MethodSpec("maml-trpo", "MAML", seeds=3),
           MethodSpec("rl-pretrained", "pretrained", seeds=1),
           MethodSpec("rl-random", "random", seeds=1),
           MethodSpec("rl-oracle", "oracle", seeds=1),
           MethodSpec("rl-context-vector", "context vector", seeds=1))

NAVIGATION = Experiment(
    id="navigation2d-v1",
    title="2D navigation (paper Table 4, Figure 4)",
    benchmark="meta-rl",
    config=RLConfig(
        env="maml_bench/Navigation2D-v0", iterations=500, meta_batch=20, inner_lr=0.1,
        inner_steps=1, train_shots=20, train_query=20, eval_shots=(40,), eval_steps=3,
        test_tasks=40, val_tasks=2, eval_chunk=40, checkpoint_every=10, check_every=1,
        log_every=1,
    ),
    methods=METHODS,
    paper=tuple((m, 40, s, v) for m, values in PAPER_NAVIGATION.items()
                for s, v in enumerate(values)),
    metric="return",
    scales={
        "paper": Scale("the paper's protocol: 500 meta-iterations of 20 tasks x 20 "
                       "trajectories, 40 test tasks x 40 trajectories"),
        "quick": Scale("minutes: 30 meta-iterations", overrides={"iterations": 30}, seeds=1),
        "tiny": Scale("seconds, for tests: 2 meta-iterations of 2 tasks x 2 short trajectories",
                      overrides={"iterations": 2, "meta_batch": 2, "train_shots": 2,
                                 "eval_shots": (2,), "test_tasks": 2, "horizon": 10,
                                 "hidden": (8, 8), "checkpoint_every": 1}, seeds=1),
    },
    tables=(TableSpec("table4", "Paper Table 4: 2D navigation, average return after 0-3 "
                      "policy-gradient steps (40 trajectories each)", shots=40,
                      steps=(0, 1, 2, 3)),),
    figures=(FigureSpec("curves", "2D navigation: average return against policy-gradient "
                        "steps (paper Figure 4)", methods=tuple(m.algorithm for m in METHODS),
                        shots=(40,), ylabel="average return"),),
    notes="Paper text alpha = 0.1; the original code used 0.5 for 2D navigation "
          "(--set inner_lr=0.5). Reward: minus the distance to the goal, as the code.",
)

RL = [NAVIGATION]
