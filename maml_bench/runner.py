"""Runs one (experiment, method, repetition): train with checkpoints, evaluate, write records.

A run is a pure function of its spec and seed. Its directory holds a checkpoint (resumed after
a kill: model, optimizer and sampler state, so the numbers are the same as an uninterrupted
run), then the records file and run.json, each written atomically. A run whose run.json exists
with the same config is done and is skipped, so rerunning a command never duplicates records.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import gzip
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maml_bench import devices, distributed
from maml_bench.algorithms import ALGORITHMS, Algorithm
from maml_bench.config import (
    apply_overrides,
    check_identity,
    config_dict,
    config_hash,
    parse_overrides,
)
from maml_bench.core.chunking import set_run_cpus
from maml_bench.domains import evaluation_only, readers
from maml_bench.errors import (
    OutOfMemory,
    RunBusy,
    TrainingDiverged,
    UserError,
    is_allocator_failure,
)
from maml_bench.experiments import EXPERIMENTS, Experiment
from maml_bench.fits import FITS_FILE, fit_frame
from maml_bench.memory import keep_freed_memory
from maml_bench.progress import IterationProgress, say, terminal
from maml_bench.provenance import provenance
from maml_bench.results import (
    RECORD_COLUMNS,
    RECORDS_FILE,
    RUN_INFO_FILE,
    atomic_write_bytes,
    atomic_write_text,
    check_run,
    read_run_info,
    remove_empty_folders,
    seal,
    write_error,
    write_json,
    write_records,
)
from maml_bench.run_spec import RunSpec
from maml_bench.stopping import StopAtIterationEnd
from maml_bench.tasks import BENCHMARKS

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
TRAIN_LOG_FILE = "train_log.csv"
LOCK_FILE = ".run.lock"


def resolve_config(experiment: Experiment, scale: str, overrides: list[str],
                   method: str | None = None) -> Any:
    """The config one method runs with: the experiment's, then the method's own settings, the
    scale's, and the user's --set, each over the one before. The --set may not change what
    the experiment is (its dataset, ways, network, env: `config.check_identity`)."""
    if scale not in experiment.scales:
        raise UserError(f"unknown scale {scale!r}; choose one of {', '.join(experiment.scales)}")
    config = experiment.config
    if method is not None:
        config = apply_overrides(config, experiment.method(method).overrides)
    config = apply_overrides(config, experiment.scales[scale].overrides)
    changes = parse_overrides(config, overrides)
    check_identity(experiment.id, config, changes,
                   {name: EXPERIMENTS.get(name).config for name in EXPERIMENTS.names()})
    return apply_overrides(config, changes)


def plan_runs(
    experiment_id: str,
    scale: str = "quick",
    overrides: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: int | None = None,
    out: Path = Path("runs"),
) -> list[RunSpec]:
    """Every run an experiment command stands for, in the experiment's method order."""
    experiment = EXPERIMENTS.get(experiment_id)
    chosen = [experiment.method(m) for m in methods] if methods else list(experiment.methods)
    configs = {}
    for spec in chosen:
        ALGORITHMS.get(spec.algorithm)  # unknown algorithm ids fail before any work
        configs[spec.algorithm] = resolve_config(experiment, scale, overrides or [],
                                                 spec.algorithm)
    if seeds is not None and seeds <= 0:
        raise UserError(f"--seeds must be positive, got {seeds}")
    scale_seeds = experiment.scales[scale].seeds
    return [
        RunSpec(experiment.id, spec.algorithm, rep, configs[spec.algorithm], out)
        for spec in chosen
        for rep in range(seeds or scale_seeds or spec.seeds)
    ]


def check_readers(runs: list[RunSpec], overrides: list[str]) -> None:
    """Refuse a --set of a method's own setting (`used_by`) when none of `runs` is that method:
    it would change nothing, silently."""
    if not runs:
        return
    methods = {run.method for run in runs}
    for text in overrides:
        key = text.partition("=")[0].strip()
        users = readers(runs[0].config, key)
        if users and not methods & set(users):
            offered = [m.algorithm for m in EXPERIMENTS.get(runs[0].experiment).methods
                       if m.algorithm in users]
            fix = (f"drop it, or add --method {offered[0]}" if offered else
                   f"drop it ({runs[0].experiment} has no such method)")
            raise UserError(f"{key} (--set, --grid): only {', '.join(users)} reads it, and this "
                            f"command runs {', '.join(sorted(methods))}; {fix}")


def is_done(run: RunSpec) -> bool:
    """True if the run finished with this config and its records verify against run.json; a
    damaged or truncated records file makes it not done, so the run is redone."""
    info_path = run.directory / RUN_INFO_FILE
    if not (info_path.exists() and (run.directory / RECORDS_FILE).exists()):
        return False
    try:
        info = read_run_info(info_path)
    except (OSError, ValueError):
        return False  # a broken marker: redo the evaluation from the checkpoint
    if info.get("config_hash") != config_hash(run.config):
        raise UserError(
            f"{run.directory} holds a finished run with another config; "
            "use another --out, or delete that directory to replace it"
        )
    problem, _ = check_run(run.directory)
    if problem is not None:
        log.warning("%s: records not trustworthy (%s); redoing the run", run.run_id, problem)
        return False
    return True


def progress_mode(progress: bool | str | None) -> str:
    """bar on a terminal, lines in logs (or `progress="lines"`); `progress=False` silences
    both (pool workers under a bar, tests that want quiet)."""
    if progress is False:
        return "off"
    if progress == "lines":
        return "lines"
    return "bar" if progress or terminal() else "lines"


@contextmanager
def run_lock(run: RunSpec) -> Iterator[None]:
    """One process per run directory: a second one is refused with the holder's pid instead of
    training the same run twice. The lock dies with its process, so a kill never leaves it."""
    # The folders this call creates, innermost first: removed again if the lock cannot be
    # written, so that a full or read-only disk leaves no empty tree behind.
    created = [d for d in (run.directory, *run.directory.parents) if not d.exists()]
    path = run.directory / LOCK_FILE
    try:
        run.directory.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (closed below, after the lock is released)
    except OSError as err:
        remove_empty_folders(created)
        raise write_error(path, err) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunBusy(f"{run.run_id} is being run by another process (pid {holder}) in "
                            f"{run.directory}; wait for it or stop it, then run again") from None
        try:
            handle.truncate(0)
            os.write(handle.fileno(), f"{os.getpid()}\n".encode())  # unbuffered: fails here
        except OSError as err:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            with suppress(OSError):
                path.unlink(missing_ok=True)
            remove_empty_folders(created)
            raise write_error(path, err) from None
        try:
            yield
        finally:
            # The pid is only a hint for a refused second process: failing to clear it (disk
            # gone read-only) must not hide the run's own error behind a second traceback.
            with suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stray_temp_files(directory: Path) -> None:
    """Temp files left by a killed write (atomic writes rename theirs when they finish); only
    called while holding the run's lock, so no live writer owns them."""
    for stray in directory.glob(".*.tmp"):
        stray.unlink(missing_ok=True)


def execute(run: RunSpec, progress: bool | str | None = None, threads: int = 1,
            cpus: int | None = None) -> Path:
    """Train (resuming from a checkpoint if one exists), evaluate and write the run's files.
    `threads`: torch's intra-op threads; `cpus`: the CPUs the run may use for task threads
    (`task_threads=auto`; None: the machine's, shared with torchrun's other local processes).

    Under torchrun every process calls this for the same run: rank 0 alone holds the lock,
    decides whether the run is done, reads the checkpoint, writes every file and shows
    progress; every rank trains and evaluates (each step is a collective)."""
    with ExitStack() as stack:
        def claim() -> bool:
            stack.enter_context(run_lock(run))
            remove_stray_temp_files(run.directory)
            return is_done(run)

        if distributed.from_main(claim):
            log.info("%s: already done, skipped", run.run_id)
            return run.directory
        mode = progress_mode(progress) if distributed.is_main() else "off"
        try:
            set_run_cpus(cpus)
            return _execute(run, mode, threads)
        except UserError:
            # refused before writing anything (a backend gate, a device, the data): leave no
            # empty run folder behind to look like a started run
            _remove_if_unused(run)
            raise
        except (RuntimeError, MemoryError) as err:
            # under torchrun the other processes wait in a collective: this one must end
            if not is_allocator_failure(err) or distributed.launched():
                raise
            _remove_if_unused(run)
            raise out_of_memory(run, err) from None


def out_of_memory(run: RunSpec, err: BaseException) -> OutOfMemory:
    """The one line for an allocator's refusal mid-run."""
    what = (str(err).splitlines() or [type(err).__name__])[0]
    what = what.split("DefaultCPUAllocator: ")[-1]  # keep "can't allocate memory: ... bytes"
    return OutOfMemory(
        f"{run.run_id} ran out of memory ({what}): run it with a lower meta_batch, task_chunk "
        "or eval_chunk, or a smaller network (another config: it starts again, its checkpoint "
        "kept here)")


def _remove_if_unused(run: RunSpec) -> None:
    """Remove the run's folder, and its then empty parents below `run.out`, if it holds
    nothing but the lock (called while holding it)."""
    if not distributed.is_main() or {p.name for p in run.directory.iterdir()} != {LOCK_FILE}:
        return
    try:
        (run.directory / LOCK_FILE).unlink()
    except OSError:  # a read-only folder: keep it rather than hide the run's own error
        return
    folder = run.directory
    while folder != run.out and run.out in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run lives there
            return
        folder = folder.parent


def _execute(run: RunSpec, mode: str, threads: int) -> Path:
    torch.set_num_threads(threads)
    keep_freed_memory()
    device, benchmark, algorithm = _build(run)
    chash = config_hash(run.config)
    ckpt_path = run.directory / CHECKPOINT_FILE
    start, train_log, train_seconds, pending = 0, [], 0.0, None
    # Read by rank 0 and sent to the others under torchrun: the same state everywhere, even
    # where the processes do not share a file system.
    state = distributed.from_main(lambda: _resume_state(ckpt_path, chash))
    if state is not None:
        load_algorithm_state(algorithm, state, ckpt_path)
        start, train_log = state["iteration"], state["train_log"]
        train_seconds = state.get("train_seconds", 0.0)
        pending = state.get("pending")
        log.info("%s: resumed at iteration %d", run.run_id, start)

    # Everything alive now lives for the whole run: freezing it keeps Python's cyclic garbage
    # collector from re-scanning it thousands of times (measurably faster small-net training).
    gc.collect()
    gc.freeze()
    try:
        train_seconds = _train(run, algorithm, start, train_log, ckpt_path, chash, mode,
                               train_seconds, device, pending)
    finally:
        gc.unfreeze()
    return _evaluate_and_write(run, algorithm, benchmark, device, train_log, train_seconds)


def _build(run: RunSpec) -> tuple[torch.device, Any, Algorithm]:
    """The run's device, benchmark and freshly initialised algorithm."""
    device, benchmark = build_benchmark(run)
    return device, benchmark, ALGORITHMS.get(run.method)(benchmark, run.config, run.seed)


def build_benchmark(run: RunSpec) -> tuple[torch.device, Any]:
    """The run's device and its benchmark there (which opens the data)."""
    device = devices.torch_device(run.device)  # a worker without the GPU: one line, exit 2
    devices.use(device)
    benchmark = BENCHMARKS.get(EXPERIMENTS.get(run.experiment).benchmark)(run.config)
    if device.type != "cpu":  # drawn on the CPU as always, then moved: the same tasks
        benchmark = devices.OnDevice(benchmark, device)
    return device, benchmark


def _evaluate_and_write(run: RunSpec, algorithm: Algorithm, benchmark: Any,
                        device: torch.device, train_log: list[dict[str, float]],
                        train_seconds: float, extra_info: dict[str, Any] | None = None) -> Path:
    """Meta-test a trained algorithm and write the run's records, fits, log and run.json."""
    chash = config_hash(run.config)
    t0 = time.perf_counter()
    with torch.no_grad():
        curves = {k: v.cpu() for k, v in algorithm.evaluate().items()}
        fits = fit_frame(algorithm, benchmark, run.config.eval_steps)
    eval_seconds = time.perf_counter() - t0
    if not distributed.is_main():
        return run.directory  # rank 0 writes the run's files
    prov = provenance(devices.describe(device))
    frame = records_frame(run, curves, benchmark.metric_name, {**prov, "config_hash": chash})
    write_records(run.directory / RECORDS_FILE, frame)
    if fits is not None:
        atomic_write_bytes(run.directory / FITS_FILE, gzip.compress(
            fits.to_csv(index=False).encode(), mtime=0))
    artifacts = getattr(algorithm, "write_artifacts", None)  # e.g. RL rollout GIFs
    if artifacts is not None and run.config.render:
        drawn = artifacts(run.directory)
        if drawn and distributed.is_main():
            say(f"{run.run_id}: drew " + ", ".join(str(p) for p in drawn))
    columns = ["iteration", "train_loss"] + (["val_metric"] if getattr(
        run.config, "val_every", 0) else [])
    atomic_write_text(run.directory / TRAIN_LOG_FILE, pd.DataFrame(
        train_log, columns=columns).to_csv(index=False))
    nonfinite = int((~np.isfinite(frame["value"].to_numpy())).sum())
    write_json(run.directory / RUN_INFO_FILE, {
        "run_id": run.run_id, "experiment": run.experiment, "method": run.method,
        "repetition": run.repetition, "run_seed": run.seed, "config": config_dict(run.config),
        "config_hash": chash, "iterations": algorithm.iterations,
        "train_seconds": round(train_seconds, 2), "eval_seconds": round(eval_seconds, 2),
        "nonfinite_test_values": nonfinite, "info": algorithm.info,
        "world_size": distributed.world_size(),  # processes that split each meta-batch
        **(extra_info or {}), **seal(run.directory / RECORDS_FILE), **prov,
    })
    return run.directory


def trained_source(run: RunSpec, scale: str, overrides: list[str], source_out: Path,
                   trained_by: tuple[str, str] | None = None) -> RunSpec:
    """The run under `source_out` that trained `run`'s parameters: the same experiment, method,
    repetition, scale and settings, apart from the evaluation-only ones among `overrides`;
    `trained_by` (experiment, method): that one's run instead, whose training must be `run`'s
    (`check_evaluable`)."""
    experiment, method = trained_by or (run.experiment, run.method)
    eval_keys = evaluation_only(run.config)
    training = [o for o in overrides if o.partition("=")[0].strip() not in eval_keys]
    config = resolve_config(EXPERIMENTS.get(experiment), scale, training, method)
    reads = ALGORITHMS.get(method).training_settings(config) if trained_by else None
    if reads is not None:  # the other's settings that its training ignores stay its own
        training = [o for o in training if o.partition("=")[0].strip() in reads]
        config = resolve_config(EXPERIMENTS.get(experiment), scale, training, method)
    return dataclasses.replace(run, experiment=experiment, method=method, config=config,
                               out=source_out)


def check_evaluable(run: RunSpec, source: RunSpec) -> list[str]:
    """The settings in which `run` differs from the finished run `source`, after checking
    that they are evaluation-only and that `source` is done with its checkpoint kept. A source
    of another method or experiment (`--trained-by`) must share `run`'s training and agree on
    every setting that training reads (`Algorithm.training_settings`)."""
    allowed = evaluation_only(run.config)
    if (source.experiment, source.method) != (run.experiment, run.method):
        reads = _shared_training(run, source)  # first: the configs may be of other kinds
        allowed = {f.name for f in dataclasses.fields(run.config)} - reads
    differing = [f.name for f in dataclasses.fields(run.config)
                 if getattr(run.config, f.name) != getattr(source.config, f.name)]
    training = sorted(set(differing) - allowed)
    if training and (source.experiment, source.method) != (run.experiment, run.method):
        raise UserError(f"--trained-by {source.experiment}/{source.method}: its training reads "
                        f"{', '.join(training)}, which differ here, so it trained another "
                        "network: train this run with `run` instead")
    if training:
        raise UserError(f"--evaluate-from may change evaluation-only settings alone "
                        f"({', '.join(sorted(allowed))}); {', '.join(training)} change what is "
                        "trained: train those runs with `run` instead")
    try:
        done = (source.directory / CHECKPOINT_FILE).exists() and is_done(source)
    except UserError:  # finished with another config
        raise UserError(f"{source.directory} was trained with other settings than this "
                        "command's --scale and --set (apart from evaluation-only ones): give "
                        "the ones it was trained with") from None
    if not done:
        raise UserError(
            f"no finished {source.run_id} with its checkpoint in {source.directory}: train it "
            f"first (maml-bench run {source.experiment} --method {source.method} --out "
            f"{source.out}, at the same --scale and --set)")
    _source_state(source)  # before `run`'s folder and lock exist: a bad one leaves nothing
    return differing


def _shared_training(run: RunSpec, source: RunSpec) -> frozenset[str]:
    """The settings that `source`'s training reads, where it is `run`'s training too; else a
    one-line refusal."""
    run_class, source_class = ALGORITHMS.get(run.method), ALGORITHMS.get(source.method)
    name = f"--trained-by {source.experiment}/{source.method}"
    if ((source_class.trains_as or source.method) != (run_class.trains_as or run.method)
            or type(source.config) is not type(run.config)):
        raise UserError(f"{name}: its training is not {run.experiment}/{run.method}'s (only "
                        "methods that share one training, such as finetune and "
                        "nearest-neighbour, can be evaluated from each other)")
    reads = source_class.training_settings(source.config)
    if reads is None or run_class.training_settings(run.config) != reads:
        raise UserError(f"{name}: its training reads the episodes' settings here (the "
                        "baselines do so with pretrain_batch=0): --set pretrain_batch (Ravi & "
                        "Larochelle: 64) for both, or train this run with `run`")
    return reads


def _source_state(source: RunSpec) -> dict[str, Any]:
    """The finished run `source`'s checkpoint, checked to be one this suite wrote for it."""
    path = source.directory / CHECKPOINT_FILE
    state = _load_checkpoint(path, fix="train that run again with `run` (or get its real files)")
    if state["config_hash"] != config_hash(source.config):
        raise UserError(f"{path} belongs to another config than its run.json: train that run "
                        "again with `run`")
    return state


def evaluate_trained(run: RunSpec, source: RunSpec) -> Path:
    """Meta-test the finished run `source` again under `run`'s config, which differs from the
    source's in evaluation-only settings alone (test episodes, their queries, seed, K), and
    write the records as `run`'s, with no training: the trained parameters are the source's."""
    differing = check_evaluable(run, source)
    state = _source_state(source)
    with run_lock(run):
        remove_stray_temp_files(run.directory)
        if is_done(run):
            log.info("%s: already done (evaluated or trained), skipped: its records are kept",
                     run.run_id)
            return run.directory
        try:
            torch.set_num_threads(1)
            device, benchmark, algorithm = _build(run)
            load_algorithm_state(algorithm, state, source.directory / CHECKPOINT_FILE,
                                 fix="train that run again with `run`")
            log.info("%s: evaluating the parameters trained in %s", run.run_id,
                     source.directory)
            return _evaluate_and_write(
                run, algorithm, benchmark, device, state["train_log"],
                state.get("train_seconds", 0.0),
                {"evaluated_from": str(source.directory),
                 "trained_config_hash": config_hash(source.config), "changed": differing,
                 "trained_run": source.run_id, "trained_seed": source.seed})
        except UserError:
            _remove_if_unused(run)
            raise
        except (RuntimeError, MemoryError) as err:
            if not is_allocator_failure(err):
                raise
            _remove_if_unused(run)
            raise out_of_memory(run, err) from None


def load_algorithm_state(algorithm: Algorithm, state: dict[str, Any], path: Path,
                         fix: str = "delete it to restart that run") -> None:
    """`algorithm.load_state_dict` of a checkpoint's state; one whose contents do not fit this
    algorithm (keys, shapes: edited, or another method's) is one line naming `path`."""
    try:
        algorithm.load_state_dict(state["algorithm"])
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as err:
        what = (str(err).splitlines() or [""])[0][:80]
        raise UserError(f"checkpoint {path} does not fit {type(algorithm).__name__} "
                        f"({type(err).__name__}: {what}); {fix}") from None


def _train(run: RunSpec, algorithm: Algorithm, start: int, train_log: list[dict[str, float]],
           ckpt_path: Path, chash: str, mode: str, seconds_before: float,
           device: torch.device, pending: dict[str, Any] | None = None) -> float:
    """Train from iteration `start`; returns the training seconds of all sessions so far.

    Loss and parameters are checked finite every `check_every` iterations and also before every
    training-log row and every checkpoint, so neither a log nor a checkpoint ever holds NaN/inf.
    A stop (Ctrl-C, SIGTERM) takes effect after the iteration in flight, with a checkpoint
    there (`stopping.py`). `pending`: the training loss summed since the last log row, as the
    checkpoint kept it, so that a resumed run logs what an uninterrupted one would.
    """
    c = run.config
    total = algorithm.iterations
    every_ckpt = getattr(algorithm, "checkpoint_interval", c.checkpoint_every)
    every_val = getattr(c, "val_every", 0)  # few-shot: a validation curve while training
    bar = IterationProgress(run.run_id, total, start, mode)
    loss_sum = torch.zeros((), device=device)
    since_log = 0
    if pending is not None:
        loss_sum, since_log = pending["loss_sum"].to(device), pending["steps"]
    last_good = start if ckpt_path.exists() else None
    t0 = time.perf_counter()

    def finite_or_raise(done: int) -> None:
        # loss_sum covers every step since the last log row: no non-finite loss escapes.
        if not (math.isfinite(loss_sum.item()) and _all_finite(algorithm)):
            where = (f"last good checkpoint {ckpt_path} (iteration {last_good}) kept"
                     if last_good is not None else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"{run.run_id}: non-finite loss or parameters by iteration {done}; {where}; "
                "lower meta_lr or inner_lr, or clip with --set grad_clip=10")

    def checkpoint(done: int) -> int:
        distributed.check_identical(algorithm.tensors())  # torchrun: one state, one file
        if distributed.is_main():
            _save_checkpoint(ckpt_path, algorithm, done, train_log, chash,
                             seconds_before + time.perf_counter() - t0,
                             {"loss_sum": loss_sum.detach().cpu(), "steps": since_log})
        return done

    with StopAtIterationEnd() as stop:
        for it in range(start, total):
            # Losses stay tensors (no sync per step); read only when checked or logged.
            loss_sum = loss_sum + algorithm.train_step(it)
            since_log += 1
            done = it + 1
            val_due = every_val > 0 and (done % every_val == 0 or done == total)
            log_due = done % c.log_every == 0 or done == total or val_due
            ckpt_due = done % every_ckpt == 0 or done == total
            if done % c.check_every == 0 or log_due or ckpt_due:
                finite_or_raise(done)
            if log_due:
                row = {"iteration": done, "train_loss": loss_sum.item() / since_log}
                if val_due:
                    # Fixed validation tasks, no randomness drawn: resuming gives the same curve.
                    row["val_metric"] = algorithm.validation_score()
                train_log.append(row)
                loss_sum, since_log = torch.zeros((), device=device), 0
            if ckpt_due:
                last_good = checkpoint(done)
            bar.update(done)
            if stop.agreed():  # asked for during this iteration: it is finished, so save it
                if last_good != done:
                    finite_or_raise(done)
                    last_good = checkpoint(done)
                bar.close(finished=False)
                say(f"{run.run_id}: stopped after iteration {done:,}, checkpoint written")
                raise KeyboardInterrupt
    bar.close()
    return seconds_before + time.perf_counter() - t0


def _all_finite(algorithm: Algorithm) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in algorithm.tensors())


#: what every checkpoint holds (see _save_checkpoint), with the types a resume relies on
CHECKPOINT_KEYS = {"algorithm": dict, "iteration": int, "train_log": list, "config_hash": str}


def _save_checkpoint(path: Path, algorithm: Algorithm, iteration: int,
                     train_log: list[dict[str, float]], chash: str, seconds: float,
                     pending: dict[str, Any] | None = None) -> None:
    """`pending`: the loss summed since the last log row and its number of steps."""
    import io

    buffer = io.BytesIO()
    # CPU tensors: the checkpoint loads on any device (a run may resume on another one)
    torch.save({"algorithm": devices.to_cpu(algorithm.state_dict()), "iteration": iteration,
                "train_log": list(train_log), "config_hash": chash,
                "train_seconds": seconds, "pending": pending}, buffer)
    # Checkpoints are read with weights_only=True (tensors and plain values alone): a state
    # holding anything else is a bug to meet now, not a run that cannot resume hours later.
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's refusal, whatever its type
        raise RuntimeError(f"{type(algorithm).__name__}.state_dict() holds more than tensors "
                           f"and plain values: {str(err).splitlines()[0]}") from err
    atomic_write_bytes(path, buffer.getvalue())


def _resume_state(path: Path, chash: str) -> dict[str, Any] | None:
    """The checkpoint to resume from, None if there is none yet."""
    if not path.exists():
        return None
    state = _load_checkpoint(path)
    if state["config_hash"] != chash:
        raise UserError(f"{path} belongs to another config; delete it or use --out")
    return state


def _load_checkpoint(path: Path, fix: str = "delete it to restart that run") -> dict[str, Any]:
    """A checkpoint this suite wrote, else a UserError naming `path` and `fix`.

    weights_only=True: unpickling runs no code from the file, only rebuilds tensors and plain
    values, so a tampered checkpoint (in a shared or downloaded results folder) cannot run any.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing
        raise UserError(f"checkpoint {path} is unreadable or not one this suite wrote "
                        f"({type(err).__name__}); {fix}") from None
    if not (isinstance(state, dict) and all(
            isinstance(state.get(k), t) for k, t in CHECKPOINT_KEYS.items())):
        raise UserError(f"checkpoint {path} is not one this suite wrote (not a dict with "
                        f"{', '.join(CHECKPOINT_KEYS)}); {fix}")
    return state


def records_frame(run: RunSpec, curves: dict[int, torch.Tensor], metric: str,
                  provenance_columns: dict[str, str]) -> pd.DataFrame:
    """Long form: one row per (test task, K, step) for this run's metric."""
    frames = []
    for shots, values in curves.items():
        n_tasks, n_steps = values.shape
        frames.append(pd.DataFrame({
            "shots": shots,
            "task": torch.arange(n_tasks).repeat_interleave(n_steps).numpy(),
            "step": torch.arange(n_steps).repeat(n_tasks).numpy(),
            "value": values.double().reshape(-1).numpy(),
        }))
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "run_id", run.run_id)
    frame.insert(1, "experiment", run.experiment)
    frame.insert(2, "method", run.method)
    frame.insert(3, "seed", run.repetition)
    frame.insert(4, "run_seed", run.seed)
    frame.insert(8, "metric", metric)
    for key, value in provenance_columns.items():
        frame[key] = value
    return frame[RECORD_COLUMNS + list(provenance_columns)]
