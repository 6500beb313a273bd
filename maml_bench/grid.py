"""Hyperparameter grids: `--grid key=v1,v2` (repeatable) is the cartesian product of settings,
each point an ordinary run command with those extra `--set`s, written under its own output
directory `OUT/grid/key=v1,other=w1/`. `grid.json` there lists the points, so `compare --grid`
finds them again."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from maml_bench.errors import UserError
from maml_bench.results import write_json

GRID_DIR = "grid"
GRID_INDEX = "grid.json"
#: a setting whose value is itself a comma list (e.g. eval_shots=5,10) takes ';' between points
LIST_SEPARATOR = ";"


@dataclass(frozen=True)
class GridPoint:
    name: str  # also its directory: "inner_lr=0.01,meta_batch=5"
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


def point_dir(out: Path, point: GridPoint) -> Path:
    return out / GRID_DIR / point.name


def write_index(out: Path, experiment: str, points: list[GridPoint]) -> Path:
    path = out / GRID_DIR / GRID_INDEX
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"experiment": experiment,
                      "points": [{"name": p.name, "overrides": list(p.overrides)}
                                 for p in points]})
    return path


def read_index(root: Path) -> tuple[str, list[GridPoint]]:
    """(experiment, points) of the grid written under `root` (OUT or OUT/grid)."""
    path = root / GRID_INDEX if (root / GRID_INDEX).exists() else root / GRID_DIR / GRID_INDEX
    try:
        data = json.loads(path.read_text())
        return data["experiment"], [GridPoint(p["name"], tuple(p["overrides"]))
                                    for p in data["points"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"no readable grid index {path}; run the grid with "
                        "`maml-bench run EXPERIMENT --grid key=v1,v2 --out DIR` first") from None
