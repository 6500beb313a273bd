from __future__ import annotations

import os

import pytest
import torch

# Tests run in CI mode: no progress bars, quiet logs, one torch thread (deterministic, fast).
os.environ.setdefault("CI", "true")
torch.set_num_threads(1)


@pytest.fixture
def tiny_runs(tmp_path):
    """Plan tiny-scale runs of the sinusoid experiment into a temporary directory."""
    from maml_bench.runner import plan_runs

    def plan(methods=None, overrides=None, out=None, seeds=None):
        return plan_runs("sinusoid-table2-v1", "tiny", overrides or [], methods, seeds,
                         out or tmp_path)

    return plan
