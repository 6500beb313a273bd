"""Typed configuration: command-line overrides (`--set key=value`) checked against dataclasses."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

from maml_bench.domains import (
    describe_field,
    domain_of,
    identity_settings,
    same_identity,
    show_value,
)
from maml_bench.errors import UserError

C = TypeVar("C")


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


def parse_overrides(config: Any, overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """The typed values of `overrides` (as `apply_overrides` takes them), not yet validated:
    an unknown setting or unparsable text is refused in one line."""
    hints = typing.get_type_hints(type(config))
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
