"""Methods that adapt part of the network in the inner loop (ANIL: the head; the paper's
context vector: input parameters z), checked like MAML: against a per-task float64 loop, finite
differences, and a learning signal on real Omniglot."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from maml_bench.algorithms import ALGORITHMS
from maml_bench.core.functional import (
    SupervisedBatch,
    make_batched_forward,
    meta_loss,
    restrict,
)
from maml_bench.models import MLP, ContextInput, Conv4
from maml_bench.runner import plan_runs
from maml_bench.tasks.fewshot.data_root import data_root
from maml_bench.tasks.fewshot.episodes import FewShot

needs_omniglot = pytest.mark.skipif(
    not (data_root() / "omniglot").is_dir(),
    reason=f"real Omniglot not found at {data_root() / 'omniglot'}: put images_background.zip "
           "and images_evaluation.zip there (or set MAML_BENCH_DATA)")


def cross_entropy(logits, labels):
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none"
                                       ).view(labels.shape).mean(1)


def images(tasks=2, ways=3, shots=2, channels=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 2 * ways * shots, channels, 28, 28, generator=gen, dtype=torch.float64)
    labels = torch.arange(ways).repeat(2 * shots).expand(tasks, -1)
    n = ways * shots
    return SupervisedBatch(x[:, :n], labels[:, :n], x[:, n:], labels[:, n:])


def conv(extra=0):
    torch.manual_seed(0)
    return Conv4(1 + extra, 3, 4, 28).double()


def context_conv():
    torch.manual_seed(0)
    model = ContextInput(Conv4(1 + 2, 3, 4, 28), (2, 28, 28)).double()
    with torch.no_grad():  # away from zero, so z's own gradient path is exercised
        model.context.normal_(generator=torch.Generator().manual_seed(2))
    return model


HEAD = ["classifier.weight", "classifier.bias"]
CASES = {"anil": (lambda: conv(), HEAD), "context-vector": (context_conv, ["context"])}


def per_task_reference(model, theta, batch, names, steps, lr):
    """Each task alone: `steps` gradient steps on `names` only, then the query loss."""
    losses = []
    for t in range(batch.n_tasks):
        params = dict(theta)
        for _ in range(steps):
            out = functional_call(model, params, (batch.x_support[t],))
            loss = cross_entropy(out.unsqueeze(0), batch.y_support[t].unsqueeze(0)).sum()
            grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True)
            params = {**params, **{n: params[n] - lr * g for n, g in zip(names, grads,
                                                                          strict=True)}}
        out = functional_call(model, params, (batch.x_query[t],))
        losses.append(cross_entropy(out.unsqueeze(0), batch.y_query[t].unsqueeze(0)))
    return torch.cat(losses)


def ours(model, theta, batch, names, steps, lr):
    forward, adapted = restrict(make_batched_forward(model), theta, names)
    return meta_loss(forward, adapted, batch, cross_entropy, steps, lr)


def theta_of(model):
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


@pytest.mark.parametrize("case", CASES)
def test_partial_adaptation_matches_the_per_task_loop(case):
    make, names = CASES[case]
    model = make()
    theta = theta_of(model)
    batch = images()
    a = torch.autograd.grad(ours(model, theta, batch, names, 2, 0.3).mean(), list(theta.values()))
    b = torch.autograd.grad(per_task_reference(model, theta, batch, names, 2, 0.3).mean(),
                            list(theta.values()))
    for name, x, y in zip(theta, a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-7, atol=1e-10, msg=name)
    # The frozen part still gets its outer gradient (through the adapted part's loss).
    frozen = [g for n, g in zip(theta, a, strict=True) if n not in names]
    assert max(g.abs().max() for g in frozen) > 1e-6


@pytest.mark.parametrize("case", CASES)
def test_partial_adaptation_matches_finite_differences(case):
    make, names = CASES[case]
    model = make()
    theta = theta_of(model)
    batch = images(shots=2)  # 1-shot batch norm is too steep for differences (test_gradients)

    def loss_at(params):
        return ours(model, params, batch, names, 2, [0.3, 0.1]).mean()

    analytic = dict(zip(theta, torch.autograd.grad(loss_at(theta), list(theta.values())),
                        strict=True))
    gen = torch.Generator().manual_seed(1)
    eps = 1e-7
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in theta.items()}
        plus = loss_at({k: (v + eps * d[k]).detach().requires_grad_() for k, v in theta.items()})
        minus = loss_at({k: (v - eps * d[k]).detach().requires_grad_() for k, v in theta.items()})
        numeric = (plus - minus).detach() / (2 * eps)
        projected = sum((analytic[k] * d[k]).sum() for k in theta)
        torch.testing.assert_close(projected, numeric, rtol=1e-5, atol=1e-8)


def test_context_input_joins_z_as_channels_and_as_features():
    torch.manual_seed(0)
    image_net = ContextInput(Conv4(1 + 2, 3, 4, 28), (2, 28, 28)).double()
    vector_net = ContextInput(MLP(3 + 2, [8], 1), (2,)).double()
    for model, x in ((image_net, torch.randn(2, 5, 1, 28, 28, dtype=torch.float64)),
                     (vector_net, torch.randn(2, 5, 3, dtype=torch.float64))):
        theta = {k: v.detach() for k, v in model.named_parameters()}
        params = {k: v.unsqueeze(0).expand(2, *v.shape).clone() for k, v in theta.items()}
        params["context"] = torch.randn(2, *model.context.shape, dtype=torch.float64)
        batched = model.batched_forward(params, x)
        for t in range(2):
            single = functional_call(model, {**theta, "context": params["context"][t]}, (x[t],))
            torch.testing.assert_close(batched[t], single)
    with torch.no_grad():
        vector_net.context.copy_(torch.tensor([1.0, 2.0]))
        x = torch.randn(4, 3, dtype=torch.float64)
        joined = torch.cat([x, torch.tensor([[1.0, 2.0]], dtype=torch.float64).expand(4, 2)], 1)
        torch.testing.assert_close(vector_net(x), vector_net.net(joined))


@needs_omniglot
def test_the_methods_adapt_what_their_papers_say(tmp_path):
    (run,) = plan_runs("omniglot-5w1s-v1", "tiny", [], ["maml"], None, tmp_path)
    bench = FewShot(run.config)
    anil = ALGORITHMS.get("anil")(bench, run.config, 0)
    assert anil.adapted() == HEAD
    context = ALGORITHMS.get("context-vector")(bench, run.config, 0)
    assert context.adapted() == ["context"]
    assert context.model.context.shape == (run.config.context_size, 28, 28)
    assert context.model.net.features[0].in_channels == 1 + run.config.context_size


@needs_omniglot
@pytest.mark.parametrize("method", ["anil", "context-vector"])
def test_a_short_run_clearly_beats_chance_on_real_omniglot(method, tmp_path):
    """5-way 1-shot, 300 meta-iterations of 4 tasks with 16 filters: chance is 20%."""
    overrides = ["iterations=300", "meta_batch=4", "filters=16", "test_tasks=100",
                 "eval_chunk=100"]
    (run,) = plan_runs("omniglot-5w1s-v1", "tiny", overrides, ["maml"], None, tmp_path)
    algo = ALGORITHMS.get(method)(FewShot(run.config), run.config, 0)
    untrained = algo.evaluate()[1][:, -1].mean().item()
    for i in range(run.config.iterations):
        algo.train_step(i)
    trained = algo.evaluate()[1][:, -1].mean().item()
    print(f"{method}: {untrained:.1f}% untrained -> {trained:.1f}% after 300 iterations")
    assert trained > THRESHOLD[method] > untrained


THRESHOLD = {"anil": 50.0, "context-vector": 30.0}
