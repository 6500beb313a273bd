"""The paper's tables and figures as versioned experiment specs, and their registry."""

from maml_bench.experiments.base import Experiment, FigureSpec, MethodSpec, Scale, TableSpec
from maml_bench.experiments.miniimagenet import MINIIMAGENET
from maml_bench.experiments.omniglot import OMNIGLOT, OMNIGLOT_V2
from maml_bench.experiments.omniglot_lake import OMNIGLOT_LAKE
from maml_bench.experiments.rl import RL
from maml_bench.experiments.sinusoid import (
    SINUSOID_TABLE2,
    SINUSOID_TABLE2_20K,
    SINUSOID_TABLE2_CODE,
    SINUSOID_TABLE2_CODE_LR,
)
from maml_bench.registry import Registry

EXPERIMENTS: Registry[Experiment] = Registry("experiment")
EXPERIMENTS.register(SINUSOID_TABLE2.id, SINUSOID_TABLE2)
EXPERIMENTS.register(SINUSOID_TABLE2_CODE_LR.id, SINUSOID_TABLE2_CODE_LR)
EXPERIMENTS.register(SINUSOID_TABLE2_20K.id, SINUSOID_TABLE2_20K)
EXPERIMENTS.register(SINUSOID_TABLE2_CODE.id, SINUSOID_TABLE2_CODE)
for _experiment in (*OMNIGLOT, *OMNIGLOT_V2, OMNIGLOT_LAKE, *MINIIMAGENET, *RL):
    EXPERIMENTS.register(_experiment.id, _experiment)

DEFAULT_EXPERIMENT = SINUSOID_TABLE2.id

__all__ = ["DEFAULT_EXPERIMENT", "EXPERIMENTS", "Experiment", "FigureSpec", "MethodSpec",
           "Scale", "TableSpec"]
