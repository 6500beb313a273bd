"""ANIL, "almost no inner loop" (Raghu et al. 2020): MAML whose inner loop adapts only the head.

The outer loop still meta-learns every parameter; at meta-test only the head is fine-tuned. The
paper finds this matches MAML on Omniglot and MiniImagenet: MAML's inner loop mostly reuses
features.
"""

from __future__ import annotations

from maml_bench.algorithms.maml import MAML


class ANIL(MAML):
    """MAML adapting only the network's last layer (its head) in the inner loop."""

    def adapted(self) -> list[str]:
        # The head is the module that owns the last parameter: Conv4's classifier, the MLP's
        # last Linear.
        head = next(reversed(self.theta)).rsplit(".", 1)[0]
        return [name for name in self.theta if name.rsplit(".", 1)[0] == head]
