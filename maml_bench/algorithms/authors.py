"""The MAML authors' own trained MiniImagenet model, meta-tested by this suite: their released
5-way 1-shot checkpoint loaded into the suite's Conv4, then the suite's episodes, fine-tuning and
accuracy. No training; it pins down data, preprocessing, model and evaluation on their own."""

from __future__ import annotations

from typing import Any

import torch

from maml_bench.algorithms.maml import MAML
from maml_bench.errors import UserError
from maml_bench.models.reference_weights import conv4_state, read_reference, weights_path
from maml_bench.tasks.base import SupervisedBenchmark
from maml_bench.tasks.fewshot.data_root import data_root

#: the network the released model is: the reference code's MiniImagenet Conv4
NEEDS = {"dataset": "miniimagenet", "ways": 5, "filters": 32, "bn_scale": "none",
         "network": "conv"}


class AuthorsMAML(MAML):
    """MAML with theta the authors' released weights (59,000 meta-iterations of their code)."""

    data_parallel = False  # nothing to split: it only meta-tests

    def __init__(self, benchmark: SupervisedBenchmark, config: Any, seed: int) -> None:
        odd = [f"{k}={getattr(config, k, None)}" for k, v in NEEDS.items()
               if getattr(config, k, None) != v]
        if odd:
            wanted = " ".join(f"{k}={v}" for k, v in NEEDS.items())
            raise UserError(f"maml-authors is the authors' 5-way MiniImagenet network ({wanted}); "
                            f"this run has {', '.join(odd)}: drop those --set values")
        path = weights_path(data_root())
        state = conv4_state(read_reference(path))  # checked before any work
        super().__init__(benchmark, config, seed)
        with torch.no_grad():
            for name, value in state.items():
                self.theta[name].copy_(value.to(self.theta[name].device))
        self.info["weights"] = str(path)

    @property
    def iterations(self) -> int:
        return 0
