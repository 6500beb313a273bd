"""Task distributions (benchmarks) and their registry."""

from maml_bench.registry import Registry
from maml_bench.tasks.fewshot.episodes import FewShot
from maml_bench.tasks.rl import MetaRL
from maml_bench.tasks.sinusoid import Sinusoid

BENCHMARKS: Registry[type] = Registry("benchmark")
BENCHMARKS.register("sinusoid", Sinusoid)
BENCHMARKS.register("fewshot", FewShot)
BENCHMARKS.register("meta-rl", MetaRL)

__all__ = ["BENCHMARKS", "Sinusoid"]
