"""Typed configuration, in one place: the settings every experiment shares (`MetaConfig`, which
each benchmark's config extends) and command-line overrides (`--set key=value`) checked against
them.

Defaults are the paper's sinusoid values; every field can be changed with `--set key=value` and
declares its valid domain (`setting(default, domain)`), checked before any work starts. Upper
bounds stop values that would only exhaust memory or time.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from maml_bench.domains import (
    Items,
    Number,
    OneOf,
    check_fields,
    describe_field,
    domain_of,
    identity_settings,
    require,
    same_identity,
    setting,
    show_value,
)
from maml_bench.errors import UserError

C = TypeVar("C")

COUNT = 10_000_000  # iterations and intervals: 140x the paper's 70,000 meta-iterations
STEP = Number(float, 0.0, 10.0, lo_open=True)  # a step size
SIZE = Number(int, 1, 100_000)  # tasks, networks, chunk sizes
REPTILE = ("reptile",)  # the algorithms that read the reptile_* settings
#: the algorithms whose meta-step is MAML's (`algorithms/maml.py` train_step)
MAML_STEP = ("maml", "fomaml", "metasgd", "anil", "context-vector")


@dataclass(frozen=True)
class MetaConfig:
    # --- meta-training (MAML and its relatives) ---
    iterations: int = setting(70_000, Number(int, 1, COUNT))
    """meta-iterations (outer steps); also the regression steps of pretrain/oracle"""
    meta_batch: int = setting(25, SIZE)
    """tasks per meta-iteration"""
    meta_lr: float = setting(1e-3, STEP)
    """Adam step size of the outer (meta) optimizer"""
    inner_lr: float = setting(0.01, STEP)
    """alpha: inner gradient step size (each experiment's default is its paper's value; its
    notes say where the reference code used another)"""
    inner_steps: int = setting(1, Number(int, 1, 100))
    """inner gradient steps during meta-training"""
    train_shots: int = setting(10, Number(int, 1, 10_000))
    """K support examples per task during meta-training"""
    train_query: int = setting(10, Number(int, 1, 10_000))
    """query examples per task during meta-training"""
    grad_clip: float = setting(0.0, Number(float, 0.0, 1e6))
    """clip meta-gradients to [-c, c] (0 = off; the code clips MiniImagenet at 10)"""
    path: str = setting("auto", OneOf(("auto", "fused", "factored", "batched", "vmap", "loop",
                                       "higher")), used_by=(*MAML_STEP, *REPTILE))
    """meta-gradient backend (maml_bench/core/backends.py): fused (the model's own batched
    forward with hand-written second derivatives, Conv4) | factored (fully connected nets:
    adapted weights as the shared ones plus low-rank corrections, no per-task copies) |
    batched (the model's own batched forward) | vmap (vmap over functional_call) | loop (the
    per-task reference loop) | higher (the `higher` library, extra "check"); each but loop is
    used only after its float64 reference and finite-difference checks pass for the model,
    else refused with the reason. auto: the first passing of fused, factored, batched, vmap,
    loop (fastest first, docs/speed.md; factored only where its corrections are much smaller
    than the weights)"""
    cuda_graph: str = setting("off", OneOf(("off", "on")), hashed_at_default=False,
                              used_by=MAML_STEP)
    """on: each meta-gradient (of the `path` backend) captured once and replayed as one CUDA
    graph, for the fixed shapes of the training batches (core/graphed.py; --device cuda, one
    process). Checked at capture against eager's own run-to-run spread; refused with the
    reason (then eager, in run.json info.cuda_graph) if it differs. Worth it where kernel
    launches, not arithmetic, bound the eager step, as at MAML's small shapes (docs/speed.md
    "On a GPU")"""
    task_chunk: int = setting(-1, Number(int, -1, 100_000), hashed_at_default=False,
                              used_by=(*MAML_STEP, "metalstm"), words={"auto": -1, "whole": 0})
    """tasks per meta-gradient pass, their gradients summed: the same gradient up to rounding,
    in smaller graphs (bounds memory; on the CPU a pass that fits the cache is faster). auto
    (-1): on the CPU the whole batch for tiny tasks, else a power of two of tasks whose
    first-layer activations fit 10 MiB, at most 8 (core/chunking.py, measured for MAML's
    step: results/benchmarks/task-chunks-cpu.md); on a GPU the whole batch. whole (0): the
    whole meta-batch in one pass"""
    task_threads: int = setting(-1, Number(int, -1, 256), hashed_at_default=False,
                                used_by=MAML_STEP, words={"auto": -1})
    """threads that each differentiate a contiguous share of the meta-batch's tasks on the
    CPU, their gradients summed: the same gradient up to rounding (deterministic for a given
    count). auto (-1): the CPUs the run was given (a lone local run: every CPU; its share under
    --jobs or torchrun; --cpus-per-run on Ray/SLURM) for the conv nets' tasks up to 10 MiB of
    first-layer activations (Omniglot); larger tasks (MiniImagenet) get those CPUs as torch's
    own threads instead; 1 for tiny tasks (the fully connected nets) and on a GPU. 0 or 1: the
    calling thread alone. Each task thread runs torch on one thread of its own; only the fused,
    factored and batched backends (whose forwards leave the module alone) take more than 1
    (core/chunking.py; measured: results/benchmarks/task-threads-cpu.md)"""
    # --- Reptile, Meta-SGD ---
    reptile_inner_steps: int = setting(5, Number(int, 1, 1_000), used_by=REPTILE)
    """Reptile: inner steps per task before the outer update"""
    # Reptile's own protocol (Nichol et al. 2018, openai/supervised-reptile), added after runs
    # existed: left out of the hash at the defaults, which are the sinusoid Reptile's behaviour.
    reptile_inner_optimizer: str = setting("sgd", OneOf(("sgd", "adam")), hashed_at_default=False,
                                           used_by=REPTILE)
    """Reptile: inner optimizer with step size inner_lr: sgd | adam (their code: Adam with
    beta1 = 0, TF's update; its moments are not trainable variables, so they carry over from
    task to task and into every meta-test task, which starts from a copy)"""
    reptile_adam_betas: tuple[float, ...] = setting(
        (0.0, 0.999), Items(Number(float, 0.0, 1.0, hi_open=True), 2, 2), hashed_at_default=False,
        used_by=REPTILE)
    """Reptile's inner Adam: beta1,beta2 (their code: 0 and TF's default 0.999)"""
    reptile_inner_loss: str = setting("mean", OneOf(("mean", "sum")), hashed_at_default=False,
                                      used_by=REPTILE)
    """Reptile: the inner loss of a minibatch, mean | sum over its examples (their code
    minimizes TF's per-example loss vector, whose gradient is that of its sum)"""
    reptile_inner_batch: int = setting(0, Number(int, 0, 100_000), hashed_at_default=False,
                                       used_by=REPTILE)
    """Reptile: examples per inner step during meta-training, drawn without replacement from the
    task's train_shots per class, reshuffled at each pass (a batch may straddle two passes, as
    their code); 0 = the whole set every step"""
    reptile_eval_batch: int = setting(0, Number(int, 0, 100_000), hashed_at_default=False,
                                      used_by=REPTILE)
    """Reptile: examples per fine-tuning step at meta-test, drawn from the support set the same
    way; 0 = the whole support set every step"""
    reptile_outer: str = setting("adam", OneOf(("adam", "interpolate")), hashed_at_default=False,
                                 used_by=REPTILE)
    """Reptile's outer update: adam (theta - mean adapted weights as Adam's gradient at meta_lr)
    | interpolate (theta += eps * (mean adapted - theta), eps annealed linearly from
    reptile_meta_step to reptile_meta_step_final over the iterations: their code)"""
    reptile_meta_step: float = setting(0.1, STEP, hashed_at_default=False, used_by=REPTILE)
    """Reptile, interpolate: eps at the first iteration (their flag's default 0.1; paper 1)"""
    reptile_meta_step_final: float = setting(0.1, Number(float, 0.0, 10.0),
                                             hashed_at_default=False, used_by=REPTILE)
    """Reptile, interpolate: eps reached at the end of the run (their flag's default 0.1;
    paper 0)"""
    metasgd_init_lr: float = setting(0.01, STEP, used_by=("metasgd",))
    """Meta-SGD: initial value of every learned per-parameter step size"""
    context_size: int = setting(10, Number(int, 1, 10_000), hashed_at_default=False,
                                used_by=("context-vector", "rl-context-vector"))
    """context vector: size of the free input parameters z, the only ones adapted in the inner
    loop: features for vectors, image channels (free per pixel) for images; the paper's
    App. C.2 does not state it"""
    # --- meta-test ---
    eval_shots: tuple[int, ...] = setting((5, 10, 20), Items(Number(int, 1, 10_000), 1, 16),
                                          evaluation_only=True)
    """K at meta-test"""
    eval_steps: int = setting(10, Number(int, 0, 1_000))
    """gradient steps at meta-test (records after 0..eval_steps)"""
    test_tasks: int = setting(600, Number(int, 2, 100_000), evaluation_only=True)
    """fixed, seeded meta-test tasks (at least 2: a confidence interval needs a spread)"""
    test_seed: int = setting(20170309, Number(int, 0, 2**62), evaluation_only=True)
    """seed of the meta-test tasks (the same for every method and repetition)"""
    val_tasks: int = setting(200, SIZE)
    """validation tasks (separate seed) for tuning the fine-tuning step size of baselines"""
    finetune_lrs: tuple[float, ...] = setting(
        (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2), Items(STEP, 1, 64))
    """grid searched on the validation tasks for 'tuned step size' baselines"""
    eval_chunk: int = setting(200, SIZE, evaluation_only=True)
    """tasks adapted at once during meta-test (memory vs speed)"""
    # --- bookkeeping ---
    checkpoint_every: int = setting(5_000, Number(int, 1, COUNT))
    """iterations between checkpoints (a killed run resumes from the last one)"""
    check_every: int = setting(100, Number(int, 1, COUNT))
    """iterations between finiteness checks of loss and parameters (also at every log row and
    before every checkpoint)"""
    log_every: int = setting(1_000, Number(int, 1, COUNT))
    """iterations between training-log rows"""

    def validate(self) -> None:
        """Each field in its domain, then the rules across fields."""
        check_fields(self)
        points = self.meta_batch * (self.train_shots + self.train_query)
        require(points <= 10_000_000, ["meta_batch", "train_shots", "train_query"],
                "meta_batch * (train_shots + train_query) <= 10,000,000 examples per "
                f"meta-batch (memory), got {points:,}")


def _parse_scalar(kind: type, text: str, key: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--set {key}={text}: expected true or false")
    if kind in (int, float):
        # int() and float() also read other scripts' digits (int("١٢") == 12) and Unicode
        # spaces: run.json would then hold a number the command line never showed in ASCII.
        if not text.isascii():
            raise UserError(f"--set {key}={text}: expected {kind.__name__} in ASCII digits")
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"--set {key}={text}: expected {kind.__name__}") from None
        return value
    if kind is str:
        return text
    raise UserError(f"--set {key}: cannot be set from the command line")


def parse_value(annotation: Any, text: str, key: str) -> Any:
    """Turn override text into a value of the annotated type (no eval of user text)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return parse_value(non_none[0], text, key)
    if origin is tuple:
        items = text.replace(" ", "").split(",")
        if not all(items):  # `5,,10` or `5,`: a typo, not a shorter list
            raise UserError(f"--set {key}={text}: expected a comma-separated list without "
                            "empty items")
        return tuple(_parse_scalar(args[0], item, key) for item in items)
    if origin is typing.Literal:
        if text not in args:
            raise UserError(f"--set {key}={text}: expected one of {', '.join(map(str, args))}")
        return text
    return _parse_scalar(annotation, text, key)


def apply_overrides(config: C, overrides: dict[str, Any] | list[str]) -> C:
    """Return a copy of the dataclass `config` with overrides applied and validated.

    `overrides` is either a list of "key=value" strings (command line) or a dict of typed values.
    """
    changes = parse_overrides(config, overrides)
    new = dataclasses.replace(config, **changes)  # type: ignore[type-var]
    new.validate()  # every field in its domain, and the rules across fields
    return new


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # evaluates every annotation: milliseconds per call


def parse_overrides(config: Any, overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """The typed values of `overrides` (as `apply_overrides` takes them), not yet validated:
    an unknown setting or unparsable text is refused in one line."""
    hints = _type_hints(type(config))
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    items = overrides.items() if isinstance(overrides, dict) else map(_split, overrides)
    for key, value in items:
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, sorted(fields), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(
                f"unknown setting {key!r}{hint} (`maml-bench show EXPERIMENT` lists settings)"
            )
        words = fields[key].metadata.get("words") or {}
        if isinstance(value, str) and value.strip().lower() in words:
            value = words[value.strip().lower()]  # a named value (task_chunk=auto)
        elif isinstance(value, str):
            try:
                value = parse_value(hints[key], value, key)
            except UserError as err:
                raise UserError(f"{err}; {key} must be {describe_field(fields[key])}") from None
        changes[key] = value
    return changes


def check_identity(experiment: str, config: Any, changes: dict[str, Any],
                   catalogue: dict[str, Any]) -> None:
    """Refuse a change (`parse_overrides`) of a setting that defines experiment `experiment`
    (domains.IDENTITY): its runs would be titled and reported as `experiment` while training
    another one. The refusal names the experiments of `catalogue` (id -> config) that have the
    wanted value. A value the experiment already has changes nothing and passes; one outside
    the setting's domain is left to `validate`, whose message names the valid values."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name in identity_settings(config):
        if name not in changes or not domain_of(fields[name]).contains(changes[name]):
            continue
        own, wanted = getattr(config, name), changes[name]
        if same_identity(name, own, wanted):
            continue
        having = {e: c for e, c in catalogue.items()
                  if hasattr(c, name) and same_identity(name, getattr(c, name), wanted)}
        # first those that match this experiment's other identity settings
        alike = [e for e, c in having.items() if all(
            same_identity(n, getattr(c, n), getattr(config, n))
            for n in identity_settings(config) if n != name and hasattr(c, n))]
        text = f"{name}={show_value(wanted)}"
        fix = (f"run {' or '.join(alike)} instead" if alike else
               f"run one with {text} instead: {', '.join(having)} (none is otherwise like "
               f"{experiment})" if having else f"drop it (no experiment has {text})")
        raise UserError(f"{text}: {name} is part of what {experiment} is "
                        f"({name}={show_value(own)}), so --set and --grid cannot change it; {fix}")


def _split(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set inner_lr=0.01")
    return key.strip(), value.strip()


def config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Any) -> str:
    """A short stable hash of a config (stored with every record). Settings added later are
    left out while at their default (`setting(..., hashed_at_default=False)`)."""
    values = config_dict(config)
    for field in dataclasses.fields(config):
        later = not field.metadata.get("hashed_at_default", True)
        if later and values[field.name] == field.default:
            del values[field.name]
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]
