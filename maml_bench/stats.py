"""Confidence intervals for the mean over test tasks.

The MAML paper reports `mean +- 1.96 * std / sqrt(n)` with the population std (ddof=0) over
n test tasks; later suites (LibFewShot) use a Student-t interval. Both are offered, and every
table says which one it shows (see `ci_label`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

_METHODS = ("normal", "t")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"unknown CI method {method!r}; valid: {', '.join(_METHODS)}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"CI level must lie in (0, 1), got {level!r}")


def ci_label(method: str = "normal", level: float = 0.95) -> str:
    """Human-readable description of an interval, for table captions and footnotes."""
    _check_method(method)
    _check_level(level)
    pct = f"{100 * level:g}%"
    if method == "normal":
        z = sps.norm.ppf((1 + level) / 2)
        return f"{pct} CI = {z:.2f}*std/sqrt(n) (paper)"
    return f"{pct} CI = Student-t (LibFewShot)"


#: Valid CI methods and their labels at the paper's 95% level.
CI_METHODS: dict[str, str] = {m: ci_label(m, 0.95) for m in _METHODS}


def mean_ci(
    values: np.ndarray | pd.Series, level: float = 0.95, method: str = "normal"
) -> tuple[float, float, float, int]:
    """Return (mean, ci_low, ci_high, n) of `values`.

    NaN values are NOT dropped: one diverged task makes the mean NaN, so divergence shows up in
    the table instead of being averaged away. n = 0 gives all-NaN bounds; n = 1 gives a zero-width
    interval for "normal" (std is 0) and NaN bounds for "t" (no degrees of freedom).
    """
    _check_method(method)
    _check_level(level)
    x = np.asarray(values, dtype=float).ravel()
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    # inf - inf inside std is NaN by design here (a diverged task); no need to warn about it.
    with np.errstate(invalid="ignore", over="ignore"):
        return _mean_ci(x, n, level, method)


def _mean_ci(x: np.ndarray, n: int, level: float, method: str) -> tuple[float, float, float, int]:
    mean = float(x.mean())
    if method == "normal":
        half = sps.norm.ppf((1 + level) / 2) * float(x.std(ddof=0)) / math.sqrt(n)
    elif n < 2:
        half = math.nan
    else:
        half = sps.t.ppf((1 + level) / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, float(mean - half), float(mean + half), n


def mean_keep_nan(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """Group mean of `value` where any NaN makes the group NaN (pandas skips NaN by default)."""
    keys = [frame[b] for b in by]
    mean = frame["value"].groupby(keys, sort=False).mean()
    has_nan = frame["value"].isna().groupby(keys, sort=False).any()
    return mean.mask(has_nan.reindex(mean.index, fill_value=False))
