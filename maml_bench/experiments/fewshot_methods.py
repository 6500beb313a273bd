"""The later few-shot methods run beside MAML on the same episodes (issue: the rest of Table 1
and Table 3), with each method's own published number and its source.

A method's published number enters a table's `paper` column; its label names the source, so a
reader never mistakes a ProtoNets number for one of the MAML paper's.
"""

from __future__ import annotations

from typing import Any

from maml_bench.experiments.base import MethodSpec

#: (dataset, ways, shots) -> method -> published accuracy (%); sources in SOURCES
PUBLISHED: dict[tuple[str, int, int], dict[str, float]] = {
    ("omniglot", 5, 1): {"matchingnets": 98.1, "protonets": 98.8, "reptile": 97.68,
                         "metasgd": 99.53, "context-vector": 94.9},
    ("omniglot", 5, 5): {"matchingnets": 98.9, "protonets": 99.7, "reptile": 99.48,
                         "metasgd": 99.93, "context-vector": 97.7},
    ("omniglot", 20, 1): {"matchingnets": 93.8, "protonets": 96.0, "reptile": 89.43,
                          "metasgd": 95.93},
    ("omniglot", 20, 5): {"matchingnets": 98.5, "protonets": 98.9, "reptile": 97.12,
                          "metasgd": 98.97},
    ("miniimagenet", 5, 1): {"matchingnets": 43.56, "metalstm": 43.44, "protonets": 49.42,
                             "reptile": 49.97, "metasgd": 50.47},
    ("miniimagenet", 5, 5): {"matchingnets": 55.31, "metalstm": 60.60, "protonets": 68.20,
                             "reptile": 65.99, "metasgd": 64.03},
}

SOURCES = {
    "matchingnets": "Vinyals et al. 2016, as in MAML Table 1",
    "metalstm": "Ravi & Larochelle 2017, as in MAML Table 1",
    "context-vector": "MAML paper Table 3",
    "protonets": "Snell et al. 2017",
    "reptile": "Nichol et al. 2018, transductive",
    "metasgd": "Li et al. 2017",
    "anil": "Raghu et al. 2020",
}

NAMES = {"matchingnets": "matching nets", "metalstm": "meta-learner LSTM",
         "context-vector": "context vector", "protonets": "ProtoNets", "reptile": "Reptile",
         "metasgd": "Meta-SGD", "anil": "ANIL"}


def protonet_settings(dataset: str, shots: int) -> dict[str, Any]:
    """Snell et al. 2017: one episode per step with more ways than at test (Omniglot 60;
    MiniImagenet 30 for 1-shot, 20 for 5-shot) and 5 (Omniglot) or 15 query images per class."""
    if dataset == "omniglot":
        return {"protonet_train_ways": 60, "train_query": 5, "meta_batch": 1}
    if dataset != "miniimagenet":  # generated demo data: too few classes for wider episodes
        return {"train_query": 15, "meta_batch": 1}
    return {"protonet_train_ways": 30 if shots == 1 else 20, "train_query": 15, "meta_batch": 1}


def matching_settings(dataset: str) -> dict[str, Any]:
    """The MAML paper's MiniImagenet matching-nets row is Vinyals et al.'s with full context
    embeddings (FCE); its Omniglot rows are without. Vinyals et al. do not state the attention
    LSTM's number of steps K; 2 is what a public PyTorch reproduction of their results uses
    (oscarknagg/few-shot, `unrolling_steps=2`)."""
    return {"matching_fce_steps": 2} if dataset == "miniimagenet" else {}


def reptile_settings(dataset: str, ways: int, shots: int) -> dict[str, Any]:
    """Nichol et al. 2018 as their code runs it (openai/supervised-reptile: the README's
    commands for the paper, args.py, models.py, reptile.py, train.py). Every setting: an inner
    Adam (beta1 = 0, beta2 TF's 0.999; models.py) at --learning-rate on the minibatch's summed
    loss (TF's minimize of the per-example loss vector), --meta-batch 5 tasks of --train-shots
    images per class, --inner-iters steps on minibatches of --inner-batch, theta interpolated
    with a step annealed from --meta-step 1 to --meta-step-final 0 over --meta-iters; meta-test:
    --eval-iters 50 steps of the same Adam on minibatches of --eval-batch support images, then
    every query at once (--transductive). Omniglot 20-way: 10 inner steps of 20 at 0.0005,
    200,000 iterations, eval batch 10; MiniImagenet: 8 inner steps, 15 train shots, eval batch
    5 (1-shot) or 15 (5-shot)."""
    common = {"reptile_inner_optimizer": "adam", "reptile_adam_betas": (0.0, 0.999),
              "reptile_inner_loss": "sum", "reptile_outer": "interpolate",
              "reptile_meta_step": 1.0, "reptile_meta_step_final": 0.0, "meta_batch": 5,
              "inner_lr": 0.001, "eval_steps": REPTILE_EVAL_ITERS, "iterations": 100_000,
              # their tasks have no query set; ours only give the logged training loss, and
              # 5 per class keep train_shots + queries within 20 images per class
              "train_query": 5}
    if dataset == "omniglot" and ways == 20:
        return common | {"train_shots": 10, "reptile_inner_batch": 20, "reptile_inner_steps": 10,
                         "inner_lr": 0.0005, "iterations": 200_000, "reptile_eval_batch": 10}
    if dataset == "omniglot":
        return common | {"train_shots": 10, "reptile_inner_batch": 10, "reptile_inner_steps": 5,
                         "reptile_eval_batch": 5}
    return common | {"train_shots": 15, "reptile_inner_batch": 10, "reptile_inner_steps": 8,
                     "reptile_eval_batch": 5 if shots == 1 else 15}


#: Reptile's fine-tuning steps at meta-test (--eval-iters): its rows' step in "methods" tables
REPTILE_EVAL_ITERS = 50


def method_settings(method: str, dataset: str, ways: int, shots: int) -> dict[str, Any]:
    """A later method's own hyperparameters (its paper's), over the experiment's config."""
    if method == "protonets":
        return protonet_settings(dataset, shots)
    if method == "metalstm":
        return {"meta_batch": 1}  # its paper's episodes
    if method == "matchingnets":
        return matching_settings(dataset)
    if method == "reptile":
        return reptile_settings(dataset, ways, shots)
    return {}


def later_methods(dataset: str, ways: int, shots: int) -> tuple[MethodSpec, ...]:
    """Every later method of the setting, labelled with the source of its published number."""
    published = PUBLISHED.get((dataset, ways, shots), {})
    specs = []
    for method, name in NAMES.items():
        overrides = method_settings(method, dataset, ways, shots)
        name += " (FCE)" if overrides.get("matching_fce_steps") else ""
        label = f"{name} ({SOURCES[method]})" if method in published else name
        specs.append(MethodSpec(method, label, seeds=1, overrides=overrides))
    return tuple(specs)


def final_steps(methods: tuple[MethodSpec, ...], steps: int) -> dict[str, int]:
    """Method -> the fine-tuning step its own protocol ends at: its eval_steps override, else
    the experiment's `steps` (the metric learners' curves are flat, so any step holds theirs)."""
    return {m.algorithm: m.overrides.get("eval_steps", steps) for m in methods}


def published_rows(dataset: str, ways: int, shots: int, own_steps: dict[str, int]
                   ) -> tuple[tuple[str, int, int, float], ...]:
    """The published numbers as paper rows (method, shots, step, value), each at the last step
    of its method's own protocol (`own_steps`, from `final_steps`)."""
    return tuple((m, shots, own_steps[m], v)
                 for m, v in PUBLISHED.get((dataset, ways, shots), {}).items())
