"""Experiments: the paper's tables and figures as typed, versioned specs (data, not code).

When a protocol changes, the id's version changes (`-v2`), so old numbers never silently move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class MethodSpec:
    algorithm: str
    """algorithm id in the registry"""
    label: str
    """name in tables and figures"""
    seeds: int = 1
    """repetitions at paper scale"""
    overrides: dict[str, Any] = field(default_factory=dict)
    """the method's own hyperparameters (its paper's), over the experiment's config and under
    the scale's and the user's --set"""


@dataclass(frozen=True)
class Scale:
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: int | None = None
    """repetitions for every method (None: each method's own `seeds`)"""


@dataclass(frozen=True)
class TableSpec:
    name: str
    caption: str
    shots: int
    steps: tuple[int, ...]
    methods: tuple[str, ...] | None = None
    """None: every method of the experiment"""
    method_steps: tuple[tuple[str, int], ...] = ()
    """(method, step): each row after its own protocol's last step instead of `steps`' one
    (a "steps" column says which); empty: every row at every step of `steps`"""


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str
    methods: tuple[str, ...]
    shots: tuple[int, ...]
    ylabel: str
    kind: str = "curves"
    """curves: metric against fine-tuning steps (records); fits: predictions on a grid after
    `steps` steps (each method's seed-0 fits.csv.gz), the paper's Figure 2"""
    steps: tuple[int, ...] = ()
    """fits only: the fine-tuning steps drawn"""


@dataclass(frozen=True)
class Experiment:
    id: str
    title: str
    benchmark: str
    config: Any
    """typed config with the paper's values as defaults"""
    methods: tuple[MethodSpec, ...]
    paper: tuple[tuple[str, int, int, float], ...] = ()
    """(method, shots, steps, value) as printed in the paper"""
    paper_ci: dict[tuple[str, int], float] = field(default_factory=dict)
    """(method, shots) -> the half width of the paper's interval, where it prints one"""
    metric: str = "mse"
    scales: dict[str, Scale] = field(default_factory=dict)
    tables: tuple[TableSpec, ...] = ()
    figures: tuple[FigureSpec, ...] = ()
    notes: str = ""
    paper_labels: dict[str, str] = field(default_factory=dict)
    """names in tables of paper rows that no method here runs (others' published results, e.g.
    people on Lake et al.'s one-shot runs)"""

    def method(self, algorithm: str) -> MethodSpec:
        for spec in self.methods:
            if spec.algorithm == algorithm:
                return spec
        from maml_bench.errors import UserError

        known = ", ".join(m.algorithm for m in self.methods)
        raise UserError(f"{self.id} has no method {algorithm!r}; its methods: {known}")

    def labels(self) -> dict[str, str]:
        return {**self.paper_labels, **{m.algorithm: m.label for m in self.methods}}

    def paper_frame(self) -> pd.DataFrame:
        rows = [
            {"experiment": self.id, "method": m, "shots": k, "steps": s, "metric": self.metric,
             "paper": v, "paper_ci": self.paper_ci.get((m, k), float("nan"))}
            for m, k, s, v in self.paper
        ]
        return pd.DataFrame(rows, columns=["experiment", "method", "shots", "steps", "metric",
                                           "paper", "paper_ci"])
