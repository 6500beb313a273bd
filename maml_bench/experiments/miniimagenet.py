"""MiniImagenet 5-way few-shot classification: paper Table 1 on the real images (the reference
code's protocol, v2), and a demo on data generated in MiniImagenet's formats (`maml-bench data
synth`), which keeps the suite's earlier protocol (v1)."""

from __future__ import annotations

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.experiments.fewshot_methods import final_steps, later_methods, published_rows
from maml_bench.tasks.fewshot.episodes import FewShotConfig

#: paper Table 1, MiniImagenet 5-way: shots -> method -> accuracy in percent (the baselines are
#: Ravi & Larochelle's numbers as the MAML paper cites them)
PAPER = {1: {"finetune": 28.86, "nearest-neighbour": 41.08, "fomaml": 48.07, "maml": 48.70},
         5: {"finetune": 49.79, "nearest-neighbour": 51.04, "fomaml": 63.15, "maml": 63.11}}
#: the half widths of those numbers' 95% intervals, and of the cited matching nets and
#: meta-learner LSTM rows (paper Table 1)
PAPER_CI = {1: {"finetune": 0.54, "nearest-neighbour": 0.70, "matchingnets": 0.84,
                "metalstm": 0.77, "fomaml": 1.75, "maml": 1.84},
            5: {"finetune": 0.79, "nearest-neighbour": 0.65, "matchingnets": 0.73,
                "metalstm": 0.71, "fomaml": 0.91, "maml": 0.92}}
#: Ravi & Larochelle's baselines as their code ran them (twitter/meta-learning-lstm, read in
#: docs/miniimagenet.md): model/baselines/pre-train.lua (a 64-filter Conv4 with Torch's batch
#: norm, eps 1e-3, a 64-way head, Adam 1e-3 on 64 images per step, 30,000 steps, the 64
#: training classes), pre-trained-SGD.lua (15 SGD steps on the whole support set, lr and decay
#: from these grids on 100 validation episodes), 15 queries per class in test episodes
RAVI_BASELINES = {
    "baseline_protocol": "ravi", "pretrain_batch": 64, "iterations": 30_000, "meta_lr": 1e-3,
    "filters": 64, "bn_scale": "learned", "bn_eps": 1e-3, "init": "torch",
    "preprocessing": "suite",  # Torch's image.load: libjpeg's accurate IDCT, as Pillow's
    "test_query": 15, "eval_steps": 15, "val_tasks": 100,
    "finetune_lrs": (0.5, 0.1, 0.01, 0.001, 1e-4, 1e-5),
    "finetune_lr_decays": (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0),
}
METHODS = (MethodSpec("maml", "MAML", seeds=1), MethodSpec("fomaml", "first-order MAML", seeds=1),
           MethodSpec("finetune", "fine-tuning baseline", seeds=1),
           MethodSpec("nearest-neighbour", "nearest neighbour baseline", seeds=1))
#: the real data's: the baselines by Ravi & Larochelle's protocol
REAL_METHODS = METHODS[:2] + tuple(MethodSpec(m.algorithm, m.label, m.seeds, RAVI_BASELINES)
                                   for m in METHODS[2:])
#: the MAML authors' released 5-way 1-shot model, meta-tested by this suite (no training)
AUTHORS = MethodSpec("maml-authors", "MAML: the authors' trained model (59,000 its.)", seeds=1)

#: where the reference code (cbfinn/maml: maml.py, utils.py, main.py) differs from the suite's
#: own defaults, its choices, which produced the paper's numbers (docs/protocols.md)
REFERENCE_CODE = {
    "loss_convention": "sum-per-shot",  # utils.xent: CE / K, differentiated as a sum
    "adapt_norm": "no",  # the inner loop adapts its `weights` dict: no batch-norm offsets
    "bn_scale": "none",  # tf.contrib.layers.batch_norm defaults: scale=False, epsilon 1e-3
    "bn_eps": 1e-3,
    "init": "reference",  # Xavier-uniform kernels and head, zero biases
    "preprocessing": "reference",  # tf.image.decode_jpeg's default: libjpeg's fast integer IDCT
}
#: the `long` scale's meta-iterations per shots, for the real data: the paper's 60,000 cut to
#: hours of CPU time per MAML run (the timing they were sized from: docs/miniimagenet.md
#: "Meta-training at the largest scale that fits here")
LONG_ITERATIONS = {1: 10_000}
# meta_batch: main.py's usage lines give 4 for 1-shot and 5-shot (the paper's text: 2 for 5-shot)


def miniimagenet(shots: int, demo: bool = False) -> Experiment:
    """One Table 1 cell with the paper's protocol (paper-protocol.md, section 3); the real
    data's with the reference code's choices where the paper is silent or differs."""
    config = FewShotConfig(
        dataset="miniimagenet-demo" if demo else "miniimagenet", ways=5, filters=32,
        iterations=60_000, meta_batch=4 if shots == 1 or not demo else 2, meta_lr=1e-3,
        inner_lr=0.01,
        inner_steps=5, eval_steps=10, train_shots=shots, train_query=15,
        test_query=0,  # K query images per class at test, as the reference code
        eval_shots=(shots,), grad_clip=10.0, test_tasks=600, val_tasks=100, eval_chunk=20,
        checkpoint_every=500, check_every=100, log_every=100, val_every=1_000,
        **({} if demo else REFERENCE_CODE),
    )
    what = ("DEMO on generated data in MiniImagenet's formats (not MiniImagenet: numbers are "
            "not comparable with the paper)" if demo else "paper Table 1")
    scales = {
        "paper": Scale("the paper's protocol: 60,000 meta-iterations"),
        "quick": Scale("a smoke check: 300 meta-iterations, 100 test episodes",
                       overrides={"iterations": 300, "test_tasks": 100, "val_tasks": 20,
                                  "val_every": 100, "checkpoint_every": 100}, seeds=1),
        "tiny": Scale("for tests: 2 meta-iterations, 4 filters",
                      overrides={"iterations": 2, "meta_batch": 2, "test_tasks": 4,
                                 "val_tasks": 2, "filters": 4, "eval_chunk": 2, "eval_steps": 2,
                                 "inner_steps": 1, "train_query": 2, "val_every": 2,
                                 "checkpoint_every": 2, "check_every": 2, "log_every": 2,
                                 "protonet_train_ways": 0},  # the test data's few classes
                      seeds=1),
    }
    if not demo and shots in LONG_ITERATIONS:
        n = LONG_ITERATIONS[shots]
        scales["long"] = Scale(
            f"{n:,} meta-iterations, 600 test episodes: the paper's protocol, shortened to fit "
            "a CPU (docs/miniimagenet.md)", seeds=1,
            overrides={"iterations": n, "val_every": n // 10, "checkpoint_every": 100})
    steps = config.eval_steps
    later = later_methods(config.dataset, 5, shots)
    own_steps = final_steps(later, steps)
    paper = tuple((m, shots, steps, v) for m, v in PAPER[shots].items())
    paper += published_rows(config.dataset, 5, shots, own_steps)
    if shots == 1:  # the released model is the paper's MAML model: compared with its number
        paper += ((AUTHORS.algorithm, shots, steps, PAPER[shots]["maml"]),)
    ci = {(m, shots): half for m, half in PAPER_CI[shots].items()}
    ci[(AUTHORS.algorithm, shots)] = PAPER_CI[shots]["maml"]
    return Experiment(
        id=f"miniimagenet-5w{shots}s-demo-v1" if demo else f"miniimagenet-5w{shots}s-v2",
        title=f"MiniImagenet 5-way {shots}-shot ({what})",
        benchmark="fewshot",
        config=config,
        methods=(METHODS if demo else REAL_METHODS)
        + ((AUTHORS,) if shots == 1 and not demo else ()) + later,
        paper=() if demo else paper,
        paper_ci={} if demo else ci,
        metric="accuracy",
        scales=scales,
        tables=(TableSpec("table1", f"MiniImagenet 5-way {shots}-shot ({what}), query "
                          "accuracy (%) after fine-tuning", shots=shots, steps=(0, 1, 5, steps),
                          methods=("maml", "fomaml", "finetune", "nearest-neighbour",
                                   "matchingnets", "metalstm")
                          + (("maml-authors",) if shots == 1 and not demo else ())),
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
            " (images/ or images.zip + train/val/test.csv, or the mini-imagenet-cache-*.pkl "
            "pickles)"),
    )


MINIIMAGENET = [miniimagenet(1), miniimagenet(5), miniimagenet(1, demo=True),
                miniimagenet(5, demo=True)]
