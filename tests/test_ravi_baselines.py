"""Ravi & Larochelle's baselines (baseline_protocol=ravi): their code's settings on the real
MiniImagenet experiments, Torch's SGD with a decay, running batch-norm statistics, and the
nearest neighbour in evaluation mode."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from maml_bench.algorithms.ravi_baselines import (
    finetune_episode,
    nearest_labels,
    nearest_neighbour,
    new_head,
    sgd_steps,
    torch7_batch_norm_init,
    tuned_sgd,
)
from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.experiments import EXPERIMENTS
from maml_bench.models.conv import Conv4, keep_running_statistics

#: read from twitter/meta-learning-lstm (docs/miniimagenet.md, "The baselines"):
#: model/baselines/pre-train.lua and conf, pre-trained-SGD.lua, the nEval of the test episodes
RAVI_CODE = {
    "baseline_protocol": "ravi", "pretrain_batch": 64, "iterations": 30_000, "meta_lr": 1e-3,
    "filters": 64, "bn_scale": "learned", "bn_eps": 1e-3, "init": "torch", "test_query": 15,
    "eval_steps": 15, "val_tasks": 100,
    "finetune_lrs": (0.5, 0.1, 0.01, 0.001, 0.0001, 0.00001),
    "finetune_lr_decays": (1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.0),
}


@pytest.mark.parametrize("experiment", ["miniimagenet-5w1s-v2", "miniimagenet-5w5s-v2"])
@pytest.mark.parametrize("method", ["finetune", "nearest-neighbour"])
def test_real_miniimagenet_baselines_take_ravi_and_larochelles_settings(experiment, method):
    spec = next(m for m in EXPERIMENTS.get(experiment).methods if m.algorithm == method)
    assert {k: spec.overrides.get(k) for k in RAVI_CODE} == RAVI_CODE


def test_the_demo_keeps_the_suites_baselines():
    spec = next(m for m in EXPERIMENTS.get("miniimagenet-5w1s-demo-v1").methods
                if m.algorithm == "finetune")
    assert "baseline_protocol" not in spec.overrides


def small_net(dtype=torch.float64) -> Conv4:
    torch.manual_seed(0)
    net = Conv4(3, 5, channels=4, image_size=16, downsample="maxpool", head="flatten",
                bn_eps=1e-3)
    return keep_running_statistics(net).to(dtype)


def episodes(tasks: int = 3, shots: int = 1, query: int = 3, dtype=torch.float64
             ) -> SupervisedBatch:
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(5).repeat_interleave
    return SupervisedBatch(
        torch.rand(tasks, 5 * shots, 3, 16, 16, generator=gen, dtype=dtype),
        labels(shots).expand(tasks, -1).clone(),
        torch.rand(tasks, 5 * query, 3, 16, 16, generator=gen, dtype=dtype),
        labels(query).expand(tasks, -1).clone())


def test_sgd_steps_decay_as_torchs_optim_sgd():
    """Three steps of lr / (1 + t decay) equal PyTorch's own SGD under that schedule, in
    float64, parameters and running statistics alike."""
    batch = episodes()
    x, y = batch.x_support[0], batch.y_support[0]
    ours, ref = small_net().train(), small_net().train()
    lr, decay = 0.1, 0.5
    seen = []
    assert sgd_steps(ours, x, y, 3, lr, decay, seen.append)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + t * decay))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        opt.step()
        schedule.step()
    assert seen == [0, 1, 2]
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
    assert not torch.equal(ours.classifier.weight, small_net().classifier.weight)


def test_running_statistics_are_torchs_batch_norm():
    """Training mode: the batch's own statistics, which move the running ones by 0.1 (the
    variance unbiased); evaluation mode: the running ones."""
    net = small_net()
    bn = net.features[1]
    x = episodes().x_support.flatten(0, 1)
    h = net.features[0](x)
    net.train()(x)
    mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var)
    bn.eval()
    expected = ((h - bn.running_mean.view(1, -1, 1, 1))
                / (bn.running_var.view(1, -1, 1, 1) + 1e-3).sqrt()
                * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(bn(h), expected)
    assert "features.1.running_mean" in net.state_dict()


def test_running_statistics_need_a_learned_scale():
    net = Conv4(3, 5, channels=4, image_size=16, downsample="maxpool", head="flatten",
                bn_scale=False)
    with pytest.raises(ValueError, match="bn_scale=learned"):
        keep_running_statistics(net)


def test_nearest_neighbour_is_cosine_in_evaluation_mode():
    """A query that is a support image is labelled by it; in evaluation mode a query's label
    does not depend on the other queries of its episode; the network is left in training."""
    net = small_net()
    net.train()(episodes(tasks=8).x_support.flatten(0, 1))  # some running statistics
    batch = episodes()
    same = SupervisedBatch(batch.x_support, batch.y_support, batch.x_support, batch.y_support)
    assert nearest_neighbour(net, same, chunk=2).tolist() == [100.0] * 3
    assert net.training
    x_q = batch.x_query.clone()
    x_q[:, 1:] = torch.rand_like(x_q[:, 1:]) * 5
    other = SupervisedBatch(batch.x_support, batch.y_support, x_q, batch.y_query)
    assert torch.equal(nearest_labels(net, batch)[:, 0], nearest_labels(net, other)[:, 0])
    assert not torch.equal(nearest_labels(net, batch), nearest_labels(net, other))
    # by hand: cosine similarity of flattened last-block features, running statistics
    net.eval()
    with torch.no_grad():
        fs = F.normalize(net.features(batch.x_support[0]).flatten(1), dim=-1)
        fq = F.normalize(net.features(batch.x_query[0]).flatten(1), dim=-1)
    labels = batch.y_support[0][(fq @ fs.T).argmax(-1)]
    net.train()
    expected = (labels == batch.y_query[0]).double().mean() * 100
    assert nearest_neighbour(net, batch, 1)[0].item() == pytest.approx(expected.item())


def test_a_diverged_episode_is_nan_not_chance():
    net = small_net()
    net.classifier = new_head(net.classifier.in_features, 5, 0, torch.device("cpu")).double()
    batch = episodes()
    curve = finetune_episode(net, batch, 0, 3, 1e300, 0.0, every_step=True)
    assert len(curve) == 4 and math.isfinite(curve[0]) and all(math.isnan(v) for v in curve[1:])
    for steps in (1, 3):  # diverged at the last step too
        assert math.isnan(finetune_episode(net, batch, 0, steps, 1e300, 0.0, False)[0])
    assert all(math.isfinite(v) for v in finetune_episode(net, batch, 0, 3, 0.01, 0.0, True))


def test_the_head_is_torchs_default_from_its_seed():
    a, b = (new_head(100, 5, 7, torch.device("cpu")) for _ in range(2))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert a.weight.abs().max() <= 0.1 and a.weight.abs().max() > 0.09
    assert not torch.equal(new_head(100, 5, 8, torch.device("cpu")).weight, a.weight)


def test_the_grid_picks_the_best_validation_pair_and_never_a_diverged_one():
    """tuned_sgd keeps, per K, the (lr, decay) of the best mean validation accuracy after the
    last step; a pair whose episodes diverge scores -inf; the test curves use the choice and
    leave the base network as it was."""
    net = small_net()
    net.classifier = new_head(net.classifier.in_features, 5, 0, torch.device("cpu")).double()
    before = copy.deepcopy(net.state_dict())
    val, test = episodes(tasks=2), episodes(tasks=3)
    bench = SimpleNamespace(eval_sets=lambda split: {1: val if split == "val" else test})
    config = SimpleNamespace(finetune_lrs=(1e300, 0.5, 0.01), finetune_lr_decays=(0.0, 1.0),
                             eval_steps=2)
    info: dict = {}
    curves = tuned_sgd(net, net, bench, config, info, "test")
    chosen = info["ravi_finetune"]["1"]
    assert chosen["lr"] != 1e300
    scores = {(lr, d): torch.tensor([finetune_episode(net, val, t, 2, lr, d, False)
                                     for t in range(2)]).mean().item()
              for lr in (0.5, 0.01) for d in (0.0, 1.0)}
    assert chosen["val_accuracy"] == max(scores.values())
    assert scores[(chosen["lr"], chosen["decay"])] == max(scores.values())
    assert curves[1].shape == (3, 3)
    expected = [finetune_episode(net, test, t, 2, chosen["lr"], chosen["decay"], True)
                for t in range(3)]
    assert curves[1].tolist() == expected
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_ravi_protocol_needs_the_conv_net_with_a_learned_scale():
    from maml_bench.tasks.fewshot.episodes import FewShotConfig

    with pytest.raises(UserError, match="baseline_protocol=ravi"):
        FewShotConfig(dataset="miniimagenet", baseline_protocol="ravi",
                      bn_scale="none").validate()
    with pytest.raises(UserError, match="finetune_lr_decays"):
        FewShotConfig(dataset="miniimagenet", finetune_lr_decays=(0.1,)).validate()


def test_batch_norm_starts_as_torch7s():
    """Torch7's BatchNormalization:reset(): scale uniform in [0, 1], offset 0, from the seed."""
    a, b = small_net(), small_net()
    torch7_batch_norm_init(a, 5)
    torch7_batch_norm_init(b, 5)
    scales = torch.cat([m.weight for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    offsets = torch.cat([m.bias for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert scales.min() >= 0 and scales.max() <= 1 and scales.std() > 0.1
    assert torch.equal(offsets, torch.zeros_like(offsets))
    assert torch.equal(a.features[1].weight, b.features[1].weight)
