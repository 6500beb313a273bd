"""maml-bench: benchmark and reproduction suite for Model-Agnostic Meta-Learning."""

__version__ = "0.1.0"
