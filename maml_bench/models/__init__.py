"""Plain nn.Modules used as meta-learned models, and their registry."""

from maml_bench.models.context import ContextInput
from maml_bench.models.conv import Conv4
from maml_bench.models.mlp import MLP
from maml_bench.registry import Registry

MODELS: Registry[type] = Registry("model")
MODELS.register("mlp", MLP)
MODELS.register("conv4", Conv4)

__all__ = ["MODELS", "MLP", "Conv4", "ContextInput"]
