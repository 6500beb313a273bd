"""Meta-learning algorithms and baselines, one family per file, and their registry."""

from maml_bench.algorithms.anil import ANIL
from maml_bench.algorithms.authors import AuthorsMAML
from maml_bench.algorithms.base import Algorithm
from maml_bench.algorithms.context import ContextVector
from maml_bench.algorithms.finetune import FineTuning, NearestNeighbour
from maml_bench.algorithms.maml import FOMAML, MAML
from maml_bench.algorithms.matchingnets import MatchingNets
from maml_bench.algorithms.metalstm import MetaLSTM
from maml_bench.algorithms.metasgd import MetaSGD
from maml_bench.algorithms.multitask import MultiTaskAverage, MultiTaskL2, MultiTaskMean
from maml_bench.algorithms.pretrain import Oracle, Pretrain
from maml_bench.algorithms.protonets import ProtoNets
from maml_bench.algorithms.reptile import Reptile
from maml_bench.algorithms.rl import (
    FOMAMLTRPO,
    MAMLTRPO,
    OracleRL,
    PretrainedRL,
    RandomRL,
    RLContextVector,
)
from maml_bench.registry import Registry

ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm")
ALGORITHMS.register("maml", MAML)
ALGORITHMS.register("fomaml", FOMAML)
ALGORITHMS.register("maml-authors", AuthorsMAML)
ALGORITHMS.register("reptile", Reptile)
ALGORITHMS.register("metasgd", MetaSGD)
ALGORITHMS.register("pretrain", Pretrain)
ALGORITHMS.register("oracle", Oracle)
ALGORITHMS.register("multitask-noreg", MultiTaskAverage)
ALGORITHMS.register("multitask-l2", MultiTaskL2)
ALGORITHMS.register("multitask-mean", MultiTaskMean)
ALGORITHMS.register("finetune", FineTuning)
ALGORITHMS.register("nearest-neighbour", NearestNeighbour)
ALGORITHMS.register("anil", ANIL)
ALGORITHMS.register("context-vector", ContextVector)
ALGORITHMS.register("metalstm", MetaLSTM)
ALGORITHMS.register("protonets", ProtoNets)
ALGORITHMS.register("matchingnets", MatchingNets)
ALGORITHMS.register("maml-trpo", MAMLTRPO)
ALGORITHMS.register("fomaml-trpo", FOMAMLTRPO)
ALGORITHMS.register("rl-pretrained", PretrainedRL)
ALGORITHMS.register("rl-random", RandomRL)
ALGORITHMS.register("rl-oracle", OracleRL)
ALGORITHMS.register("rl-context-vector", RLContextVector)

__all__ = ["ALGORITHMS", "Algorithm"]
