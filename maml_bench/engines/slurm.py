"""Runs as SLURM jobs through submitit (a job array; logs kept per job), or as the same jobs on
this machine through submitit's LocalExecutor (`submitit-local`: try a cluster setup here).

A job preempted or out of time is requeued by submitit (`RunJob.checkpoint`); a job that dies
otherwise (killed, node lost) is resubmitted up to --retries times. Either way the run resumes
from its last checkpoint in the shared output directory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from maml_bench.engines.job import JobResult, run_job
from maml_bench.engines.options import EngineOptions
from maml_bench.engines.summary import Summary, Waiting
from maml_bench.errors import UserError, one_line
from maml_bench.progress import say
from maml_bench.run_spec import RunSpec

POLL_SECONDS = 1.0
LOCAL_RESULT_WAIT_S = 1


def run_on_submitit(todo: list[RunSpec], options: EngineOptions, summary: Summary,
                    logs: Path) -> None:
    executor = _executor(options, logs)
    job_fn = RunJob()
    # slurm: the array's parallelism limits on the cluster; locally, one run per CPU slot
    limit = (len(todo) if options.engine == "slurm" else
             options.jobs or max(1, (os.cpu_count() or 1) // options.cpus_per_run))
    queue = list(todo)
    live: dict[str, tuple[Any, RunSpec]] = {}  # by run directory
    attempts = dict.fromkeys((str(r.directory) for r in todo), 0)
    waiting = Waiting()
    try:
        while queue or live or waiting.runs:
            batch = queue[:max(0, limit - len(live))]
            queue = queue[len(batch):]
            try:
                submitted = _submit(executor, job_fn, batch, options)
            except (FailedJobError, OSError, subprocess.CalledProcessError) as err:
                lines = [x for x in str(err).splitlines() if "error" in x.lower()] or [str(err)]
                raise UserError(f"SLURM refused the jobs: {one_line(lines[-1])[:300]}; check "
                                "--partition, --time, --gpus-per-run, --mem-gb") from None
            for job, run in zip(submitted, batch, strict=True):
                live[str(run.directory)] = (job, run)
            _index_logs(logs, submitted, batch)
            for key, (job, run) in list(live.items()):
                if not job.done():
                    continue
                del live[key]
                result = _result(job, run)
                if result is None and attempts[key] < options.retries:
                    attempts[key] += 1
                    say(f"{run.run_id}: job {job.job_id} ended without a result; resubmitting "
                        f"(attempt {attempts[key] + 1}; it resumes from its checkpoint)")
                    queue.insert(0, run)
                    continue
                if result is None:
                    result = JobResult(key, False, f"job {job.job_id} ended without a result "
                                       f"{attempts[key] + 1} times; log: {job.paths.stderr}")
                if result.busy:
                    waiting.add(run, result.reason)
                else:
                    summary.finished(result.directory, result.ok, result.reason)
            queue[:0] = waiting.released(summary)
            summary.refresh([*live, *waiting.runs])
            if live or waiting.runs:
                time.sleep(POLL_SECONDS)
    except BaseException:
        for job, _ in live.values():  # Ctrl-C: cancel the queued and running jobs
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - an ended job: go on cancelling the others
                continue
        raise


def _executor(options: EngineOptions, logs: Path) -> Any:
    folder = logs / "%j"
    if options.engine == "submitit-local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_min,
                                   gpus_per_node=int(options.gpus_per_run))
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params: dict[str, Any] = {"timeout_min": options.time_min, "name": "maml-bench",
                              "cpus_per_task": options.cpus_per_run}
    if options.gpus_per_run:  # left out otherwise: clusters without GPU GRES may refuse it
        params["gpus_per_node"] = int(options.gpus_per_run)
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    if options.jobs:
        params["slurm_array_parallelism"] = options.jobs
    executor.update_parameters(**params)
    return executor


def _index_logs(logs: Path, jobs: list[Any], runs: list[RunSpec]) -> None:
    """LOGS/runs.tsv: which job (and log folder) ran which run, every attempt appended."""
    if not jobs:
        return
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "runs.tsv", "a") as index:
        for job, run in zip(jobs, runs, strict=True):
            index.write(f"{run.run_id}\t{run.directory}\t{job.job_id}\t{job.paths.stderr}\n")


def _submit(executor: Any, job_fn: Any, runs: list[RunSpec], options: EngineOptions
            ) -> list[Any]:
    if not runs:
        return []
    if options.engine == "slurm":  # one job array
        return executor.map_array(job_fn, runs, [options.cpus_per_run] * len(runs))
    jobs = [executor.submit(job_fn, run, options.cpus_per_run) for run in runs]
    for job in jobs:
        # submitit waits up to 15 s for the result file of an ended job, for shared file
        # systems that show it late; a local job writes to this machine's disk, so a job with
        # no file after 1 s was killed, and its retry need not wait
        job._results_timeout_s = LOCAL_RESULT_WAIT_S
    return jobs


def _result(job: Any, run: RunSpec) -> JobResult | None:
    """The job's result, or None if it ended without one (killed, node lost: retry it)."""
    try:
        result = job.result()
    except FailedJobError as err:  # our code raised in the job: a bug, the same on a retry
        lines = [line for line in str(err).splitlines() if line.strip()]
        last = one_line(lines[-1] if lines else "")[:300]
        return JobResult(str(run.directory), False, f"{last}; log: {job.paths.stderr}")
    except Exception:  # noqa: BLE001 - UncompletedJobError (killed, node lost), a torn result
        return None  # file...: no usable result; the retry resumes the run from its checkpoint
    return result if isinstance(result, JobResult) else None


class RunJob(submitit.helpers.Checkpointable):
    """run_job as a checkpointable submitit callable: on preemption or timeout submitit
    requeues it with the same arguments, and the run resumes from its own checkpoint."""

    def __call__(self, run: RunSpec, threads: int) -> JobResult:
        return run_job(run, threads)
