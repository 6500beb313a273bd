"""Omniglot few-shot classification: paper Table 1 (and the no-conv rows), on the real data."""

from __future__ import annotations

import dataclasses

from maml_bench.core.chunking import AUTO
from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.experiments.fewshot_methods import final_steps, later_methods, published_rows
from maml_bench.tasks.fewshot.episodes import FewShotConfig

#: paper Table 1, MAML rows: (ways, shots, network) -> accuracy in percent
PAPER = {
    (5, 1, "conv"): {"maml": 98.7}, (5, 5, "conv"): {"maml": 99.9},
    (20, 1, "conv"): {"maml": 95.8}, (20, 5, "conv"): {"maml": 98.9},
    (5, 1, "mlp"): {"maml": 89.7}, (5, 5, "mlp"): {"maml": 97.5},
}
PAPER_CI = {(5, 1, "conv"): 0.4, (5, 5, "conv"): 0.1, (20, 1, "conv"): 0.3,
            (20, 5, "conv"): 0.2, (5, 1, "mlp"): 1.1, (5, 5, "mlp"): 0.6}


#: the pre-trained baselines (Ravi & Larochelle), run on Omniglot 5-way with the Conv4
BASELINES = {(5, "conv"): (MethodSpec("finetune", "fine-tuning baseline", seeds=1),
                           MethodSpec("nearest-neighbour", "nearest neighbour baseline", seeds=1))}


#: tasks per meta-gradient pass (task_chunk) set explicitly. 5-way 5-shot and 20-way 1-shot:
#: measured fastest with the `batched` backend (results/benchmarks/omniglot-task-chunks-cpu.md)
#: before `auto` existed, kept because their long runs' checkpoints hold them in their config
#: hash. 20-way 5-shot: 4, measured fastest with `fused` (results/benchmarks/task-chunks-cpu.md;
#: auto's 10 MiB rule takes 1 there, which was slower: docs/speed.md). The other cells take
#: auto (core/chunking.py).
TASK_CHUNK = {(5, 5, "conv"): 4, (20, 1, "conv"): 2, (20, 5, "conv"): 4}

#: the `long` scale: the paper's 60,000 meta-iterations cut to a few hours of one CPU core per
#: second-order MAML run, for the cells whose paper scale would take days on a CPU (5-way
#: 1-shot and the no-conv cells run at the paper's scale); the timings they were sized from
#: are in docs/omniglot.md "The long scale"
LONG_ITERATIONS = {(5, 5): 10_000, (20, 1): 4_000, (20, 5): 1_500}


def _long_scale(ways: int, shots: int, network: str) -> dict[str, Scale]:
    """{"long": ...} for the cells in LONG_ITERATIONS, else nothing."""
    iterations = LONG_ITERATIONS.get((ways, shots)) if network == "conv" else None
    if iterations is None:
        return {}
    return {"long": Scale(
        f"{iterations:,} meta-iterations, 600 test episodes: the paper's protocol, shortened "
        "to fit a CPU (docs/omniglot.md)",
        overrides={"iterations": iterations, "val_every": iterations // 10,
                   "checkpoint_every": min(500, iterations // 10)}, seeds=1)}


#: v2: where the reference code (cbfinn/maml) is silent in the paper or differs from the
#: suite's own defaults, its choices for Omniglot (docs/omniglot.md, "Protocol: the reference
#: code against v1 and v2"). The rest of its Omniglot protocol is v1's already: the usage
#: lines' meta-batch, inner lr and inner steps (main.py), K query images per class in training
#: and at test (main.py: update_batch_size * 2 images per class), 64 filters (main.py), stride-2
#: convolutions and features averaged over space (maml.py forward_conv), a random quarter turn
#: per drawn class in training and at test (data_generator.py make_data_tensor), Adam at 1e-3
#: with no clipping (maml.py: clip_by_value for miniimagenet only), 600 test episodes (main.py
#: NUM_TEST_POINTS).
REFERENCE_CODE = {
    "preprocessing": "reference",  # resize_images.py: Lanczos on 1-bit PNGs (Pillow: nearest)
    "loss_convention": "sum-per-shot",  # utils.py xent: per-example CE / K, summed by tf.gradients
    "adapt_norm": "no",  # maml.py task_metalearn: the inner loop adapts `weights`, no norm vars
    "bn_scale": "none",  # utils.py normalize: tf_layers.batch_norm defaults, scale=False
    "bn_eps": 1e-3,  # the same defaults' epsilon 0.001 (batch statistics, is_training=True)
    "init": "reference",  # maml.py construct_conv_weights: Xavier kernels, w5 N(0, 1), zero b
    "padding": "tf-same",  # utils.py conv_block: tf.nn.conv2d(..., [1, 2, 2, 1], 'SAME')
    "eval_steps": 10,  # main.py main: test_num_updates = 10 for Omniglot
    "iterations": 40_000,  # main.py usage lines (the paper's text: 60,000)
}


def omniglot(ways: int, shots: int, network: str = "conv", version: int = 1) -> Experiment:
    """One Table 1 cell: the paper's protocol (paper-protocol.md, section 3) as defaults;
    version 2: with the reference code's choices (REFERENCE_CODE), MAML and first-order MAML
    only."""
    five = ways == 5
    v2 = version == 2
    config = FewShotConfig(
        task_chunk=TASK_CHUNK.get((ways, shots, network), AUTO),
        dataset="omniglot", ways=ways, network=network,
        iterations=60_000, meta_batch=32 if five else 16, meta_lr=1e-3,
        inner_lr=0.4 if five else 0.1, inner_steps=1 if five else 5,
        train_shots=shots, train_query=shots,  # K query images per class, as the code
        eval_shots=(shots,), eval_steps=3 if five else 5, test_tasks=600, val_tasks=100,
        eval_chunk=100, checkpoint_every=500, check_every=100, log_every=100, val_every=1_000,
    )
    if v2:
        config = dataclasses.replace(config, **REFERENCE_CODE)
    kind = "" if network == "conv" else "-noconv"
    label = "" if network == "conv" else ", no conv"
    steps = 3 if five else 5  # the paper's fine-tuning steps at test: its numbers sit there
    paper = tuple((m, shots, steps, v) for m, v in PAPER[(ways, shots, network)].items())
    later = later_methods("omniglot", ways, shots) if network == "conv" and not v2 else ()
    own_steps = final_steps(later, steps)
    if later:
        paper += published_rows("omniglot", ways, shots, own_steps)
    table_steps = tuple(sorted({0, 1, steps, config.eval_steps}))
    tables = [TableSpec("table1", f"Paper Table 1: Omniglot {ways}-way {shots}-shot{label}, "
                        "query accuracy (%) after fine-tuning", shots=shots, steps=table_steps,
                        methods=("maml", "fomaml", "finetune", "nearest-neighbour",
                                 "matchingnets", "metalstm"))]
    if later:
        if ways == 5:
            tables.append(TableSpec("table3", f"Paper Table 3: Omniglot 5-way {shots}-shot, "
                                    "MAML against the context vector, query accuracy (%)",
                                    shots=shots, steps=table_steps,
                                    methods=("maml", "context-vector")))
        tables.append(TableSpec("methods", f"Omniglot {ways}-way {shots}-shot: every method on "
                                "the same test episodes after its own protocol's last "
                                "fine-tuning step (steps), each next to its own published "
                                "number (source in its label)", shots=shots, steps=(steps,),
                                method_steps=tuple(own_steps.items())))
    methods = (MethodSpec("maml", f"MAML{label}", seeds=1),
               MethodSpec("fomaml", f"first-order MAML{label}", seeds=1),
               *(() if v2 else BASELINES.get((ways, network), ())), *later)
    drawn = tuple(m.algorithm for m in methods
                  if m.algorithm in ("maml", "fomaml", "finetune", "nearest-neighbour"))
    return Experiment(
        id=f"omniglot-{ways}w{shots}s{kind}-v{version}",
        title=f"Omniglot {ways}-way {shots}-shot{label} (paper Table 1"
              + (", the reference code's protocol)" if v2 else ")"),
        benchmark="fewshot",
        config=config,
        methods=methods,
        paper=paper,
        paper_ci={("maml", shots): PAPER_CI[(ways, shots, network)]},
        metric="accuracy",
        scales={
            "paper": Scale(
                "the reference code's protocol: 40,000 meta-iterations (its usage lines; the "
                "paper's text says 60,000)" if v2 else "the paper's protocol: 60,000 "
                "meta-iterations"),
            "quick": Scale("a smoke check: 1,000 meta-iterations, 200 test episodes",
                           overrides={"iterations": 1_000, "test_tasks": 200, "val_every": 250,
                                      "checkpoint_every": 250}, seeds=1),
            **_long_scale(ways, shots, network),
            "tiny": Scale("for tests: 4 meta-iterations of 2 tasks"
                          + (", 8 filters" if network == "conv" else ""),
                          overrides={"iterations": 4, "meta_batch": 2, "test_tasks": 4,
                                     "val_tasks": 2, "eval_chunk": 2,
                                     **({"filters": 8} if network == "conv" else {}),
                                     "val_every": 2, "checkpoint_every": 2, "check_every": 2,
                                     "log_every": 2}, seeds=1),
        },
        tables=tuple(tables),
        figures=(FigureSpec("curves", f"Omniglot {ways}-way {shots}-shot{label}: accuracy "
                            "against fine-tuning steps",
                            methods=drawn, shots=(shots,), ylabel="query accuracy (%)"),),
        notes=f"Paper: {PAPER[(ways, shots, network)]['maml']} +- "
              f"{PAPER_CI[(ways, shots, network)]} (MAML). Split: sorted characters shuffled "
              "with random.seed(1) (the code's file-system order cannot be recovered)."
              + (" v2: the reference code's choices (REFERENCE_CODE, docs/omniglot.md); the "
                 "paper's number sits at its fine-tuning steps, the code's 10 beside it."
                 if v2 else ""),
    )


OMNIGLOT = [omniglot(5, 1), omniglot(5, 5), omniglot(20, 1), omniglot(20, 5),
            omniglot(5, 1, "mlp"), omniglot(5, 5, "mlp")]
#: the Table 1 conv cells with the reference code's protocol
OMNIGLOT_V2 = [omniglot(5, 1, version=2), omniglot(5, 5, version=2),
               omniglot(20, 1, version=2), omniglot(20, 5, version=2)]
