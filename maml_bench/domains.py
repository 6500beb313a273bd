"""Valid domains of settings: every config field declares one beside its docstring.

`setting(default, domain)` declares a dataclass field with its domain; `check_fields` checks a
whole config against them before any work starts, so a bad value is one line naming the setting
and what it may be. Each domain also names values outside it (`outside`), which the tests feed
to the command line for every field of every registered experiment.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from maml_bench.errors import UserError


class Domain:
    """What values a setting may take."""

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def outside(self) -> list[str]:
        """Command-line texts that parse but lie outside the domain (for tests)."""
        raise NotImplementedError


def _fmt(x: float) -> str:
    if isinstance(x, int) and abs(x) >= 10_000:
        return f"{x:,}".replace(",", "_")
    return f"{x:g}"


@dataclass(frozen=True)
class Number(Domain):
    """A finite int or float in an interval; open ends with `lo_open`/`hi_open`."""

    kind: type
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"{what} in {left}{_fmt(self.lo)}, {_fmt(self.hi)}{right}"

    def outside(self) -> list[str]:
        out = [repr(self.hi * 10 + 1) if self.kind is float else str(int(self.hi) * 10 + 1)]
        low = self.lo if self.lo_open else (self.lo - 1 if self.kind is int else self.lo - 0.5)
        out.append(str(int(low)) if self.kind is int else repr(float(low)))
        if self.kind is float:
            out += ["nan", "inf", "-inf"]
        return out


@dataclass(frozen=True)
class OneOf(Domain):
    values: tuple[str, ...]

    def contains(self, value: Any) -> bool:
        return value in self.values

    def describe(self) -> str:
        return "one of " + " | ".join(self.values)

    def outside(self) -> list[str]:
        return ["no-such-" + self.values[0]]


@dataclass(frozen=True)
class Flag(Domain):
    """true or false."""

    def contains(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"

    def outside(self) -> list[str]:
        return ["maybe"]  # nothing parses outside: the parse error names the setting


@dataclass(frozen=True)
class Pattern(Domain):
    """Text matching a regular expression in full."""

    regex: str
    what: str

    def contains(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def describe(self) -> str:
        return self.what

    def outside(self) -> list[str]:
        return ["", "a/b", "x" * 300]


@dataclass(frozen=True)
class Items(Domain):
    """A comma-separated list whose items each lie in `item`, with a bounded length.
    `distinct`: the list is a set of values (each K evaluated, each step size tried), so a
    repeated item would only be recorded twice; repeats stay fine in layer widths (40,40)."""

    item: Number
    min_len: int = 1
    max_len: int = 32
    distinct: bool = False

    def contains(self, value: Any) -> bool:
        return (isinstance(value, tuple) and self.min_len <= len(value) <= self.max_len
                and all(self.item.contains(v) for v in value)
                and not (self.distinct and len(set(value)) < len(value)))

    def describe(self) -> str:
        count = (f"exactly {self.min_len}" if self.min_len == self.max_len
                 else f"{self.min_len} to {self.max_len}")
        distinct = " distinct" if self.distinct else ""
        return f"{count}{distinct} comma-separated values, each {self.item.describe()}"

    def outside(self) -> list[str]:
        good = _fmt(self.item.lo if not self.item.lo_open else self.item.hi)
        return [f"{bad},{good}" for bad in self.item.outside()] + [
            ",".join([good] * (self.max_len + 1))] + ([f"{good},{good}"] if self.distinct else [])


#: List settings that are sets of values, refused with a repeated item: `domain_of` gives them
#: Items(distinct=True), so every config's field of that name is covered (a new list setting
#: can declare Items(..., distinct=True) itself).
DISTINCT_ITEMS = frozenset({"eval_shots", "finetune_lrs", "finetune_lr_decays"})


def _same_env_class(env: str) -> str:
    """An RL environment id's class: ids that differ only in constructor options (rllab's time
    step, ...RllabDt-v0) are the same task family, a protocol variant the experiments' notes
    offer (`--set env=maml_bench/HalfCheetahDirRllabDt-v0` for cheetah-dir-v1)."""
    from maml_bench.rl.env_ids import _ENVS  # importable without gymnasium

    return _ENVS[env][0] if env in _ENVS else env


#: Settings that define what an experiment is (its id and records name them: MiniImagenet,
#: 5-way, the no-conv net, the ant), each with what two of its values must share to be the same
#: experiment. `--set` may not change them (runs would be titled as another experiment); the
#: registry holds one experiment per value instead. Named here so that every config's field
#: of that name is covered.
IDENTITY: dict[str, Callable[[Any], Any]] = {
    "dataset": str, "network": str, "ways": int, "env": _same_env_class}


def identity_settings(config: Any) -> list[str]:
    """The settings of `config` that define its experiment (`IDENTITY`)."""
    return [f.name for f in dataclasses.fields(config) if f.name in IDENTITY]


def same_identity(name: str, a: Any, b: Any) -> bool:
    """Whether values `a` and `b` of identity setting `name` are the same experiment."""
    return IDENTITY[name](a) == IDENTITY[name](b)


def setting(default: Any, domain: Domain, hashed_at_default: bool = True,
            evaluation_only: bool = False, used_by: tuple[str, ...] = (),
            words: dict[str, Any] | None = None) -> Any:
    """A dataclass field with its valid domain (shown by `maml-bench show`, checked by
    `check_fields`).

    `hashed_at_default=False` is for a setting added after runs exist: at its default it is
    left out of the config hash, so those runs keep their hash and still resume. Its default
    may change only to a value that computes the same thing up to rounding (task_chunk 0 ->
    auto): runs made at the old default keep their hash and resume under the new one, and an
    explicit old default is hashed from then on.
    `evaluation_only=True` marks a meta-test setting that never changes the trained
    parameters, so a finished run can be evaluated again under another value
    (`maml-bench run --evaluate-from`).
    `used_by` names the algorithms that read a method's own setting (empty: every method), so
    that `show` lists it only where one of them runs and `run --set` refuses it elsewhere.
    `words` are names `--set` accepts for values (task_chunk: auto -> -1).
    """
    return dataclasses.field(default=default, metadata={
        "domain": domain, "hashed_at_default": hashed_at_default,
        "evaluation_only": evaluation_only, "used_by": used_by, "words": dict(words or {})})


def describe_field(field: dataclasses.Field) -> str:
    """What a setting may be: its domain, and the words `--set` takes for values."""
    words = field.metadata.get("words") or {}
    named = "".join(f", or {w} ({show_value(v)})" for w, v in words.items())
    return domain_of(field).describe() + named


def readers(config: Any, name: str) -> tuple[str, ...]:
    """The algorithms that read setting `name` of `config` (empty: every method)."""
    field = {f.name: f for f in dataclasses.fields(config)}.get(name)
    return () if field is None else tuple(field.metadata.get("used_by", ()))


def evaluation_only(config: Any) -> set[str]:
    """The settings of `config` that only the meta-test reads."""
    return {f.name for f in dataclasses.fields(config) if f.metadata.get("evaluation_only")}


def domain_of(field: dataclasses.Field) -> Domain:
    domain = field.metadata.get("domain")
    if domain is None:  # a programming error: every setting must say what it accepts
        raise TypeError(f"setting {field.name!r} declares no domain; use setting(default, ...)")
    if field.name in DISTINCT_ITEMS and isinstance(domain, Items):
        return dataclasses.replace(domain, distinct=True)
    return domain


def show_value(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def check_fields(config: Any) -> None:
    """Every field of the dataclass `config` inside its declared domain, else a UserError that
    names the setting, its value and the domain."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        domain = domain_of(field)
        if not domain.contains(value):
            raise UserError(f"setting {field.name}={show_value(value)} is invalid: must be "
                            f"{describe_field(field)}")


def require(condition: bool, names: Sequence[str], rule: str) -> None:
    """A rule across settings (e.g. x_min < x_max): one line naming the settings."""
    if not condition:
        raise UserError(f"settings {', '.join(names)} are invalid together: need {rule}")
