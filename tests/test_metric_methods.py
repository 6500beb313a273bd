"""Prototypical Networks and Matching Networks: their scores on hand-made embeddings, and on the
real Omniglot (skipped without it) learning, checkpoints and the meta-test output."""

from __future__ import annotations

import io

import pytest
import torch

from maml_bench.algorithms.matchingnets import MatchingNets, cosine_attention, label_log_probs
from maml_bench.algorithms.protonets import ProtoNets, prototype_logits
from maml_bench.core.functional import SupervisedBatch
from maml_bench.errors import UserError
from maml_bench.runner import plan_runs
from maml_bench.tasks.fewshot.data_root import data_root
from maml_bench.tasks.fewshot.episodes import FewShot

OMNIGLOT_ROOT = data_root() / "omniglot"
needs_omniglot = pytest.mark.skipif(
    not OMNIGLOT_ROOT.is_dir(),
    reason=f"real Omniglot not found at {OMNIGLOT_ROOT}: put images_background.zip and "
           "images_evaluation.zip there (or set MAML_BENCH_DATA to a folder holding omniglot/)")
METHODS = [ProtoNets, MatchingNets]


def tiny(tmp_path, *overrides: str):
    """The tiny Omniglot 5-way 1-shot config (8 filters) with `overrides`, and its benchmark."""
    (run,) = plan_runs("omniglot-5w1s-v1", "tiny", list(overrides), ["maml"], None, tmp_path)
    return run.config, FewShot(run.config)


def test_prototype_logits_are_minus_squared_distances_to_class_means():
    # class 0: (0, 0) and (2, 0), mean (1, 0); class 1: (0, 3)
    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    y_support = torch.tensor([[0, 0, 1]])
    query = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 3.0]]])
    logits = prototype_logits(support, y_support, query, 2)
    expected = -torch.tensor([[[1.0, 5.0], [1.0, 9.0], [10.0, 0.0]]])
    torch.testing.assert_close(logits, expected)
    # random episodes: the same as the explicit differences to the class means
    gen = torch.Generator().manual_seed(0)
    support, query = torch.randn(3, 8, 5, generator=gen), torch.randn(3, 6, 5, generator=gen)
    y_support = torch.arange(4).repeat(2).expand(3, 8)
    means = torch.stack([support[:, y_support[0] == c].mean(1) for c in range(4)], 1)
    distances = (query.unsqueeze(2) - means.unsqueeze(1)).pow(2).sum(-1)
    torch.testing.assert_close(prototype_logits(support, y_support, query, 4), -distances)


def test_matching_attention_is_a_distribution_led_by_an_identical_support_example():
    gen = torch.Generator().manual_seed(1)
    support = torch.randn(2, 6, 4, generator=gen)  # distinct supports
    query = torch.cat([support[:, [4, 1]], torch.randn(2, 3, 4, generator=gen)], 1)
    attention = cosine_attention(query, support)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 5))
    assert (attention > 0).all()
    y_support = torch.tensor([0, 1, 2, 0, 1, 2]).expand(2, 6)
    log_probs = label_log_probs(attention, y_support, 3)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5))
    # a class's probability is the attention on its support examples
    torch.testing.assert_close(log_probs[:, :, 1].exp(), attention[:, :, [1, 4]].sum(-1))
    assert (attention[:, 0].argmax(-1) == 4).all() and (attention[:, 1].argmax(-1) == 1).all()
    one_shot = label_log_probs(attention, torch.tensor([0, 1, 2, 3, 4, 5]).expand(2, 6), 6)
    assert (one_shot[:, 0].argmax(-1) == 4).all() and (one_shot[:, 1].argmax(-1) == 1).all()



#: config hash of the Omniglot paper runs under way when the metric settings were added
RUNNING = {"omniglot-5w1s-v1": "273419d49f9c"}


@pytest.mark.parametrize(("name", "value"), [
    ("protonet_train_ways", 60), ("protonet_lr_halving", 0), ("matching_fce_steps", 5)])
def test_the_metric_settings_leave_the_hashes_of_running_experiments_alone(name, value):
    """At their defaults they must not change those runs' config hash (or the runs could not
    resume); when set they must."""
    import dataclasses

    from maml_bench.config import config_hash
    from maml_bench.experiments import EXPERIMENTS

    for experiment, expected in RUNNING.items():
        config = EXPERIMENTS.get(experiment).config
        assert config_hash(config) == expected
        assert config_hash(dataclasses.replace(config, **{name: value})) != expected


def twins(bench: FewShot) -> SupervisedBatch:
    """Test episodes whose queries are the support images, shuffled."""
    real = bench.eval_sets("test")[1]
    order = torch.randperm(real.x_support.shape[1], generator=torch.Generator().manual_seed(0))
    return SupervisedBatch(real.x_support, real.y_support, real.x_support[:, order],
                           real.y_support[:, order])


@needs_omniglot
@pytest.mark.parametrize("method", METHODS)
def test_a_query_identical_to_a_support_image_gets_its_label(method, tmp_path):
    config, bench = tiny(tmp_path)
    algorithm = method(bench, config, 0)
    batch = twins(bench)
    with torch.no_grad():  # untrained: the twin alone is at distance 0 / cosine 1
        scores = algorithm.episode_scores(batch, config.ways)
    assert (scores.argmax(-1) == batch.y_query).all()
    if method is MatchingNets:
        support, query = algorithm.embed(batch)
        torch.testing.assert_close(algorithm.attention(support, query).sum(-1),
                                   torch.ones(scores.shape[:2]))


@needs_omniglot
@pytest.mark.parametrize("steps", [0, 2])
def test_matching_nets_with_and_without_full_context_embeddings(steps, tmp_path):
    config, bench = tiny(tmp_path, f"matching_fce_steps={steps}")
    algorithm = MatchingNets(bench, config, 0)
    assert ("fce" in algorithm.modules()) == (steps > 0)
    fce = [] if algorithm.fce is None else list(algorithm.fce.parameters())
    before = [p.detach().clone() for p in fce]
    loss = algorithm.train_step(0)
    assert torch.isfinite(loss) and 0 < loss.item() < 10
    # the context LSTMs are trained with the embedding
    assert all(not torch.equal(a, p) for a, p in zip(before, fce, strict=True))
    batch = bench.eval_sets("test")[1]
    with torch.no_grad():
        support, query = algorithm.embed(batch)
        attention = algorithm.attention(support, query)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    assert algorithm.evaluate()[1].shape == (config.test_tasks, config.eval_steps + 1)


@needs_omniglot
@pytest.mark.parametrize(("method", "overrides"), [
    (ProtoNets, ["protonet_train_ways=10", "protonet_lr_halving=2"]),
    (MatchingNets, ["matching_fce_steps=2"]),
])
def test_a_checkpoint_reproduces_the_next_training_losses(method, overrides, tmp_path):
    config, bench = tiny(tmp_path, *overrides)
    original = method(bench, config, 0)
    for it in range(3):
        original.train_step(it)
    buffer = io.BytesIO()  # through bytes, as the runner's checkpoints
    torch.save(original.state_dict(), buffer)
    expected = [original.train_step(it).item() for it in (3, 4)]
    resumed = method(bench, config, 7)  # another seed: everything must come from the state
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert [resumed.train_step(it).item() for it in (3, 4)] == expected


@needs_omniglot
def test_protonets_trains_on_wider_episodes_with_a_halving_step_size(tmp_path):
    config, bench = tiny(tmp_path, "protonet_train_ways=12", "protonet_lr_halving=3",
                         "meta_lr=0.004")
    algorithm = ProtoNets(bench, config, 0)
    batch, ways = algorithm.train_episodes()
    assert ways == 12 and batch.x_support.shape[:2] == (config.meta_batch, 12)
    assert set(batch.y_query.unique().tolist()) == set(range(12))
    lrs = []
    for it in range(7):
        algorithm.train_step(it)
        lrs.append(algorithm.optimizer.param_groups[0]["lr"])
    assert lrs == [0.004] * 3 + [0.002] * 3 + [0.001]
    assert algorithm.evaluate()[1].shape == (config.test_tasks, config.eval_steps + 1)
    # Fewer training ways than the test's are refused with the config, before any work.
    with pytest.raises(UserError, match="protonet_train_ways"):
        tiny(tmp_path, "protonet_train_ways=1")


@needs_omniglot
@pytest.mark.parametrize("method", METHODS)
def test_meta_test_output_is_a_flat_accuracy_curve_per_task(method, tmp_path):
    config, bench = tiny(tmp_path, "test_tasks=7", "eval_chunk=3", "eval_shots=1,3")
    algorithm = method(bench, config, 0)
    algorithm.train_step(0)
    curves = algorithm.evaluate()
    assert set(curves) == {1, 3} and algorithm.fine_tuner(1) is None
    for k, curve in curves.items():
        assert curve.shape == (7, config.eval_steps + 1)
        assert (curve == curve[:, :1]).all()  # no steps: the same in every column
        queries = config.ways * k  # test_query 0: K queries per class
        assert ((curve * queries / 100).round() - curve * queries / 100).abs().max() < 1e-4
        assert curve.min() >= 0 and curve.max() <= 100
    # batch norm is per episode, so chunking the test episodes changes nothing
    whole = method(bench, tiny(tmp_path, "test_tasks=7", "eval_chunk=7", "eval_shots=1,3")[0], 0)
    whole.train_step(0)
    for k, curve in whole.evaluate().items():
        torch.testing.assert_close(curve, curves[k])
    assert 0 <= algorithm.validation_score() <= 100


@needs_omniglot
@pytest.mark.parametrize("method", METHODS)
def test_a_short_training_run_clearly_beats_chance(method, tmp_path):
    """200 iterations of 8 episodes (about 4 s): ProtoNets reached 67-69% and Matching Networks
    59-64% over 100 test episodes (500 queries; seeds 0-2), untrained nets 21-32%; chance 20%."""
    config, bench = tiny(tmp_path, "iterations=200", "meta_batch=8", "train_query=5",
                         "test_tasks=100", "eval_chunk=50")
    algorithm = method(bench, config, 0)
    untrained = algorithm.evaluate()[1][:, 0].mean().item()
    assert untrained < 50  # the threshold below means something
    for it in range(config.iterations):
        algorithm.train_step(it)
    accuracy = algorithm.evaluate()[1][:, 0].mean().item()
    assert accuracy > 50, f"{method.__name__}: {accuracy:.1f}% (untrained {untrained:.1f}%)"
