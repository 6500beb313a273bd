"""The sinusoid task distribution follows the paper's protocol."""

from __future__ import annotations

import math

import torch

from maml_bench.config import apply_overrides
from maml_bench.tasks.sinusoid import Sinusoid, SinusoidConfig


def test_train_batches_follow_the_paper():
    bench = Sinusoid(SinusoidConfig())
    batch = bench.train_batch(torch.Generator().manual_seed(0), 500, 10, 10)
    assert batch.x_support.shape == (500, 10, 1) and batch.x_query.shape == (500, 10, 1)
    amp, phase = batch.task_info[:, 0], batch.task_info[:, 1]
    assert amp.min() >= 0.1 and amp.max() <= 5.0 and amp.std() > 1.0
    assert phase.min() >= 0 and phase.max() <= math.pi
    assert batch.x_support.min() >= -5 and batch.x_support.max() <= 5
    expected = amp[:, None, None] * torch.sin(batch.x_query - phase[:, None, None])
    torch.testing.assert_close(batch.y_query, expected)


def test_test_tasks_are_fixed_and_shared_across_shots():
    config = apply_overrides(SinusoidConfig(), {"test_tasks": 50, "val_tasks": 20})
    first = Sinusoid(config).eval_sets("test")
    again = Sinusoid(config).eval_sets("test")
    assert set(first) == {5, 10, 20}
    torch.testing.assert_close(first[5].x_support, again[5].x_support)
    # The same tasks for every K, K support points being the first K of the task's pool.
    torch.testing.assert_close(first[5].task_info, first[20].task_info)
    torch.testing.assert_close(first[5].x_support, first[20].x_support[:, :5])
    assert first[5].x_query.shape[1] == 5 and first[20].x_query.shape[1] == 20
    val = Sinusoid(config).eval_sets("val")
    assert not torch.equal(val[5].task_info[:20], first[5].task_info[:20])


def test_fixed_query_size_option():
    config = apply_overrides(SinusoidConfig(), {"test_tasks": 10, "test_query": 100})
    sets = Sinusoid(config).eval_sets("test")
    assert all(batch.x_query.shape[1] == 100 for batch in sets.values())


def test_oracle_inputs_append_task_parameters():
    bench = Sinusoid(SinusoidConfig())
    batch = bench.train_batch(torch.Generator().manual_seed(0), 3, 4, 4)
    x = bench.with_task_info(batch.x_support, batch.task_info)
    assert x.shape == (3, 4, 3)
    torch.testing.assert_close(x[:, :, 1:], batch.task_info[:, None, :].expand(3, 4, 2))


def test_reference_code_weight_init():
    from maml_bench.errors import UserError
    from maml_bench.tasks.sinusoid import SinusoidCodeConfig

    model = Sinusoid(SinusoidCodeConfig()).make_model()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all()
        else:
            assert p.abs().max() <= 0.02 and 0.005 < p.std() < 0.012
    default = Sinusoid(SinusoidConfig()).make_model()
    assert default.net[0].bias.abs().sum() > 0  # PyTorch's default init is left alone
    try:
        apply_overrides(SinusoidCodeConfig(), ["weight_init=xavier"])
    except UserError as err:
        assert "weight_init=xavier is invalid: must be one of torch | reference-code" in str(err)
    else:
        raise AssertionError("bad weight_init accepted")
