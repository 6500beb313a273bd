"""The profile run: every chosen configuration over the sweeps of meta-batch and inner steps,
second and first order, our default path and the per-task loop; then the report files."""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maml_bench.core.chunking import auto_rule, auto_task_chunk
from maml_bench.devices import use
from maml_bench.memory import keep_freed_memory
from maml_bench.profile.configs import CONFIGS, ProfileConfig
from maml_bench.profile.measure import (
    ORDERS,
    PATHS,
    Clock,
    CpuPeakRss,
    CudaPeakMemory,
    Measurement,
    OpsProfile,
    Predictor,
    count_flops,
    device_description,
    device_slug,
    measure,
    memory_probe,
    meta_gradient,
    out_of_memory,
    profile_ops,
    release,
)
from maml_bench.profile.parts import Part, load_part, part_path, save_part
from maml_bench.profile.peak import measure_peak
from maml_bench.profile.report import Report, write_report
from maml_bench.progress import duration, line_seconds, say, terminal

log = logging.getLogger(__name__)

DEFAULT_STEPS = (1, 2, 5, 10)
QUICK_STEPS = (1, 2)
DEFAULT_REPEATS, QUICK_REPEATS = 5, 2
DEFAULT_BUDGET_S, QUICK_BUDGET_S = 60.0, 10.0


@dataclass(frozen=True)
class ProfileOptions:
    """What to profile; None: the default (of --quick mode where it differs)."""

    configs: tuple[str, ...]
    device: str
    out: Path
    steps: tuple[int, ...] | None = None
    meta_batches: tuple[int, ...] | None = None  # None: half, the paper's, double
    repeats: int | None = None
    budget_s: float | None = None
    quick: bool = False
    threads: int | None = None  # torch CPU threads; None: 1 on the CPU (per core)

    def resolved_steps(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.steps or (QUICK_STEPS if self.quick else DEFAULT_STEPS))))

    def resolved_repeats(self) -> int:
        return self.repeats or (QUICK_REPEATS if self.quick else DEFAULT_REPEATS)

    def resolved_budget(self) -> float:
        return self.budget_s or (QUICK_BUDGET_S if self.quick else DEFAULT_BUDGET_S)

    def command(self) -> str:
        """The command line that repeats this profile (for the report's header)."""
        words = ["maml-bench", "profile", *[w for c in self.configs for w in ("--config", c)],
                 "--device", self.device, "--out", str(self.out)]
        for flag, value in (("--steps", self.steps), ("--meta-batch", self.meta_batches),
                            ("--repeats", self.repeats), ("--budget", self.budget_s),
                            ("--threads", self.threads)):
            if value is not None:
                words += [flag, ",".join(map(str, value)) if isinstance(value, tuple)
                          else f"{value:g}"]
        return shlex.join(words + ["--quick"] * self.quick)

    def meta_batches_of(self, cfg: ProfileConfig) -> tuple[int, ...]:
        if self.meta_batches:
            return tuple(sorted(set(self.meta_batches)))
        return (cfg.meta_batch,) if self.quick else cfg.default_meta_batches()


class _Progress:
    """A tqdm bar over measurements on a terminal; elsewhere a line per configuration and,
    within one (a MiniImagenet configuration runs long on a CPU), one every line_seconds()."""

    def __init__(self, total: int, n_configs: int) -> None:
        self.bar: Any = None
        self.n_configs, self.done_configs, self.measured_configs = n_configs, 0, 0
        self.total, self.done = total, 0
        self.t0 = self.last_line = time.perf_counter()
        if terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="profile", unit="measurement", dynamic_ncols=True)

    def measured(self, what: str, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if n == 1 and now - self.last_line >= line_seconds():
            self.last_line = now
            say(f"profile: {self.done}/{self.total} measurements (last: {what}; "
                f"{duration(now - self.t0)} so far)")

    def config_done(self, name: str, seconds: float, measured: int, skipped: int) -> None:
        self.done_configs += 1
        self.measured_configs += 1
        if self.bar is not None:
            return
        self.last_line = time.perf_counter()
        elapsed = self.last_line - self.t0
        left = self.n_configs - self.done_configs
        eta = f", ETA ~{duration(elapsed / self.measured_configs * left)}" if left else ""
        say(f"profile: {name} done in {duration(seconds)} ({measured} measured, {skipped} "
            f"skipped; {self.done_configs}/{self.n_configs} configurations{eta})")

    def config_resumed(self, name: str, path: Path, n: int) -> None:
        self.done_configs += 1
        self.measured(f"{name} (saved)", n)
        if self.bar is None:
            say(f"profile: {name} read from {path} (measured earlier with the same settings; "
                f"delete it to measure again)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_profile(options: ProfileOptions) -> list[Path]:
    """Measure, then write the report files under options.out; returns their paths."""
    device = torch.device(options.device)
    threads_before = torch.get_num_threads()
    # Per core: one torch thread (a run given more CPUs splits its tasks over them, task_threads,
    # measured by benchmarks/task_threads.py), keeping freed memory as every run does.
    threads = options.threads or (1 if device.type == "cpu" else threads_before)
    torch.set_num_threads(threads)
    keep_freed_memory()
    use(device)  # on a GPU, full float32 (no TF32), as every training run
    try:
        return _run(options, device)
    finally:
        torch.set_num_threads(threads_before)


def _run(options: ProfileOptions, device: torch.device) -> list[Path]:
    steps_sweep, repeats = options.resolved_steps(), options.resolved_repeats()
    budget = options.resolved_budget()
    warmup = (1 if options.quick else 3) if device.type == "cuda" else 1
    clock, memory, predictor = Clock(device), memory_probe(device), Predictor()
    configs = [CONFIGS[name] for name in options.configs]
    total = sum(len(options.meta_batches_of(c)) for c in configs) * len(steps_sweep) * 4
    if not terminal():
        say(f"profile: {len(configs)} configuration(s), {total} measurements on "
            f"{device_slug(device)} (budget {budget:g} s each)")
    peak = measure_peak(device, options.quick)
    peaks = [peak]
    progress = _Progress(total, len(configs))
    rows: list[dict[str, Any]] = []
    ops: list[OpsProfile] = []
    skipped_ops: list[str] = []
    interrupted = False
    slug = device_slug(device)
    try:
        for cfg in configs:
            settings = _settings(options, cfg, device, warmup)
            saved_at = part_path(options.out, slug, cfg.name)
            saved = load_part(saved_at, settings)
            if saved is not None:
                rows += saved.rows
                ops += saved.ops
                skipped_ops += saved.skipped_ops
                peaks.append(saved.peak)
                progress.config_resumed(cfg.name, saved_at, 4 * len(saved.rows))
                continue
            started, before = time.perf_counter(), len(rows)
            ops_before, skipped_ops_before = len(ops), len(skipped_ops)
            torch.manual_seed(0)
            model = cfg.model().to(device)
            theta = dict(model.named_parameters())
            for meta_batch in options.meta_batches_of(cfg):
                batch = cfg.batch(meta_batch, device)
                for steps in steps_sweep:
                    row = _row(cfg, meta_batch, steps, device)
                    row["tasks_per_pass"] = auto_task_chunk(model, batch)  # ours' task_chunk
                    for order in ("fo", "so"):  # cheaper first: it predicts the dearer
                        for path in PATHS:
                            step = meta_gradient(cfg, model, theta, batch, steps,
                                                 first_order=order == "fo", path=path)
                            m = _measure_one(step, cfg, meta_batch, steps, order, path, clock,
                                             memory, predictor, repeats, warmup, budget)
                            _put(row, order, path, m)
                            progress.measured(f"{cfg.name} T={meta_batch} steps={steps} "
                                              f"{order} {path}")
                            del step
                            release()
                    row["load_1min"] = max(row["load_1min"], os.getloadavg()[0])
                    rows.append(row)
                del batch
            target = _ops_target(cfg, rows[before:])
            if target is None:
                skipped_ops.append(f"{cfg.name}: no second-order step of our default path "
                                   "was measured")
            else:
                try:
                    ops.append(profile_ops(cfg, model, theta, cfg.batch(target[0], device),
                                           target[1], device))
                except (RuntimeError, MemoryError) as err:
                    if not out_of_memory(err):
                        raise
                    skipped_ops.append(f"{cfg.name}: out of memory under the profiler")
            del model, theta
            release(collect=True)
            new = rows[before:]
            save_part(saved_at, Part(cfg.name, settings, new, ops[ops_before:],
                                     skipped_ops[skipped_ops_before:], peak))
            n_skipped = sum(bool(r[f"{o}_{p}_skipped"]) for r in new for o in ORDERS
                            for p in PATHS)
            progress.config_done(cfg.name, time.perf_counter() - started,
                                 4 * len(new) - n_skipped, n_skipped)
    except KeyboardInterrupt:  # a long CPU profile: keep what was measured, then stop
        interrupted = True
    finally:
        progress.close()
    # Parts measured in other sessions saw their own peak: the best one seen is the device's.
    report = Report(rows=rows, ops=ops, skipped_ops=skipped_ops,
                    peak=max(peaks, key=lambda p: p.best),
                    device=device_description(device), slug=slug,
                    memory_measure=getattr(memory, "reason", None) or memory.description,
                    repeats=repeats, budget_s=budget, warmup=warmup,
                    command=options.command(),
                    note="Interrupted (Ctrl-C): only what was measured before." if interrupted
                    else "")
    paths = write_report(report, options.out)
    if interrupted:
        say(f"profile: interrupted; what was measured is in {', '.join(map(str, paths))}")
        raise KeyboardInterrupt
    return paths


def _settings(options: ProfileOptions, cfg: ProfileConfig, device: torch.device, warmup: int
              ) -> dict[str, Any]:
    """What a saved part must have been measured with to be used instead of measuring."""
    return {"steps": list(options.resolved_steps()),
            "meta_batches": list(options.meta_batches_of(cfg)),
            "repeats": options.resolved_repeats(), "budget_s": options.resolved_budget(),
            "warmup": warmup, "quick": options.quick, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": device_description(device),
            # what "ours" takes as tasks per pass on the CPU: parts timed under another rule
            # (the whole batch, before task_chunk=auto) are measured again; on a GPU it is
            # still the whole batch, so GPU parts stay valid
            **({"ours_tasks_per_pass": auto_rule()} if device.type == "cpu" else {})}


def _row(cfg: ProfileConfig, meta_batch: int, steps: int, device: torch.device
         ) -> dict[str, Any]:
    flops = count_flops(cfg, meta_batch, steps)
    return {"config": cfg.name, "title": cfg.title, "model": cfg.model_name, "ways": cfg.ways,
            "shots": cfg.shots, "query": cfg.query, "inner_lr": cfg.inner_lr,
            "paper_meta_batch": cfg.meta_batch, "paper_inner_steps": cfg.inner_steps,
            "meta_batch": meta_batch, "inner_steps": steps,
            "is_paper": meta_batch == cfg.meta_batch and steps == cfg.inner_steps,
            "device": device_slug(device), "threads": torch.get_num_threads(),
            # when, and how busy the machine was (the profile itself counts 1 on a CPU)
            "measured_at": time.strftime("%Y-%m-%d %H:%M"), "load_1min": os.getloadavg()[0],
            "flops_so": flops["so"], "flops_fo": flops["fo"], "flops_forward": flops["forward"]}


def _put(row: dict[str, Any], order: str, path: str, m: Measurement) -> None:
    prefix = f"{order}_{path}"
    row.update({f"{prefix}_ms": m.min_ms, f"{prefix}_median_ms": m.median_ms,
                f"{prefix}_peak_mib": m.peak_mib, f"{prefix}_repeats": m.repeats,
                f"{prefix}_skipped": m.skipped})


def _measure_one(step: Callable[[], object], cfg: ProfileConfig, meta_batch: int, steps: int,
                 order: str, path: str, clock: Clock, memory: CpuPeakRss | CudaPeakMemory,
                 predictor: Predictor, repeats: int, warmup: int, budget: float
                 ) -> Measurement:
    """One measurement, or a skip when the smaller ones measured before it predict that it
    would exceed the time budget or the free memory."""
    key = (cfg.name, order, path)
    guess = predictor.predict(key, meta_batch, steps)
    if guess is not None:
        seconds, mib = guess
        if seconds * (warmup + 2) > budget:  # warm-up, memory probe, one timed step
            predictor.record(key, meta_batch, steps, seconds, mib)
            return Measurement(skipped=f"predicted {seconds:.3g} s per step: {warmup + 2} steps "
                               f"would exceed the budget of {budget:g} s (--budget)")
        available = memory.available_mib()
        if mib > 0.9 * available:
            predictor.record(key, meta_batch, steps, seconds, mib)
            return Measurement(skipped=f"predicted {mib / 1024:.1f} GiB peak memory against "
                               f"{available / 1024:.1f} GiB available")
    m = measure(step, clock, memory, repeats, warmup, budget)
    if not m.skipped:
        predictor.record(key, meta_batch, steps, m.min_ms / 1e3, m.peak_mib)
    elif m.warmup_ms == m.warmup_ms:  # skipped for time after a warm-up: a lower bound
        mib = guess[1] if guess is not None else float("nan")
        predictor.record(key, meta_batch, steps, m.warmup_ms / 1e3, mib)
    log.debug("%s T=%d steps=%d %s %s: %s", cfg.name, meta_batch, steps, order, path,
             m.skipped or f"{m.min_ms:.2f} ms, {m.peak_mib:.1f} MiB")
    return m


def _ops_target(cfg: ProfileConfig, rows: list[dict[str, Any]]) -> tuple[int, int] | None:
    """The measured (meta-batch, steps) nearest the paper's, for the operator profile."""
    measured = [r for r in rows if not r["so_ours_skipped"]]
    if not measured:
        return None
    best = min(measured, key=lambda r: (abs(r["meta_batch"] - cfg.meta_batch) / cfg.meta_batch
                                        + abs(r["inner_steps"] - cfg.inner_steps),
                                        r["meta_batch"], r["inner_steps"]))
    return best["meta_batch"], best["inner_steps"]
