"""The context-vector comparison of the MAML paper (App. C.2, Table 3; Tables 4/5 for RL).

Free parameters z join the network's input (for images as extra channels, free per pixel) and
are the only ones adapted in the inner loop; the network and z's initial value are meta-learned
as in MAML. It asks whether MAML's gain needs all weights adapted or a task embedding would do.
"""

from __future__ import annotations

from torch import nn

from maml_bench.algorithms.base import seeded_model
from maml_bench.algorithms.maml import MAML
from maml_bench.models.context import CONTEXT, ContextInput
from maml_bench.tasks.base import SupervisedBenchmark


class ContextVector(MAML):
    """MAML over a network with a context input z, adapting only z in the inner loop."""

    def build_model(self, benchmark: SupervisedBenchmark, seed: int) -> nn.Module:
        size = self.config.context_size
        image = getattr(benchmark, "image_shape", None)  # (C, H, W) for images
        shape = (size, *image[1:]) if image is not None else (size,)
        model = ContextInput(seeded_model(benchmark, seed, extra_inputs=size), shape)
        return model.to(self.device)  # z is made on the CPU

    def adapted(self) -> list[str]:
        return [CONTEXT]
