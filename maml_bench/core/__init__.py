"""The meta-learning engine: functional inner loops and meta-gradients, nothing task-specific."""

from maml_bench.core.functional import (
    Params,
    SupervisedBatch,
    evaluate_adaptation,
    expand_params,
    inner_adapt,
    make_batched_forward,
    meta_loss,
    reference_meta_loss,
)

__all__ = [
    "Params",
    "SupervisedBatch",
    "evaluate_adaptation",
    "expand_params",
    "inner_adapt",
    "make_batched_forward",
    "meta_loss",
    "reference_meta_loss",
]
