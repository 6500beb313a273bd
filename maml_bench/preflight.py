"""The checks that need the data or the network, made for every run of a command before the
first one starts (the settings' own domains are checked when they are parsed, config.py).

For each run not yet done, a checkpoint it would resume from is loaded (one this suite wrote
for that config, refused otherwise); then, seeds of one method sharing the check, the benchmark
is built, which opens the data once and refuses what it cannot give (a missing or damaged
dataset, fewer classes than ways, fewer images per class than K + Q); the memory floor is
compared with this machine's memory (memory_floor.py); and the method is built, which refuses
its own impossible settings (e.g. more ProtoNets training ways than training classes). Each
ends the command in one line naming the fix, before any run has written anything.
"""

from __future__ import annotations

from maml_bench.algorithms import ALGORITHMS
from maml_bench.config import config_hash
from maml_bench.memory_floor import check_fits, machine_bytes, rl_parts, supervised_parts
from maml_bench.run_spec import RunSpec
from maml_bench.runner import CHECKPOINT_FILE, _resume_state, build_benchmark, is_done


def check_runs(runs: list[RunSpec]) -> None:
    """Refuse, in one line, the first run of `runs` that could not run to its end here."""
    seen: set[tuple[str, str, str]] = set()
    for run in runs:
        key = (run.experiment, run.method, config_hash(run.config))
        if is_done(run):
            continue
        # a checkpoint to resume from: one this suite wrote for this config
        _resume_state(run.directory / CHECKPOINT_FILE, key[2])
        if key not in seen:
            seen.add(key)
            check_run(run)


def check_run(run: RunSpec) -> None:
    """One run's data, memory floor and method settings (see the module docstring)."""
    device, benchmark = build_benchmark(run)
    try:
        method = ALGORITHMS.get(run.method)
        if hasattr(benchmark, "make_policy"):  # meta-RL
            phases = rl_parts(benchmark, run.config, getattr(method, "train_inner_steps", None))
        else:
            phases = supervised_parts(benchmark, run.config, method.adapts_weights_at_test,
                                      task_passes=method.meta_trains_in_passes,
                                      device=str(device))
        check_fits(phases, machine_bytes(str(device)), run.run_id)
        method(benchmark, run.config, run.seed)
    finally:
        if hasattr(benchmark, "close"):
            benchmark.close()
