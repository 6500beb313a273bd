"""The meta-learner LSTM (Ravi & Larochelle 2017): its meta-gradient against finite differences,
its update rule in hand-checkable cases, its learning signal on real Omniglot, and its state."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch

from maml_bench.algorithms.metalstm import (
    MetaLearnerLSTM,
    MetaLSTM,
    ParamLayout,
    learner_inputs,
    preprocess,
    unroll,
)
from maml_bench.core.functional import expand_params, inner_adapt
from maml_bench.models import Conv4
from maml_bench.runner import plan_runs
from maml_bench.tasks.fewshot.data_root import data_root
from maml_bench.tasks.fewshot.episodes import FewShot

needs_omniglot = pytest.mark.skipif(
    not (data_root() / "omniglot").is_dir(),
    reason=f"real Omniglot not found at {data_root() / 'omniglot'}")


def tiny_config(tmp_path, *overrides):
    return plan_runs("omniglot-5w1s-v1", "tiny", list(overrides), ["maml"], None,
                     tmp_path)[0].config


def classification_loss(pred, target):
    t, n, classes = pred.shape
    return torch.nn.functional.cross_entropy(
        pred.reshape(t * n, classes), target.reshape(t * n), reduction="none").view(t, n).mean(1)


def conv_setup(tasks=2, ways=3, shots=2, seed=0):
    """A small float64 Conv4 at 28x28 and random episodes with >= 2 shots: with 1 shot batch
    norm over a single image per channel makes the loss nearly flat in some directions."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Conv4(1, ways, 4, 28).double()
    n = ways * shots
    x = torch.randn(tasks, n, 1, 28, 28, generator=gen, dtype=torch.float64)
    xq = torch.randn(tasks, n, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.arange(ways).repeat_interleave(shots).expand(tasks, n)
    return model, x, y, xq, y.clone()


def test_preprocessing_of_andrychowicz_et_al():
    x = torch.tensor([1.0, -math.exp(-5.0), 1e-6, 0.0], dtype=torch.float64)
    expected = torch.tensor([[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10.0) * 1e-6],
                             [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(preprocess(x), expected)


def test_meta_gradient_matches_finite_differences():
    """Gradient of the query loss wrt every meta-learner parameter and c_0 against central
    differences (float64) of the same loss with the LSTM's gradient and loss inputs held at
    their recorded values, as the paper treats them (constants)."""
    model, x, y, xq, yq = conv_setup()
    forward, layout = model.batched_forward, ParamLayout(dict(model.named_parameters()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        meta = MetaLearnerLSTM(hidden=5).double()
        with torch.no_grad():  # unsaturated gates, so every path carries gradient
            meta.from_hidden.weight.normal_(0.0, 0.3)
            meta.from_hidden.bias.copy_(torch.tensor([-1.5, 2.0]))
            meta.from_param.normal_(0.0, 0.3)
            meta.from_gate.normal_(0.0, 0.3)
    c0 = layout.flatten(dict(model.named_parameters())).detach().requires_grad_()
    steps = 3

    def query_loss(meta, c0, replay=None):
        params, fed = unroll(meta, forward, layout, c0.expand(x.shape[0], -1), x, y,
                             classification_loss, steps, replay)
        return classification_loss(forward(layout.unflatten(params[-1]), xq), yq).mean(), fed

    loss, recorded = query_loss(meta, c0)
    names = [n for n, _ in meta.named_parameters()]
    analytic = dict(zip([*names, "c0"], torch.autograd.grad(loss, [*meta.parameters(), c0]),
                        strict=True))
    assert all(g.abs().max() > 0 for g in analytic.values())  # no path is cut
    replayed, _ = query_loss(meta, c0, recorded)
    assert replayed.item() == loss.item()

    def loss_along(direction, eps, replay):
        moved = copy.deepcopy(meta)
        with torch.no_grad():
            for name, p in moved.named_parameters():
                p.add_(eps * direction[name])
        return query_loss(moved, c0.detach() + eps * direction["c0"], replay)[0].detach()

    gen = torch.Generator().manual_seed(2)
    # ReLU kinks: the step must be small enough not to cross one; float64 keeps roundoff small.
    eps = 1e-7
    groups = [[n] for n in [*names, "c0"]] + [[*names, "c0"]]  # each tensor alone, then all
    for group in groups:
        direction = {n: torch.randn(g.shape, generator=gen, dtype=torch.float64)
                     * (n in group) for n, g in analytic.items()}
        numeric = (loss_along(direction, eps, recorded)
                   - loss_along(direction, -eps, recorded)) / (2 * eps)
        projected = sum((analytic[n] * direction[n]).sum() for n in analytic)
        torch.testing.assert_close(projected, numeric, rtol=1e-5, atol=1e-9, msg=str(group))

    # ...and the inputs really are constants: differentiating through the learner's gradient
    # (recomputing it at the moved parameters) gives another derivative.
    direction = {n: torch.randn(g.shape, generator=gen, dtype=torch.float64) * (n == "c0")
                 for n, g in analytic.items()}
    full = (loss_along(direction, 1e-6, None) - loss_along(direction, -1e-6, None)) / 2e-6
    projected = (analytic["c0"] * direction["c0"]).sum()
    assert (full - projected).abs() > 1e-3 * projected.abs()


def gated(meta, input_gate_logit, forget_gate_logit):
    """Gates that ignore their inputs: i = sigmoid(input_gate_logit), f likewise."""
    with torch.no_grad():
        meta.from_hidden.weight.zero_()
        meta.from_param.zero_()
        meta.from_gate.zero_()
        meta.from_hidden.bias.copy_(torch.tensor([input_gate_logit, forget_gate_logit],
                                                 dtype=meta.from_hidden.bias.dtype))
    return meta


def test_open_gates_are_plain_gradient_descent():
    """f = 1 and i = lr: c_t = c_{t-1} - lr * grad_t, i.e. SGD with step size lr, step by step
    against the benchmark's own inner loop."""
    model, x, y, _, _ = conv_setup(tasks=3)
    theta = dict(model.named_parameters())
    layout, lr = ParamLayout(theta), 0.1
    meta = gated(MetaLearnerLSTM(4).double(), math.log(lr / (1 - lr)), 40.0)  # sigmoid(40) = 1.0
    c0 = layout.flatten(theta).detach().expand(3, -1)
    params, fed = unroll(meta, model.batched_forward, layout, c0, x, y, classification_loss, 3)
    for t in range(1, 4):
        sgd = inner_adapt(model.batched_forward, expand_params(theta, 3), x, y,
                          classification_loss, t, lr, first_order=True)
        flat = torch.cat([sgd[n].reshape(3, -1) for n in layout.names], dim=1)
        torch.testing.assert_close(params[t], flat, rtol=1e-12, atol=1e-12)
    # the loss fed at step t is the support loss at the parameters before it
    assert torch.all(fed[1][1] < fed[0][1])


def test_the_update_rule_by_hand():
    """f = i = 1/2 (zero logits): c_1 = c_0 / 2 - grad / 2, with the gradient taken directly."""
    model, x, y, _, _ = conv_setup(tasks=2)
    theta = dict(model.named_parameters())
    layout = ParamLayout(theta)
    meta = gated(MetaLearnerLSTM(4).double(), 0.0, 0.0)
    c0 = layout.flatten(theta).detach().expand(2, -1)
    params, _ = unroll(meta, model.batched_forward, layout, c0, x, y, classification_loss, 1)
    for task in range(2):
        single = {n: p.detach().unsqueeze(0).requires_grad_() for n, p in theta.items()}
        loss = classification_loss(model.batched_forward(single, x[task:task + 1]),
                                   y[task:task + 1]).sum()
        grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(single.values()))])
        torch.testing.assert_close(params[1][task], 0.5 * c0[task] - 0.5 * grad,
                                   rtol=1e-12, atol=1e-12)


def test_initial_gates_start_as_small_step_gradient_descent():
    """Their code's initial biases: forget gate ~1 and input gate ~0.01 on the first update."""
    model, x, y, _, _ = conv_setup()
    layout = ParamLayout(dict(model.named_parameters()))
    meta = MetaLearnerLSTM(20).double()
    c0 = layout.flatten(dict(model.named_parameters())).detach().expand(2, -1)
    grad, loss = learner_inputs(model.batched_forward, layout, c0, x, y, classification_loss)
    state = meta(grad, loss, meta.start(c0))
    assert state.f.min() > 0.97 and state.i.max() < 0.03
    assert state.i.min() > 0.003


@needs_omniglot
def test_learning_signal_on_omniglot(tmp_path):
    """5-way 1-shot, 8 filters: 200 meta-iterations of 4 episodes (~15 s on one busy core)
    reach ~65-70% after 3 updates on 100 test tasks (seeds 0-2); untrained ~21%; chance 20%."""
    config = tiny_config(tmp_path, "meta_batch=4", "meta_lr=0.005", "test_tasks=100")
    algo = MetaLSTM(FewShot(config), config, 0)
    before = algo.evaluate()[1]
    assert before.shape == (100, config.eval_steps + 1)
    assert before[:, -1].mean() < 35
    t0 = time.perf_counter()
    for it in range(200):
        algo.train_step(it)
    seconds = time.perf_counter() - t0
    after = algo.evaluate()[1]
    print(f"metalstm 5w1s: {seconds:.1f} s, accuracy after 0..3 updates "
          f"{after.mean(0).tolist()} (untrained {before.mean(0).tolist()})")
    assert after[:, 0].mean() < 35  # labels are random per episode: c_0 alone is at chance
    assert after[:, -1].mean() > 45
    score = algo.validation_score()
    assert score is not None and 0 <= score <= 100


@needs_omniglot
def test_state_round_trip_reproduces_training(tmp_path):
    config = tiny_config(tmp_path)
    bench = FewShot(config)
    a = MetaLSTM(bench, config, 0)
    for it in range(2):
        a.train_step(it)
    state = copy.deepcopy(a.state_dict())
    expected = [a.train_step(it).item() for it in (2, 3)]  # the second one needs Adam's state
    b = MetaLSTM(bench, config, 1)  # another init and generator, all replaced by the state
    b.load_state_dict(state)
    assert [b.train_step(it).item() for it in (2, 3)] == expected
    assert b.info["tasks_per_pass"] == config.meta_batch  # tiny tasks: one pass, in run.json
    assert {"model", "metalearner", "optimizer"} <= set(a.modules())
    assert len(a.tensors()) == len(list(a.model.parameters())) + len(list(a.meta.parameters()))


@needs_omniglot
def test_runs_in_the_runner_with_a_validation_curve(tmp_path):
    """Checkpoints, NaN checks, records and the periodic validation curve, end to end."""
    import pandas as pd

    from maml_bench.run_spec import RunSpec
    from maml_bench.runner import execute

    config = tiny_config(tmp_path)
    directory = execute(RunSpec("omniglot-5w1s-v1", "metalstm", 0, config, tmp_path),
                        progress=False)
    records = pd.read_csv(directory / "records.csv.gz")
    assert len(records) == config.test_tasks * (config.eval_steps + 1)
    assert records["value"].between(0, 100).all()
    assert pd.read_csv(directory / "train_log.csv")["val_metric"].notna().all()
