"""MiniImagenet 5-way few-shot classification: paper Table 1 (needs the data on disk), and a demo
of the same protocol on data generated in MiniImagenet's formats (`maml-bench data synth`)."""

from __future__ import annotations

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.experiments.fewshot_methods import final_steps, later_methods, published_rows
from maml_bench.tasks.fewshot.episodes import FewShotConfig

#: paper Table 1, MiniImagenet 5-way: shots -> method -> accuracy in percent (the baselines are
#: Ravi & Larochelle's numbers as the MAML paper cites them)
PAPER = {1: {"finetune": 28.86, "nearest-neighbour": 41.08, "fomaml": 48.07, "maml": 48.70},
         5: {"finetune": 49.79, "nearest-neighbour": 51.04, "fomaml": 63.15, "maml": 63.11}}
METHODS = (MethodSpec("maml", "MAML", seeds=1), MethodSpec("fomaml", "first-order MAML", seeds=1),
           MethodSpec("finetune", "fine-tuning baseline", seeds=1),
           MethodSpec("nearest-neighbour", "nearest neighbour baseline", seeds=1))


def miniimagenet(shots: int, demo: bool = False) -> Experiment:
    """One Table 1 cell with the paper's protocol (paper-protocol.md, section 3)."""
    config = FewShotConfig(
        dataset="miniimagenet-demo" if demo else "miniimagenet", ways=5, filters=32,
        iterations=60_000, meta_batch=4 if shots == 1 else 2, meta_lr=1e-3, inner_lr=0.01,
        inner_steps=5, eval_steps=10, train_shots=shots, train_query=15,
        test_query=0,  # K query images per class at test, as the reference code
        eval_shots=(shots,), grad_clip=10.0, test_tasks=600, val_tasks=100, eval_chunk=20,
        checkpoint_every=500, check_every=100, log_every=100, val_every=1_000,
    )
    what = ("DEMO on generated data in MiniImagenet's formats (not MiniImagenet: numbers are "
            "not comparable with the paper)" if demo else "paper Table 1")
    scales = {
        "paper": Scale("the paper's protocol: 60,000 meta-iterations"),
        "quick": Scale("minutes on 2 CPU cores: 300 meta-iterations, 100 test episodes",
                       overrides={"iterations": 300, "test_tasks": 100, "val_tasks": 20,
                                  "val_every": 100, "checkpoint_every": 100}, seeds=1),
        "tiny": Scale("seconds, for tests: 2 meta-iterations, 4 filters",
                      overrides={"iterations": 2, "meta_batch": 2, "test_tasks": 4,
                                 "val_tasks": 2, "filters": 4, "eval_chunk": 2, "eval_steps": 2,
                                 "inner_steps": 1, "train_query": 2, "val_every": 2,
                                 "checkpoint_every": 2, "check_every": 2, "log_every": 2,
                                 "protonet_train_ways": 0},  # the test data's few classes
                      seeds=1),
    }
    steps = config.eval_steps
    later = later_methods(config.dataset, 5, shots)
    own_steps = final_steps(later, steps)
    paper = tuple((m, shots, steps, v) for m, v in PAPER[shots].items())
    paper += published_rows(config.dataset, 5, shots, own_steps)
    return Experiment(
        id=f"miniimagenet-5w{shots}s{'-demo' if demo else ''}-v1",
        title=f"MiniImagenet 5-way {shots}-shot ({what})",
        benchmark="fewshot",
        config=config,
        methods=METHODS + later,
        paper=() if demo else paper,
        metric="accuracy",
        scales=scales,
        tables=(TableSpec("table1", f"MiniImagenet 5-way {shots}-shot ({what}), query "
                          "accuracy (%) after fine-tuning", shots=shots, steps=(0, 1, 5, steps),
                          methods=("maml", "fomaml", "finetune", "nearest-neighbour",
                                   "matchingnets", "metalstm")),
                TableSpec("methods", f"MiniImagenet 5-way {shots}-shot ({what}): every method "
                          "on the same test episodes after its own protocol's last fine-tuning "
                          "step (steps), each next to its own published number (source in its "
                          "label)", shots=shots, steps=(steps,),
                          method_steps=tuple(own_steps.items()))),
        figures=(FigureSpec("curves", f"MiniImagenet 5-way {shots}-shot ({what})",
                            methods=tuple(m.algorithm for m in METHODS), shots=(shots,),
                            ylabel="query accuracy (%)"),),
        notes="Data: MAML_BENCH_DATA/" + config.dataset + (
            " (make it with `maml-bench data synth miniimagenet DIR`)" if demo else
            " (images/ + train/val/test.csv, or the mini-imagenet-cache-*.pkl pickles)"),
    )


MINIIMAGENET = [miniimagenet(1), miniimagenet(5), miniimagenet(1, demo=True),
                miniimagenet(5, demo=True)]
