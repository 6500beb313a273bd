"""Meta-reinforcement learning: paper Table 4 / Figure 4 (2D navigation), Table 5 / Figure 5
(half-cheetah direction and velocity) and the ant, on gymnasium's MuJoCo v5 models."""

from __future__ import annotations

from dataclasses import replace

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.tasks.rl import RLConfig

#: paper Table 4, 2D navigation: average return after 0..3 gradient steps
PAPER_NAVIGATION = {"maml-trpo": (-40.41, -11.68, -3.33, -3.23),
                    "rl-context-vector": (-42.42, -13.90, -5.17, -3.18)}

METHODS = (MethodSpec("maml-trpo", "MAML", seeds=3),
           MethodSpec("fomaml-trpo", "first-order MAML", seeds=1),
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
        "quick": Scale("a smoke check: 30 meta-iterations", overrides={"iterations": 30}, seeds=1),
        "tiny": Scale("for tests: 2 meta-iterations of 2 tasks x 2 short trajectories",
                      overrides={"iterations": 2, "meta_batch": 2, "train_shots": 2,
                                 "eval_shots": (2,), "test_tasks": 2, "horizon": 10,
                                 "hidden": (8, 8), "checkpoint_every": 1, "render": False},
                      seeds=1),
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

# The original code's alpha for 2D navigation (0.5, not the paper text's 0.1): does it close the
# gap after 2 and 3 steps? (MAML after 1 step matches the paper with 0.1; 2 and 3 do not.)
NAVIGATION_CODELR = replace(
    NAVIGATION, id="navigation2d-codelr-v1",
    title="2D navigation with the original code's alpha = 0.5 (paper Table 4 protocol variant)",
    config=replace(NAVIGATION.config, inner_lr=0.5),
    methods=(MethodSpec("maml-trpo", "MAML (alpha 0.5)", seeds=1),),
    figures=(FigureSpec("curves", "2D navigation, alpha = 0.5: average return against "
                        "policy-gradient steps", methods=("maml-trpo",), shots=(40,),
                        ylabel="average return"),),
    notes="Compare with navigation2d-v1 (alpha = 0.1, the paper text): `maml-bench compare "
          "navigation2d-v1 navigation2d-codelr-v1 --method maml-trpo --shots 40 --steps 0,1,2,3`.",
)

# The reference code's own protocol (cbfinn/maml_rl: maml_trpo_point.py, trpo_point.py,
# test_maml_point.py; docs/rl.md "Protocol"): MAML trained with alpha 0.5 for 100 iterations and
# its last snapshot tested; every method fine-tuned with 0.5, then 0.25; the pretrained policy
# trained with Adam on the policy-gradient loss (use_maml=False), the random one with tanh
# units (several draws), the oracle with plain TRPO on 10 trajectories of new goals.
NAVIGATION_V2 = replace(
    NAVIGATION, id="navigation2d-v2",
    title="2D navigation by the reference code's protocol (paper Table 4, Figure 4)",
    config=replace(NAVIGATION.config, iterations=100, inner_lr=0.5, test_lr=0.5,
                   test_lr_later=0.5, test_min_steps=4_000, evaluate_checkpoint="last"),
    methods=(MethodSpec("maml-trpo", "MAML", seeds=3),
             MethodSpec("fomaml-trpo", "first-order MAML", seeds=1),
             MethodSpec("rl-pretrained", "pretrained", seeds=1,
                        overrides={"pretrain_update": "adam", "pretrain_lr": 1e-3}),
             MethodSpec("rl-random", "random", seeds=5, overrides={"nonlinearity": "tanh"}),
             MethodSpec("rl-oracle", "oracle", seeds=1,
                        overrides={"meta_batch": 10, "train_shots": 1, "baseline": "shared"}),
             MethodSpec("rl-context-vector", "context vector", seeds=1)),
    scales={**NAVIGATION.scales, "paper": Scale(
        "the reference code's protocol: 100 meta-iterations of 20 tasks x 20 trajectories, "
        "the last snapshot tested on 40 tasks x at least 4,000 steps of whole trajectories"),
        "tiny": replace(NAVIGATION.scales["tiny"], overrides={
            **NAVIGATION.scales["tiny"].overrides, "test_min_steps": 25})},
    notes="The reference code's protocol (docs/rl.md): alpha 0.5, the last of 100 "
          "meta-iterations; fine-tuning steps 0.5 then 0.25 for every method; pretrained by Adam "
          "(lr 1e-3) on the policy-gradient loss; at least 4,000 environment steps per "
          "fine-tuning step; random with tanh units over 5 draws; oracle by "
          "TRPO on 10 trajectories of new goals with one baseline. navigation2d-v1 keeps the "
          "paper text's alpha 0.1, the best iteration of 500 and the converged oracle.",
)

#: paper Table 5, half-cheetah forward/backward (rllab's cheetah; ours runs gymnasium v5)
PAPER_CHEETAH_DIR = {"maml-trpo": (-50.69, 293.19, 313.48, 315.65),
                     "rl-context-vector": (-40.49, -44.08, -38.27, -42.50)}
LOCOMOTION_METHODS = (METHODS[0], *METHODS[2:4], MethodSpec("rl-oracle", "oracle", seeds=1))


def locomotion(name: str, env: str, title: str, episodes: int,
               paper: dict[str, tuple[float, ...]] | None = None) -> Experiment:
    """Half-cheetah / ant, paper App. A.2: meta-batch 40, K trajectories of 200 steps, 500
    meta-iterations. Returns are on gymnasium v5's scale: our own reference curves, compared
    with the paper's rllab numbers for the ordering only."""
    methods = LOCOMOTION_METHODS + ((MethodSpec("rl-context-vector", "context vector"),)
                                    if paper and "rl-context-vector" in paper else ())
    return Experiment(
        id=f"{name}-v1",
        title=f"{title} (paper Figure 5; gymnasium MuJoCo v5, not the paper's rllab models)",
        benchmark="meta-rl",
        config=RLConfig(env=env, iterations=500, meta_batch=40, inner_lr=0.1, inner_steps=1,
                        train_shots=episodes, train_query=episodes, eval_shots=(episodes,),
                        eval_steps=3, test_tasks=40, val_tasks=2, eval_chunk=40,
                        checkpoint_every=5, check_every=1, log_every=1),
        methods=methods,
        paper=tuple((m, episodes, s, v) for m, values in (paper or {}).items()
                    for s, v in enumerate(values)),
        metric="return",
        scales={
            "paper": Scale("the paper's protocol: 500 meta-iterations of 40 tasks"),
            # a fifth of the paper's 500 meta-iterations, sized to hours of one CPU core per MAML
            # run (the timings it was sized from: docs/rl.md "Half-cheetah and ant")
            "long": Scale("100 meta-iterations of 40 tasks, the 40 test tasks: the paper's "
                          "protocol, shortened to fit a CPU (docs/rl.md)",
                          overrides={"iterations": 100}, seeds=1),
            "quick": Scale("a smoke scale: 10 meta-iterations of 10 tasks, 10 test tasks",
                           overrides={"iterations": 10, "meta_batch": 10, "test_tasks": 10},
                           seeds=1),
            "tiny": Scale("for tests", overrides={
                "iterations": 1, "meta_batch": 2, "train_shots": 2, "eval_shots": (2,),
                "test_tasks": 2, "horizon": 5, "hidden": (8, 8), "checkpoint_every": 1,
                "render": False}, seeds=1),
        },
        tables=(TableSpec("table5" if paper else "returns",
                          ("Paper Table 5: " if paper else "") + f"{title}: average return "
                          "after 0-3 policy-gradient steps "
                          "(gymnasium v5 dynamics: the paper's numbers are rllab's)",
                          shots=episodes, steps=(0, 1, 2, 3)),),
        figures=(FigureSpec("curves", f"{title}: return against policy-gradient steps",
                            methods=tuple(m.algorithm for m in methods), shots=(episodes,),
                            ylabel="average return"),),
        notes=(f"The paper's numbers come from rllab's cheetah (dt 0.01 s); --set "
               f"env={env.replace('-v0', 'RllabDt-v0')} runs that time step on v5's model."
               if "HalfCheetah" in env else "The paper's numbers come from rllab's ant."),
    )


CHEETAH_DIR = locomotion("cheetah-dir", "maml_bench/HalfCheetahDir-v0",
                         "Half-cheetah goal direction", 20, PAPER_CHEETAH_DIR)
CHEETAH_VEL = locomotion("cheetah-vel", "maml_bench/HalfCheetahVel-v0",
                         "Half-cheetah goal velocity", 20)
ANT_DIR = locomotion("ant-dir", "maml_bench/AntDir-v0", "Ant goal direction", 40)
ANT_VEL = locomotion("ant-vel", "maml_bench/AntVel-v0", "Ant goal velocity", 20)

def reference_locomotion(robot: str, task: str, title: str, episodes: int, shots: int,
                         max_kl: float, iterations: int, step: dict[str, float],
                         baseline_iterations: dict[str, int],
                         paper: dict[str, tuple[float, ...]] | None = None, later: float = 0.5,
                         min_steps: int = 4_000) -> Experiment:
    """A locomotion task by the reference code (docs/rl.md "Protocol"): rllab's dynamics (the
    cheetah's dt 0.01 s and 20-d observation, the ant's dt 0.02 s and 125-d observation; the
    centre of mass's velocity), MAML trained as the tested snapshot was (`test_maml_*.py`),
    every method fine-tuned with its own first step (then x `later`) on at least `min_steps`
    steps, the pretrained and oracle policies by plain TRPO on 100 trajectories (20 tasks x 5,
    one baseline) per iteration, the random one a new ReLU policy (3 draws)."""
    env = "HalfCheetah" if robot == "cheetah" else "Ant"
    base = locomotion(f"{robot}-{task}", f"maml_bench/{env}{task.title()}Rllab-v0", title,
                      episodes, paper)
    trpo = {"meta_batch": 20, "train_shots": 5, "baseline": "shared", "max_kl": 0.01}
    methods = (
        MethodSpec("maml-trpo", "MAML", seeds=1, overrides={"test_lr": step["maml-trpo"]}),
        MethodSpec("rl-pretrained", "pretrained", seeds=1, overrides={
            **trpo, "iterations": baseline_iterations["rl-pretrained"],
            "test_lr": step["rl-pretrained"]}),
        MethodSpec("rl-random", "random", seeds=3, overrides={"test_lr": step["rl-random"]}),
        MethodSpec("rl-oracle", "oracle", seeds=1, overrides={
            **trpo, "iterations": baseline_iterations["rl-oracle"]}),
    )
    dynamics = ("dt 0.01 s, centre-of-mass velocity and 20-d observation" if robot == "cheetah"
                else "dt 0.02 s, centre-of-mass velocity and 125-d observation")
    return replace(
        base, id=f"{robot}-{task}-v2",
        title=f"{title} by the reference code's protocol (paper Figure 5; rllab's dynamics on "
              "gymnasium's MuJoCo model)",
        config=replace(base.config, iterations=iterations, train_shots=shots, train_query=shots,
                       max_kl=max_kl, test_lr_later=later, test_min_steps=min_steps,
                       evaluate_checkpoint="last"),
        methods=methods,
        scales={**base.scales, "paper": Scale(
            f"the reference code's protocol: MAML {iterations} meta-iterations of 40 tasks x "
            f"{shots} trajectories, the last tested on 40 tasks x at least {min_steps:,} steps"),
            "tiny": replace(base.scales["tiny"], overrides={
                **base.scales["tiny"].overrides, "test_min_steps": 12})},
        figures=(FigureSpec("curves", f"{title}: return against policy-gradient steps",
                            methods=tuple(m.algorithm for m in methods), shots=(episodes,),
                            ylabel="average return"),),
        notes=f"The reference code's protocol (docs/rl.md): rllab's {dynamics}; the test "
              f"scripts' step sizes per method, x {later:g} after the first; MAML trained to the "
              "iteration of the snapshot the reference tested and that one evaluated; "
              "pretrained and oracle by plain TRPO.",
    )


#: test_maml_cheetah.py / test_maml_cheetah_direc.py: first fine-tuning steps per method; the
#: tested snapshots (bugfix-trpo-maml-cheetah200: itr_475, fbs10; ...direc200: itr_100, fbs20,
#: meta step 0.02); the baselines' (randenv itr_475 / last of 1000; oracleenv itr_975 / last)
CHEETAH_VEL_V2 = reference_locomotion(
    "cheetah", "vel", "Half-cheetah goal velocity", 20, 10, 0.01, 475,
    {"maml-trpo": 0.1, "rl-pretrained": 0.02, "rl-random": 0.1},
    {"rl-pretrained": 475, "rl-oracle": 975})
CHEETAH_DIR_V2 = reference_locomotion(
    "cheetah", "dir", "Half-cheetah goal direction", 20, 20, 0.02, 100,
    {"maml-trpo": 0.1, "rl-pretrained": 0.2, "rl-random": 1.0},
    {"rl-pretrained": 1000, "rl-oracle": 1000}, PAPER_CHEETAH_DIR)
#: test_maml_ant.py / test_maml_ant_direc.py: first fine-tuning steps per method (later steps
#: x 0.5; ant direction x 0.01, on at least 8,000 steps); the tested snapshots
#: (posticml-trpo-maml-ant200: itr_375, fbs20; bugfix-trpo-maml-antdirec200: itr_575, fbs40);
#: the baselines' (randenv100traj itr_575 / the last of 2000; oracleenv100traj itr_550 / 1975)
ANT_VEL_V2 = reference_locomotion(
    "ant", "vel", "Ant goal velocity", 20, 20, 0.01, 375,
    {"maml-trpo": 0.1, "rl-pretrained": 0.2, "rl-random": 1.0},
    {"rl-pretrained": 575, "rl-oracle": 550})
ANT_DIR_V2 = reference_locomotion(
    "ant", "dir", "Ant goal direction", 40, 40, 0.01, 575,
    {"maml-trpo": 0.1, "rl-pretrained": 0.2, "rl-random": 1.0},
    {"rl-pretrained": 2000, "rl-oracle": 1975}, later=0.01, min_steps=8_000)

RL = [NAVIGATION, NAVIGATION_CODELR, NAVIGATION_V2, CHEETAH_DIR_V2, CHEETAH_VEL_V2, ANT_DIR_V2,
      ANT_VEL_V2, CHEETAH_DIR, CHEETAH_VEL, ANT_DIR, ANT_VEL]
