"""Runs as Ray tasks: on an existing cluster (`--address`) or on a local one started for the
command. Ray retries a task whose worker died (`--retries`); the run then resumes from its last
checkpoint in the shared output directory, so a lost worker costs only the work since then."""

from __future__ import annotations

import os
import time
from typing import Any

from maml_bench.engines.job import JobResult, run_job
from maml_bench.engines.options import EngineOptions, require_module
from maml_bench.engines.summary import Summary, Waiting
from maml_bench.errors import UserError, one_line
from maml_bench.run_spec import RunSpec

#: environment the workers need from the driver (datasets, caches, progress cadence)
FORWARDED_ENV = ("MAML_BENCH_DATA", "MAML_BENCH_CACHE", "MAML_BENCH_PROGRESS_SECONDS")
#: Ray's own variable (its spelling) for the nice value of the workers a raylet starts
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def run_on_ray(todo: list[RunSpec], options: EngineOptions, summary: Summary) -> None:
    ray = require_module("ray", "ray")
    started = not ray.is_initialized()
    if started:
        _connect(ray, options)
    _check_resources(ray, options)
    remote = ray.remote(run_job)
    refs: dict[Any, RunSpec] = {}
    waiting = Waiting()

    def submit(run: RunSpec) -> Any:
        ref = remote.options(
            num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
            max_retries=options.retries, retry_exceptions=False,
            name=run.run_id).remote(run, options.cpus_per_run)
        refs[ref] = run
        return ref

    try:
        pending = [submit(run) for run in todo]
        while pending or waiting.runs:
            if pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            else:
                ready = []
                time.sleep(1.0)
            for ref in ready:
                result = _result(ray, ref, refs[ref])
                if result.busy:
                    waiting.add(refs[ref], result.reason)
                else:
                    summary.finished(result.directory, result.ok, result.reason)
            pending += [submit(run) for run in waiting.released(summary)]
            summary.refresh([str(refs[ref].directory) for ref in pending] + list(waiting.runs))
    except BaseException:
        for ref in refs:  # Ctrl-C: stop the cluster's work too; checkpoints are kept
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - done tasks, a lost connection: go on cancelling
                continue
        raise
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, options: EngineOptions) -> None:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "logging_level": "ERROR"}
    if options.address:
        try:
            ray.init(address=options.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(f"--address {options.address}: no Ray cluster there "
                            f"({one_line(str(err))[:200]}); start one with `ray start --head` "
                            "or leave --address out for a local one") from None
        return
    cpus = options.jobs * options.cpus_per_run if options.jobs else None  # None: every core
    # Ray starts its workers at nice 15, which starves our runs on a machine doing other work
    # (docs/scale-out.md). The runs are this command's work, as in the local pool: nice 0.
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    try:  # "local": a new cluster, never one a `ray start` or RAY_ADDRESS left on this machine
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"could not start a local Ray cluster ({one_line(str(err))[:200]}); "
                        "join a running one with --address") from None


def _check_resources(ray: Any, options: EngineOptions) -> None:
    """A run asking for more than any node has would wait forever: refuse it instead."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    need = {"CPU": options.cpus_per_run, "GPU": options.gpus_per_run}
    if any(all(res.get(k, 0) >= v for k, v in need.items() if v) for res in nodes):
        return
    most = {k: max((res.get(k, 0) for res in nodes), default=0) for k in need}
    raise UserError(f"no Ray node has {options.cpus_per_run} CPUs and "
                    f"{options.gpus_per_run:g} GPUs for a run (largest: {most['CPU']:g} CPUs, "
                    f"{most['GPU']:g} GPUs); lower --cpus-per-run/--gpus-per-run or add nodes")


def _result(ray: Any, ref: Any, run: RunSpec) -> JobResult:
    """The run's result; a worker lost more often than --retries allows becomes a failure."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        raise KeyboardInterrupt from None
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None)  # RayTaskError: the exception raised in the task
        if cause is not None:
            text = f"{type(cause).__name__}: {cause}"
        else:
            lines = [line for line in str(err).splitlines() if line.strip()]
            text = f"{type(err).__name__}: {lines[-1] if lines else ''}"
        return JobResult(str(run.directory), False, one_line(text)[:300])
