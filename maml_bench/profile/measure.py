"""What one meta-iteration costs: the meta-gradient of one meta-batch (forward, inner steps,
outer backward; no optimizer step) timed, its peak memory, its FLOPs and the operators that
dominate it.

* Time: CUDA events around each step after warm-up, the queue synchronized before and after
  (so launch gaps count, as in training); on the CPU `time.perf_counter`.
* Memory: CUDA: `torch.cuda.max_memory_allocated` during one step after
  `reset_peak_memory_stats`, minus what was allocated before it. CPU: the growth of the
  process's resident set during one step (`CpuPeakRss`): the peak-RSS mark of the kernel is
  reset before the step, so each step is measured on its own in this process.
* FLOPs: `torch.utils.flop_counter.FlopCounterMode` over the whole meta-step (inner gradients,
  their double backward, the outer gradient) run on the meta device (shapes only, no
  arithmetic), in the per-task form (`reference_meta_loss`) for one task, times the tasks:
  tasks are independent, and the counter ignores `groups` in a grouped convolution's weight
  gradient, so counting the batched Conv4 (tasks as groups) would overstate it T-fold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from maml_bench.core.backends import MetaProblem, auto_backend, query_losses
from maml_bench.core.chunking import auto_task_chunk, summed_meta_gradient
from maml_bench.core.functional import SupervisedBatch, reference_meta_loss
from maml_bench.profile.configs import ProfileConfig

PATHS = ("ours", "loop")  # the default backend (auto); the per-task loop (reference_meta_loss)
ORDERS = ("so", "fo")  # second order; first order (FOMAML)
MiB = 2**20


class Clock:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time_ms(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        torch.cuda.synchronize()  # an empty queue: the events bracket this call's work only
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)


class CudaPeakMemory:
    description = ("CUDA: torch.cuda.max_memory_allocated during one meta-step (after "
                   "torch.cuda.reset_peak_memory_stats) minus torch.cuda.memory_allocated "
                   "before it: the step's tensors, not the caching allocator's reserve")

    def measure(self, fn: Callable[[], object]) -> float | None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / MiB

    def available_mib(self) -> float:
        free, _total = torch.cuda.mem_get_info()
        return free / MiB


class CpuPeakRss:
    """Peak resident-set growth of one step, measured in this process.

    `ru_maxrss` only ever grows, so it cannot tell one configuration from the next; Linux
    instead lets a process reset its own peak mark (`echo 5 > /proc/self/clear_refs`, since
    4.0) and read it back as VmHWM. glibc's free memory is handed back first (`malloc_trim`):
    the profiler, like every run, keeps freed blocks for reuse (`maml_bench/memory.py`), and a
    step reusing resident free blocks would not raise the mark. What is counted: the step's
    tensors plus the allocator's overhead and page rounding; it is a process measure, so
    anything else the process allocated meanwhile would count too (nothing does here).
    """

    description = ("CPU: growth of the process's resident set during one meta-step: glibc's "
                   "free memory returned first (malloc_trim(0)), the kernel's peak-RSS mark "
                   "reset (/proc/self/clear_refs 5), then VmHWM after the step minus VmRSS "
                   "before it; tensors plus allocator overhead and page rounding")

    def __init__(self) -> None:
        self.reason = None
        self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._trim = libc.malloc_trim
            self._reset()
            self._status()
        except (OSError, AttributeError, KeyError) as err:
            self.reason = f"no per-step peak RSS on this system ({err})"

    @staticmethod
    def _reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    @staticmethod
    def _status() -> dict[str, float]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = float(value.split()[0]) / 1024  # kB -> MiB
        return {"rss": fields["VmRSS"], "hwm": fields["VmHWM"]}

    def measure(self, fn: Callable[[], object]) -> float | None:
        if self.reason is not None:
            return None
        gc.collect()
        self._trim(0)
        self._reset()
        before = self._status()["rss"]
        fn()
        return max(0.0, self._status()["hwm"] - before)

    def available_mib(self) -> float:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) / 1024
        except OSError:
            pass
        return float("inf")


def memory_probe(device: torch.device) -> CudaPeakMemory | CpuPeakRss:
    return CudaPeakMemory() if device.type == "cuda" else CpuPeakRss()


def our_query_losses(cfg: ProfileConfig, model: torch.nn.Module, theta: dict[str, Tensor],
                     batch: SupervisedBatch, steps: int, first_order: bool
                     ) -> Callable[..., Tensor]:
    """The per-task query losses of `batch` (or of a part of it) by the backend `auto` takes
    for this model."""
    backend = auto_backend(model, first_order, steps, batch.x_support.shape[1])
    problem = MetaProblem(model, cfg.loss, steps, cfg.inner_lr, first_order)
    return lambda part=batch: query_losses(backend, problem, theta, part)


def meta_gradient(cfg: ProfileConfig, model: torch.nn.Module, theta: dict[str, Tensor],
                  batch: SupervisedBatch, steps: int, *, first_order: bool, path: str
                  ) -> Callable[[], list[Tensor]]:
    """One meta-iteration: the meta-gradient of the mean query loss over `batch`; ours in
    `auto`'s tasks per pass, as a run with task_chunk=auto (the default) takes it."""
    params = list(theta.values())
    if path == "ours":
        ours = our_query_losses(cfg, model, theta, batch, steps, first_order)
        chunk = auto_task_chunk(model, batch)
        return lambda: summed_meta_gradient(ours, batch, params, chunk)[1]

    def step() -> list[Tensor]:
        losses = reference_meta_loss(model, theta, batch, cfg.loss, steps, cfg.inner_lr,
                                     first_order)
        return list(torch.autograd.grad(losses.mean(), params))

    return step


@dataclass
class Measurement:
    """Times of one (configuration, meta-batch, steps, order, path), or why it was skipped."""

    min_ms: float = float("nan")
    median_ms: float = float("nan")
    peak_mib: float = float("nan")
    repeats: int = 0
    skipped: str = ""
    warmup_ms: float = float("nan")  # the last warm-up step (a lower bound when skipped)


def out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def measure(step: Callable[[], object], clock: Clock, memory: CudaPeakMemory | CpuPeakRss,
            repeats: int, warmup: int, budget_s: float) -> Measurement:
    """Warm up, then one step for peak memory, then up to `repeats` timed steps: as many as fit
    in `budget_s` (the warm-up's time tells); skipped, with the reason, if not even one fits or
    memory runs out."""
    started, oom = time.perf_counter(), False
    try:
        warm_ms = 0.0
        for _ in range(warmup):
            warm_ms = clock.time_ms(step)
        left = budget_s - (time.perf_counter() - started)
        fit = int(left / max(warm_ms / 1e3, 1e-9)) - 1  # one step goes to the memory probe
        if fit < 1:
            return Measurement(warmup_ms=warm_ms, skipped=(
                f"one step took {warm_ms / 1e3:.3g} s: the measurement would exceed the "
                f"budget of {budget_s:g} s (--budget)"))
        peak = memory.measure(step)
        times = [clock.time_ms(step) for _ in range(min(repeats, fit))]
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        oom = True
    if oom:  # released outside the handler: the exception's frames hold the step's tensors
        release(collect=True)
        return Measurement(skipped="out of memory")
    return Measurement(min(times), statistics.median(times),
                       float("nan") if peak is None else peak, len(times), warmup_ms=warm_ms)


def release(collect: bool = False) -> None:
    """Give back what a finished or failed measurement held (CUDA: the cached blocks, so that
    free memory predicts the next one). A full `gc.collect` (~0.1 s with torch, pandas and
    matplotlib loaded) only where cycles may hold tensors: an exception's frames."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Predictor:
    """Expected time and memory of a measurement from the last one of the same (configuration,
    order, path): time grows with tasks x (steps + 1) forwards; second-order memory too (every
    inner graph is kept), first-order memory with tasks only. Used to skip what would exceed
    the budget or the device's memory before starting it."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str, str], tuple[int, int, float, float]] = {}

    def record(self, key: tuple[str, str, str], meta_batch: int, steps: int, seconds: float,
               peak_mib: float) -> None:
        self.last[key] = (meta_batch, steps, seconds, peak_mib)

    def predict(self, key: tuple[str, str, str], meta_batch: int, steps: int
                ) -> tuple[float, float] | None:
        if key not in self.last:
            return None
        mb0, steps0, seconds, peak = self.last[key]
        tasks, depth = meta_batch / mb0, (steps + 1) / (steps0 + 1)
        memory = peak * tasks * (depth if key[1] == "so" else 1.0)
        return seconds * tasks * depth, memory


@lru_cache(maxsize=256)
def _task_flops(cfg: ProfileConfig, steps: int, first_order: bool | None) -> int:
    """FLOPs of one task on the meta device; first_order None: one forward of its support and
    query examples."""
    model = cfg.model().to("meta")
    theta = dict(model.named_parameters())
    batch = cfg.batch(1, "meta")
    with FlopCounterMode(display=False) as counter:
        if first_order is None:
            with torch.no_grad():
                model(batch.x_support[0])
                model(batch.x_query[0])
        else:
            losses = reference_meta_loss(model, theta, batch, cfg.loss, steps, cfg.inner_lr,
                                         first_order)
            torch.autograd.grad(losses.mean(), list(theta.values()))
    return int(counter.get_total_flops())


def count_flops(cfg: ProfileConfig, meta_batch: int, steps: int) -> dict[str, int]:
    """FLOPs of a meta-step, second and first order, and of one forward of the meta-batch."""
    return {"so": meta_batch * _task_flops(cfg, steps, False),
            "fo": meta_batch * _task_flops(cfg, steps, True),
            "forward": meta_batch * _task_flops(cfg, steps, None)}


@dataclass
class OpRow:
    name: str
    calls: int
    self_ms: float
    share: float  # of the profiled region's total self time


@dataclass
class OpsProfile:
    """The top operators of one second-order meta-step: whole step and outer backward only."""

    config: str
    meta_batch: int
    steps: int
    step_ms: float
    backward_ms: float
    step_ops: list[OpRow]
    backward_ops: list[OpRow]


def _top(prof: torch.profiler.profile, cuda: bool, n: int) -> list[OpRow]:
    def self_us(event: object) -> float:
        if cuda:  # older torch: self_cuda_time_total
            return float(getattr(event, "self_device_time_total",
                                 getattr(event, "self_cuda_time_total", 0.0)))
        return float(event.self_cpu_time_total)

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events) or 1.0
    events.sort(key=self_us, reverse=True)
    return [OpRow(e.key, int(e.count), self_us(e) / 1e3, self_us(e) / total) for e in events[:n]]


def profile_ops(cfg: ProfileConfig, model: torch.nn.Module, theta: dict[str, Tensor],
                batch: SupervisedBatch, steps: int, device: torch.device, n: int = 10
                ) -> OpsProfile:
    """torch.profiler key_averages, top `n` by self time (device time on CUDA), of one
    second-order meta-step on our default path and, separately, of its outer backward alone
    (where the double backward runs)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    clock = Clock(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step = meta_gradient(cfg, model, theta, batch, steps, first_order=False, path="ours")
    params = list(theta.values())
    step()  # warm: the profiled step is a steady-state one
    with _without_kineto_lines(), profile(activities=activities) as whole:
        step_ms = clock.time_ms(step)
    # the outer backward of each of the step's passes (task_chunk=auto), their graphs built first
    ours = our_query_losses(cfg, model, theta, batch, steps, False)
    losses = [ours(part).sum() / batch.n_tasks
              for part in batch.chunks(auto_task_chunk(model, batch))]
    with _without_kineto_lines(), profile(activities=activities) as outer:
        backward_ms = clock.time_ms(lambda: [torch.autograd.grad(loss, params)
                                             for loss in losses])
    return OpsProfile(cfg.name, batch.n_tasks, steps, step_ms, backward_ms,
                      _top(whole, cuda, n), _top(outer, cuda, n))


@contextmanager
def _without_kineto_lines() -> Iterator[None]:
    """The profiler's C++ side (kineto) prints a "USDT:"/"STAGE:" line to stderr at every start
    and stop, over progress bars and logs; hold stderr meanwhile and pass on every other line."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to filter
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(x for x in lines if not x.startswith(("USDT:", "STAGE:")))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def device_slug(device: torch.device) -> str:
    """"cpu", or the GPU's name as a file-name slug (e.g. nvidia-h200)."""
    if device.type != "cuda":
        return "cpu"
    import re

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA "
                f"{torch.version.cuda}; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
                f"TF32 cuDNN {torch.backends.cudnn.allow_tf32})")
    return (f"CPU, {torch.get_num_threads()} torch thread(s) (torch {torch.__version__}, "
            f"{sys.platform})")
