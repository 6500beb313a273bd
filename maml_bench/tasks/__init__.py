"""Task distributions (benchmarks) and their registry."""

from maml_bench.registry import Registry
from maml_bench.tasks.sinusoid import Sinusoid

BENCHMARKS: Registry[type] = Registry("benchmark")
BENCHMARKS.register("sinusoid", Sinusoid)

__all__ = ["BENCHMARKS", "Sinusoid"]
