"""A floor on the memory a run needs, checked before any work starts (`preflight.py`).

The floor counts only what every path of the run must hold at once, in the larger of its two
phases: meta-training (the network with its gradient and Adam's moments, one meta-batch of
examples, and one forward pass's activations for the tasks of one pass: `task_chunk`'s for
MAML's family; not their adapted weights, which the `factored` path never copies) and meta-test
(the fixed test tasks, drawn once and held, and for a chunk of `eval_chunk` tasks the adapted
weights with their gradients and one forward pass's activations). Backends add their own graphs
on top, so a run can need more; a floor above the machine's memory means the settings cannot
run here, and the refusal names the settings of the floor's largest part.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maml_bench.core.chunking import WHOLE, cpu_auto_tasks
from maml_bench.errors import UserError

GIB = 2**30


@dataclass(frozen=True)
class Part:
    """One thing held in memory: its size, what it is, and the settings it grows with."""

    bytes: int
    what: str
    settings: tuple[str, ...]


#: networks up to this many parameter entries are sized with a real forward pass on the CPU;
#: larger ones on the meta device, which allocates nothing but costs seconds the first time
REAL_FORWARD_PARAMS = 2**26


def model_sizes(make_model: Callable[[], nn.Module], example: Tensor
                ) -> tuple[int, int, int, int]:
    """(parameter entries, activation entries of one example's forward pass: all its layers'
    outputs, its largest one and its first convolution's or linear layer's, which
    `task_chunk=auto` sizes tasks by) of the network `make_model` builds from `example`
    [1, ...]; one too large for the machine is sized without allocating it."""
    with torch.device("meta"):
        model = make_model()
    params = sum(p.numel() for p in model.parameters())
    if params <= REAL_FORWARD_PARAMS:
        model = make_model()
    else:
        example = example.to("meta")
    # two copies of the one example: batch norm in training mode needs more than one value per
    # channel; the count is halved below
    example = example.expand(2, *example.shape[1:])
    outputs: list[int] = []
    first: list[int] = []

    def count(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor):
            outputs.append(output.numel())
            if not first and isinstance(module, nn.Conv2d | nn.Linear):
                first.append(output.numel())

    handles = [m.register_forward_hook(count) for m in model.modules()
               if not list(m.children())]  # leaves: each output once
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return params, sum(outputs) // 2, max(outputs, default=0) // 2, sum(first) // 2


def batch_bytes(batch: Any) -> int:
    """Bytes of every tensor a SupervisedBatch holds."""
    return sum(t.nbytes for t in vars(batch).values() if isinstance(t, Tensor))


def supervised_parts(benchmark: Any, config: Any, adapts_weights: bool,
                     task_passes: bool = False, device: str = "cpu") -> list[list[Part]]:
    """The parts of a supervised benchmark's two phases (see the module docstring), sized from
    one task drawn with a throw-away generator and the network built on the meta device.
    `task_passes`: the method meta-trains tasks in passes of `task_chunk` (MAML's family);
    other methods are counted at one task's forward pass."""
    benchmark = getattr(benchmark, "benchmark", benchmark)  # sized on the CPU (devices.OnDevice)
    gen = torch.Generator().manual_seed(0)
    size_settings = tuple(getattr(benchmark, "size_settings", ()))
    train_task = benchmark.train_batch(gen, 1, config.train_shots, config.train_query)
    one_train = batch_bytes(train_task)
    query = getattr(benchmark, "test_query", lambda k: config.test_query or k)
    one_test = {k: benchmark.train_batch(gen, 1, k, query(k)) for k in config.eval_shots}
    largest = one_test[max(config.eval_shots)]
    params, per_example, widest, first = model_sizes(benchmark.make_model,
                                                     largest.x_support[0, :1])
    item = 4  # float32
    train_examples = task_examples(train_task)
    train_pass = _train_pass_tasks(config, task_passes, device, first * train_examples)
    network = Part(4 * params * item, "the network, its gradient and Adam's two moments",
                   size_settings)
    train = [network, Part(config.meta_batch * one_train, "one meta-batch of examples",
                           ("meta_batch", "train_shots", "train_query")),
             Part(train_pass * train_examples * per_example * item,
                  "the activations of a pass of training tasks",
                  ("meta_batch", "task_chunk", "train_shots", "train_query"))]
    if not adapts_weights:  # no gradient at meta-test: a layer's output is freed after the next
        per_example = 2 * widest
    chunk = min(config.eval_chunk, config.test_tasks)
    examples = largest.x_support.shape[1]  # support examples of a test task at the largest K
    test = [
        Part(params * item, "the network", size_settings),
        # Sinusoid's sets for each K are views of one draw at the largest K: held once
        Part(config.test_tasks * (max if getattr(benchmark, "eval_sets_shared", False) else sum)(
            batch_bytes(b) for b in one_test.values()),
             "the test tasks, drawn once", ("test_tasks", "eval_shots", "test_query")),
        Part(chunk * examples * per_example * item,
             "the activations of a chunk of test tasks", ("eval_chunk", "eval_shots")),
    ]
    if adapts_weights:
        test.append(Part(2 * chunk * params * item,
                         "the adapted weights and gradients of a chunk of test tasks",
                         ("eval_chunk", *size_settings)))
    return [train, test]


def task_examples(batch: Any) -> int:
    """Examples per task of a one-task batch: its support and query sets."""
    return int(batch.x_support.shape[1] + batch.x_query.shape[1])


def _train_pass_tasks(config: Any, task_passes: bool, device: str, first_entries: int) -> int:
    """Tasks meta-trained in one pass: `task_chunk` resolved as MAML resolves it (auto: by one
    task's `first_entries` first-layer activations on the CPU, the whole batch elsewhere), 1
    for methods without passes."""
    if not task_passes:
        return 1
    # under torchrun each process differentiates its share of the meta-batch
    chunk = config.task_chunk
    tasks = -(-config.meta_batch // max(1, int(os.environ.get("WORLD_SIZE", "1"))))
    if chunk == WHOLE or chunk >= tasks:
        return tasks
    if chunk > 0:
        return chunk
    if not device.startswith("cpu"):
        return tasks
    return cpu_auto_tasks(first_entries * 4 / 2**20, tasks)


def rl_parts(benchmark: Any, config: Any, inner_steps: int | None = None) -> list[list[Part]]:
    """Meta-RL: the policy, and per meta-iteration every task's adapted policy and the
    trajectories of its inner and outer steps (observations, actions, rewards, returns,
    advantages, mask per time step). `inner_steps`: the method's own in training (the
    pretrained and oracle policies take none), None: the config's."""
    with torch.device("meta"):
        policy = benchmark.make_policy()
    params = sum(p.numel() for p in policy.parameters())
    item = 4
    inner = config.inner_steps if inner_steps is None else inner_steps
    per_step = benchmark.obs_dim + benchmark.act_dim + 4
    steps = config.train_shots * benchmark.horizon * (inner + 1)
    parts = [Part(2 * params * item, "the policy and its gradient", ("hidden",)),
             Part(config.meta_batch * steps * per_step * item, "the meta-batch's trajectories",
                  ("meta_batch", "train_shots", "horizon", "inner_steps"))]
    if inner:
        parts.append(Part(config.meta_batch * params * item, "every task's adapted policy",
                          ("meta_batch", "hidden")))
    return [parts]


def floor(phases: list[list[Part]]) -> tuple[int, list[Part]]:
    """(bytes, parts) of the phase that needs the most."""
    return max(((sum(p.bytes for p in phase), phase) for phase in phases), key=lambda t: t[0])


def machine_bytes(device: str = "cpu") -> int:
    """Memory a process here can use: the GPU's for a CUDA device; else physical memory, or the
    cgroup's limit where lower, shared by torchrun's processes on this machine."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_fits(phases: list[list[Part]], available: int, run_id: str) -> None:
    """Refuse, naming the settings of the largest part, a run whose floor exceeds `available`."""
    need, parts = floor(phases)
    if need <= available:
        return
    big = max(parts, key=lambda p: p.bytes)
    raise UserError(f"{run_id}: these settings need at least {need / GIB:,.1f} GiB of memory "
                    f"({big.what}: {big.bytes / GIB:,.1f} GiB), more than the "
                    f"{available / GIB:,.1f} GiB here; lower {', '.join(big.settings)}")
