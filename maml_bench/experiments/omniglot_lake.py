"""Omniglot 20-way 1-shot on Lake et al.'s 20 one-shot runs (Science 2015) as a held-out test:
trained on images_background alone (split=background), tested on the runs (test_set=lake-runs),
each a record per run and step, beside the published scores of people and of Lake et al.'s BPL.
"""

from __future__ import annotations

from dataclasses import replace

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.experiments.omniglot import LONG_ITERATIONS, omniglot

#: Lake, Salakhutdinov & Tenenbaum 2015 (Science), error rates 4.5% and 3.3% over the 20 runs
PUBLISHED = {"people": 95.5, "bpl": 96.7}
LABELS = {"people": "people (Lake et al. 2015, not a model)",
          "bpl": "Bayesian program learning (Lake et al. 2015)"}


def omniglot_lake() -> Experiment:
    """The paper's 20-way 1-shot protocol (`omniglot(20, 1)`), on the background split, tested
    on the runs."""
    cell = omniglot(20, 1)
    config = replace(cell.config, split="background", test_set="lake-runs", test_tasks=20,
                     eval_chunk=20)
    steps = config.eval_steps
    iterations = LONG_ITERATIONS[(20, 1)]
    methods = (MethodSpec("maml", "MAML", seeds=1),
               MethodSpec("fomaml", "first-order MAML", seeds=1),
               MethodSpec("nearest-neighbour", "nearest neighbour baseline", seeds=1))
    return Experiment(
        id="omniglot-20w1s-lake-v1",
        title="Omniglot 20-way 1-shot on Lake et al.'s 20 one-shot runs (held-out alphabets)",
        benchmark="fewshot",
        config=config,
        methods=methods,
        paper=tuple((m, 1, steps, v) for m, v in PUBLISHED.items()),
        metric="accuracy",
        scales={
            "paper": Scale("the paper's 20-way 1-shot protocol: 60,000 meta-iterations, on "
                           "images_background; tested on the 20 runs"),
            "quick": Scale("a smoke check: 1,000 meta-iterations",
                           overrides={"iterations": 1_000, "val_every": 250,
                                      "checkpoint_every": 250}, seeds=1),
            "long": Scale(f"{iterations:,} meta-iterations: the paper's protocol, shortened to "
                          "fit a CPU (as omniglot-20w1s-v1's long scale)",
                          overrides={"iterations": iterations, "val_every": iterations // 10,
                                     "checkpoint_every": min(500, iterations // 10)}, seeds=1),
            "tiny": Scale("for tests: 4 meta-iterations of 2 tasks, 8 filters, all 20 runs",
                          overrides={"iterations": 4, "meta_batch": 2, "val_tasks": 2,
                                     "filters": 8, "val_every": 2, "checkpoint_every": 2,
                                     "check_every": 2, "log_every": 2}, seeds=1),
        },
        tables=(TableSpec("lake", "Omniglot 20-way 1-shot, Lake et al.'s 20 one-shot runs: "
                          "accuracy (%) over the runs after fine-tuning on each run's 20 "
                          "training drawings. The paper column holds Lake et al.'s (2015) "
                          "people and BPL, on the same runs; not the MAML paper's numbers",
                          shots=1, steps=tuple(sorted({0, 1, steps})),
                          methods=(*PUBLISHED, *(m.algorithm for m in methods))),),
        figures=(FigureSpec("curves", "Lake et al.'s one-shot runs: accuracy against "
                            "fine-tuning steps", methods=tuple(m.algorithm for m in methods),
                            shots=(1,), ylabel="accuracy over the runs (%)"),),
        notes="Test: Lake et al.'s 20 within-alphabet 20-way 1-shot runs (all_runs.zip), 20 "
              "test drawings each; the interval is over the 20 runs. Paper column: people "
              "95.5 and BPL 96.7 (Lake et al. 2015), not MAML's; MAML's own 20-way 1-shot "
              "95.8 is on random episodes of its split (omniglot-20w1s-v1). Training: "
              "images_background only (split=background), validation 4 of its alphabets.",
        paper_labels=LABELS,
    )


OMNIGLOT_LAKE = omniglot_lake()
