"""The reference code's Omniglot protocol (cbfinn/maml), the v2 experiments:

* padding=tf-same: TensorFlow's 'SAME' for the stride-2 convolutions (utils.py conv_block),
  against a convolution written out by hand from TensorFlow's padding rule, in float64: 28 -> 14
  pads 0 before and 1 after (PyTorch's padding=1 pads 1 and 1), 7 -> 4 pads 1 and 1;
* the per-task forward, the batched and the fused forwards agree with it; the backend gate
  (float64 meta-gradient against the loop and finite differences) passes, second and first
  order;
* the state dict's names are padding's either way, and the existing configs' hashes stay.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_gradients import cross_entropy
from torch.func import functional_call

from maml_bench.config import config_hash
from maml_bench.core import backends
from maml_bench.core.backends import MetaProblem, gate, select
from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.experiments.omniglot import REFERENCE_CODE
from maml_bench.models.conv import Conv4, SameConv2d, same_pads

V2 = ("omniglot-5w1s-v2", "omniglot-5w5s-v2", "omniglot-20w1s-v2", "omniglot-20w5s-v2")


def tf_same_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x [N, C, H, W], w [O, C, k, k] -> [N, O, ceil(H/s), ceil(W/s)], written from
    TensorFlow's documented rule: out = ceil(in / s), pad_total = max((out - 1) s + k - in, 0),
    pad_before = pad_total // 2; input positions outside the image read 0."""
    n, _, height, width = x.shape
    k = w.shape[-1]
    out_h, out_w = math.ceil(height / stride), math.ceil(width / stride)
    top = max((out_h - 1) * stride + k - height, 0) // 2
    left = max((out_w - 1) * stride + k - width, 0) // 2
    out = np.zeros((n, w.shape[0], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            for di in range(k):
                for dj in range(k):
                    r, c = i * stride + di - top, j * stride + dj - left
                    if 0 <= r < height and 0 <= c < width:
                        out[:, :, i, j] += x[:, :, r, c] @ w[:, :, di, dj].T
    return out + b[None, :, None, None]


def test_same_pads_is_tensorflows_rule():
    # the Omniglot Conv4's four stride-2 layers: 28 -> 14 -> 7 -> 4 -> 2
    assert [same_pads(s, 3, 2) for s in (28, 14, 7, 4)] == [(0, 1), (0, 1), (1, 1), (0, 1)]
    assert same_pads(84, 3, 1) == (1, 1)  # stride 1: symmetric, PyTorch's padding=1


@pytest.mark.parametrize("size", [7, 28])
def test_tf_same_stride_2_conv_is_a_hand_written_tensorflow_same_conv(size):
    torch.manual_seed(size)
    conv = SameConv2d(2, 3, 3, stride=2).double()
    x = torch.randn(2, 2, size, size, dtype=torch.float64)
    ours = conv(x).detach().numpy()
    w, b = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    np.testing.assert_allclose(ours, tf_same_conv(x.numpy(), w, b, 2), rtol=1e-12, atol=1e-12)
    symmetric = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1).detach().numpy()
    assert symmetric.shape == ours.shape
    if size == 7:  # 7 -> 4: SAME pads 1 and 1, PyTorch's padding=1 too
        np.testing.assert_allclose(ours, symmetric, rtol=1e-12, atol=1e-12)
    else:  # 28 -> 14: SAME pads 0 before and 1 after, so the windows sit one pixel later
        assert not np.allclose(ours, symmetric)
        shifted = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
        np.testing.assert_allclose(ours, shifted.detach().numpy(), rtol=1e-12, atol=1e-12)


def omniglot_v2_model(ways: int = 5, filters: int = 4, seed: int = 0) -> Conv4:
    """The v2 Conv4 (reference batch norm, init and padding), small, in float64."""
    torch.manual_seed(seed)
    return Conv4(1, ways, filters, 28, bn_scale=False, bn_eps=1e-3, init="reference",
                 padding="tf-same").double()


def test_forward_batched_and_fused_agree_with_tf_same():
    model = omniglot_v2_model()
    assert isinstance(model.features[0], SameConv2d)
    tasks, n = 3, 6
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(tasks, n, 1, 28, 28, generator=gen, dtype=torch.float64)
    # each task its own parameters, as after an inner step
    params = {k: v.detach() + 0.1 * torch.randn(tasks, *v.shape, generator=gen,
                                                 dtype=torch.float64)
              for k, v in model.named_parameters()}
    per_task = torch.stack([functional_call(model, {k: v[t] for k, v in params.items()},
                                            (x[t],)) for t in range(tasks)])
    torch.testing.assert_close(model.batched_forward(params, x), per_task, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(model.fused_forward(params, x), per_task, rtol=1e-10,
                               atol=1e-10)
    # and tf-same is not torch's: the same weights with padding 1 differ
    torch_padded = Conv4(1, 5, 4, 28, bn_scale=False, bn_eps=1e-3).double()
    torch_padded.load_state_dict(model.state_dict())
    assert not torch.allclose(torch_padded(x[0]), model(x[0]))


def test_state_dict_names_are_the_same_with_either_padding():
    """Checkpoints of padding=torch runs load into a tf-same network and back (the committed
    ones are loaded by tests/test_safe_files.py)."""
    ours, theirs = omniglot_v2_model(), Conv4(1, 5, 4, 28, bn_scale=False, bn_eps=1e-3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.float().state_dict())
    assert list(Conv4(1, 5, 4, 28, padding="tf-same").state_dict()) == list(
        Conv4(1, 5, 4, 28).state_dict())
    with pytest.raises(ValueError, match="padding"):
        Conv4(padding="valid")


def _problem(first_order: bool, steps: int = 1) -> tuple[MetaProblem, SupervisedBatch]:
    model = omniglot_v2_model(ways=3)
    gen = torch.Generator().manual_seed(2)
    ways, shots = 3, 2
    x = torch.randn(2, 2 * ways * shots, 1, 28, 28, generator=gen, dtype=torch.float64)
    labels = torch.arange(ways).repeat(2 * shots).expand(2, -1)
    n = ways * shots
    batch = SupervisedBatch(x[:, :n], labels[:, :n], x[:, n:], labels[:, n:])
    adapted = tuple(k for k, _ in model.named_parameters() if k not in model.norm_keys)
    return MetaProblem(model, cross_entropy, steps, 0.4, first_order, adapted), batch


@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
@pytest.mark.parametrize("backend", ["batched", "fused"])
def test_the_backend_gate_passes_with_tf_same(monkeypatch, backend, first_order):
    """float64 meta-gradient of the batched and fused backends against the per-task loop and
    finite differences, for the v2 Conv4 (tf-same, no scale, eps 1e-3, norm not adapted)."""
    monkeypatch.setattr(backends, "_CHECKED", {})
    problem, batch = _problem(first_order)
    reason = gate(backend, problem, lambda: batch)
    if reason is not None and "first order" in reason:  # a backend's own refusal, not a failure
        pytest.skip(reason)
    assert reason is None
    try:
        assert select(backend, problem, lambda: batch) == (backend, {})
    except UserError as err:  # pragma: no cover - the gate said yes above
        pytest.fail(str(err))


def test_the_gate_checks_each_padding_on_its_own(monkeypatch):
    monkeypatch.setattr(backends, "_CHECKED", {})
    problem, _ = _problem(False)
    other = Conv4(1, 3, 4, 28, bn_scale=False, bn_eps=1e-3).double()
    assert backends._key("fused", problem) != backends._key(
        "fused", dataclasses.replace(problem, model=other))


def test_the_v2_experiments_are_the_v1_cells_with_the_reference_code():
    for v2 in V2:
        new = EXPERIMENTS.get(v2).config
        old = EXPERIMENTS.get(v2.replace("-v2", "-v1")).config
        assert {k: getattr(new, k) for k in REFERENCE_CODE} == REFERENCE_CODE
        rest = {f.name for f in dataclasses.fields(new)} - set(REFERENCE_CODE)
        assert {k: getattr(new, k) for k in rest} == {k: getattr(old, k) for k in rest}
        assert [m.algorithm for m in EXPERIMENTS.get(v2).methods] == ["maml", "fomaml"]
        paper_steps = {steps for _, _, steps, _ in EXPERIMENTS.get(v2).paper}
        assert paper_steps == {3 if "-5w" in v2 else 5}  # the paper's number at its own step
        assert {*paper_steps, 10} <= set(EXPERIMENTS.get(v2).tables[0].steps)


def test_padding_leaves_the_default_hashes_alone():
    """padding is hashed only when set: the v1 runs' checkpoints keep their hash."""
    config = EXPERIMENTS.get("omniglot-5w1s-v1").config
    assert config.padding == "torch" and config_hash(config) == "273419d49f9c"
    assert config_hash(dataclasses.replace(config, padding="tf-same")) != config_hash(config)
    for name in ("omniglot-5w5s-v1", "omniglot-20w1s-v1", "miniimagenet-5w1s-v2"):
        assert EXPERIMENTS.get(name).config.padding == "torch"


def test_the_v2_benchmark_builds_the_tf_same_network():
    """episodes.FewShot.make_model hands padding to Conv4 (no data needed: built directly)."""
    from maml_bench.tasks.fewshot.episodes import FewShot

    config = dataclasses.replace(EXPERIMENTS.get("omniglot-5w1s-v2").config, filters=4)
    bench = FewShot.__new__(FewShot)
    bench.config = config
    bench.pools = {"train": torch.zeros(1, 1, 1, 28, 28, dtype=torch.uint8)}
    model = bench.make_model()
    assert model.padding == "tf-same" and isinstance(model.features[0], SameConv2d)
    assert model.bn_eps == 1e-3 and "features.1.weight" not in dict(model.named_parameters())
