"""Tests for the confidence intervals in maml_bench.stats."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from maml_bench.stats import CI_METHODS, ci_label, mean_ci

VALUES = np.array([1.0, 2.0, 4.0, 7.0])
# Hand-computed: mean 3.5, population variance (6.25 + 2.25 + 0.25 + 12.25) / 4 = 5.25,
# half width = 1.959964 * sqrt(5.25) / sqrt(4) = 1.959964 * 2.291288 / 2 = 2.245421
HALF_NORMAL = 2.2454208


def test_normal_ci_is_paper_formula_with_population_std() -> None:
    mean, low, high, n = mean_ci(VALUES)
    assert n == 4
    assert mean == pytest.approx(3.5)
    assert high - mean == pytest.approx(HALF_NORMAL, abs=1e-6)
    assert mean - low == pytest.approx(HALF_NORMAL, abs=1e-6)
    # Same thing with z = 1.96 rounded, as the paper writes it.
    assert high - mean == pytest.approx(1.96 * np.std(VALUES, ddof=0) / 2, rel=1e-4)


def test_normal_ci_other_level_uses_normal_quantile() -> None:
    mean, _, high, _ = mean_ci(VALUES, level=0.9)
    assert high - mean == pytest.approx(1.6448536 * math.sqrt(5.25) / 2, abs=1e-6)


def test_t_ci_matches_scipy_and_is_wider_for_small_n() -> None:
    values = pd.Series(VALUES)
    mean, low, high, n = mean_ci(values, method="t")
    ref_low, ref_high = sps.t.interval(
        0.95, df=n - 1, loc=VALUES.mean(), scale=sps.sem(VALUES, ddof=1)
    )
    assert (low, high) == pytest.approx((ref_low, ref_high))
    _, nlow, nhigh, _ = mean_ci(values, method="normal")
    assert high - low > nhigh - nlow


def test_single_value() -> None:
    assert mean_ci(np.array([2.5])) == (2.5, 2.5, 2.5, 1)
    mean, low, high, n = mean_ci(np.array([2.5]), method="t")
    assert (mean, n) == (2.5, 1)
    assert math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("method", ["normal", "t"])
def test_nan_propagates(method: str) -> None:
    mean, low, high, n = mean_ci(np.array([1.0, np.nan, 3.0]), method=method)
    assert n == 3
    assert math.isnan(mean) and math.isnan(low) and math.isnan(high)


def test_unknown_method_and_bad_level_raise() -> None:
    with pytest.raises(ValueError, match="normal.*t"):
        mean_ci(VALUES, method="bootstrap")
    with pytest.raises(ValueError, match="level"):
        mean_ci(VALUES, level=95)


def test_labels() -> None:
    assert CI_METHODS["normal"] == "95% CI = 1.96*std/sqrt(n) (paper)"
    assert "Student-t" in CI_METHODS["t"]
    assert ci_label("normal", 0.9).startswith("90% CI = 1.64*std")
    assert set(CI_METHODS) == {"normal", "t"}
