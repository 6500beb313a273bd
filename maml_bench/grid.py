"""Hyperparameter grids: `--grid key=v1,v2` (repeatable) is the cartesian product of settings,
each point an ordinary run command with those extra `--set`s, written under its own output
directory `OUT/grid/key-v1__other-w1/` (letters, digits, '-', '_' and '.' only, so every file
system and tool takes it). `grid.json` there lists the points, so `compare --grid` finds them
again."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maml_bench.domains import show_value
from maml_bench.errors import UserError
from maml_bench.results import write_json

GRID_DIR = "grid"
GRID_INDEX = "grid.json"
#: a setting whose value is itself a comma list (e.g. eval_shots=5,10) takes ';' between points
LIST_SEPARATOR = ";"
#: longer point names end in a hash instead (file systems allow 255 bytes per name)
MAX_NAME = 200


@dataclass(frozen=True)
class GridPoint:
    name: str  # also its directory: "inner_lr-0.01__meta_batch-5"
    overrides: tuple[str, ...]  # "key=value" strings, applied after --set


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """[(key, values)] from `--grid key=v1,v2`; values are checked later, per point, against
    the setting's domain like --set (so a bad one is refused before any run)."""
    axes: list[tuple[str, list[str]]] = []
    for text in items:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(f"--grid {text!r}: expected key=v1,v2,..., e.g. "
                            "--grid inner_lr=0.01,0.001")
        if key in dict(axes):
            raise UserError(f"--grid {key} given twice; list all its values in one --grid")
        sep = LIST_SEPARATOR if LIST_SEPARATOR in values else ","
        parts = [v.strip() for v in values.split(sep)]
        if any(not v for v in parts) or len(set(parts)) < len(parts):
            raise UserError(f"--grid {text!r}: empty or repeated value")
        if "/" in values:
            raise UserError(f"--grid {text!r}: '/' cannot be part of a value (it names a folder)")
        axes.append((key, parts))
    return axes


def grid_points(items: list[str]) -> list[GridPoint]:
    """The cartesian product of the axes, in the order given (first axis slowest)."""
    axes = parse_grid(items)
    points = []
    for values in itertools.product(*(vals for _, vals in axes)):
        pairs = [f"{key}={value}" for (key, _), value in zip(axes, values, strict=True)]
        points.append(GridPoint(",".join(pairs), tuple(pairs)))
    return points


_NOT_PORTABLE = re.compile(r"[^A-Za-z0-9._-]")


def point_name(pairs: list[tuple[str, str]]) -> str:
    """A point's directory name: `key-value` pairs joined by `__`. A value with characters
    outside letters, digits, '-', '_' and '.' (a list's commas) has them replaced by '_', and
    then, as a name too long for a file system, ends in a hash of the exact settings, so two
    points never share a folder."""
    name = "__".join(f"{key}-{_NOT_PORTABLE.sub('_', value)}" for key, value in pairs)
    if any(_NOT_PORTABLE.search(v) for _, v in pairs) or len(name.encode()) > MAX_NAME:
        exact = ",".join(f"{key}={value}" for key, value in pairs)
        name = name[:MAX_NAME - 17] + "-" + hashlib.sha256(exact.encode()).hexdigest()[:16]
    return name


def canonical(point: GridPoint, config: Any) -> GridPoint:
    """The point named by the values its config holds, keys sorted: `inner_lr=1e-2` and
    `inner_lr=0.01`, or the axes given in another order, name the same directory, so a
    resumed sweep finds its runs."""
    keys = sorted(override.partition("=")[0] for override in point.overrides)
    return GridPoint(point_name([(key, show_value(getattr(config, key))) for key in keys]),
                     point.overrides)


def _portable_names(grid: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Grids written before names were portable ("key=v1,other=w1"): each point's folder is
    renamed to its portable name, so a resumed sweep finds its runs and `compare` its records;
    -> the index with the new names (rewritten if any changed)."""
    changed = False
    for entry in data["points"]:
        old = entry["name"]
        if not _NOT_PORTABLE.search(old):
            continue
        pairs = [tuple(text.split("=", 1)) for text in re.split(r",(?=[A-Za-z_]\w*=)", old)]
        if any(len(pair) != 2 for pair in pairs):
            continue  # a name cut short and hashed: left as it is
        new = point_name(pairs)  # type: ignore[arg-type]
        if (grid / old).is_dir() and not (grid / new).exists():
            os.replace(grid / old, grid / new)
        entry["name"], changed = new, True
    if changed:
        write_json(grid / GRID_INDEX, data)
    return data


def check_points(points: list[GridPoint], overrides: list[str]) -> None:
    """Refuse a grid key also given with --set (one would silently win) and two points that
    are the same settings (they would train twice)."""
    fixed = {text.partition("=")[0].strip() for text in overrides}
    for point in points[:1]:
        for override in point.overrides:
            key = override.partition("=")[0]
            if key in fixed:
                raise UserError(f"{key} is both in --set and in --grid; give it in one")
    seen: dict[str, GridPoint] = {}
    for point in points:
        if point.name in seen:
            raise UserError(f"--grid points {', '.join(seen[point.name].overrides)} and "
                            f"{', '.join(point.overrides)} are the same settings "
                            f"({point.name}); list each value once")
        seen[point.name] = point


def point_dir(out: Path, point: GridPoint) -> Path:
    return out / GRID_DIR / point.name


def write_index(out: Path, experiment: str, points: list[GridPoint]) -> Path:
    """OUT/grid/grid.json: the points of every grid run into OUT (a later grid adds its
    points to the earlier ones'; another experiment's grid there is refused)."""
    path = out / GRID_DIR / GRID_INDEX
    known: list[GridPoint] = []
    if path.exists():
        earlier, known = read_index(out)
        if earlier != experiment:
            raise UserError(f"{path.parent} holds a grid of {earlier}; give {experiment}'s "
                            "grid another --out")
    names = {p.name for p in known}
    merged = known + [p for p in points if p.name not in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"experiment": experiment,
                      "points": [{"name": p.name, "overrides": list(p.overrides)}
                                 for p in merged]})
    return path


def read_index(root: Path) -> tuple[str, list[GridPoint]]:
    """(experiment, points) of the grid written under `root` (OUT or OUT/grid)."""
    path = root / GRID_INDEX if (root / GRID_INDEX).exists() else root / GRID_DIR / GRID_INDEX
    try:
        data = _portable_names(path.parent, json.loads(path.read_text()))
        return data["experiment"], [GridPoint(p["name"], tuple(p["overrides"]))
                                    for p in data["points"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"no readable grid index {path}; run the grid with "
                        "`maml-bench run EXPERIMENT --grid key=v1,v2 --out DIR` first") from None
