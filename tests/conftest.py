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


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Decoded copies go to a temporary cache, and no pools of another root leak in."""
    from maml_bench.tasks.fewshot import episodes, pools
    from maml_bench.tasks.fewshot.data_root import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    pools.load.cache_clear()
    episodes._cached_episodes.cache_clear()
    yield
    pools.load.cache_clear()
    episodes._cached_episodes.cache_clear()


@pytest.fixture(autouse=True)
def _restore_data_root():
    """`--data-root` sets MAML_BENCH_DATA in this process (so pool workers inherit it): put it
    back after each test, with the pools loaded from it, so no test sees another's data."""
    from maml_bench.tasks.fewshot import episodes, pools
    from maml_bench.tasks.fewshot.data_root import DATA_ENV

    before = os.environ.get(DATA_ENV)
    yield
    if os.environ.get(DATA_ENV) != before:
        if before is None:
            os.environ.pop(DATA_ENV, None)
        else:
            os.environ[DATA_ENV] = before
        pools.load.cache_clear()
        episodes._cached_episodes.cache_clear()
