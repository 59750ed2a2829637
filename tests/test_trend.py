"""The diagnosis' trend statistics equal SciPy's (losslens/diagnose/_trend.py computes them without importing
scipy.stats, which costs 0.6 s per command): Kendall's τ-b and its p-value (exact and asymptotic, with and
without ties), the Theil–Sen slope and Student's small-sample factor."""

import math

import numpy as np
import pytest
from scipy.stats import kendalltau, norm, t, theilslopes

from losslens.diagnose._trend import MAX_PAIRWISE, kendall_tau, small_sample_factor, theil_sen_slope


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_and_theil_sen_equal_scipy_on_random_and_tied_curves(seed):
    rng = np.random.default_rng(seed)
    exact = asymptotic = 0
    for k in range(300):
        n = int(rng.integers(3, 120))
        x = np.cumsum(rng.random(n) + 0.01)
        y = rng.normal(size=n) + rng.normal() * np.arange(n) / n
        if k % 3 == 0:
            y = np.round(y, 1)          # ties: the asymptotic path with SciPy's tie-corrected variance
        if k % 11 == 0:
            y = np.round(y)
        got, want = kendall_tau(x, y), kendalltau(x, y)
        if math.isnan(want[0]):
            assert math.isnan(got[0])
            continue
        assert got[0] == pytest.approx(want[0], rel=1e-12, abs=1e-15)
        assert got[1] == pytest.approx(want[1], rel=1e-9, abs=1e-300)
        if len(np.unique(y)) == n and n <= 33:
            exact += 1
        else:
            asymptotic += 1
        assert theil_sen_slope(x, y) == pytest.approx(theilslopes(y, x)[0], rel=1e-12, abs=1e-15)
    assert exact > 20 and asymptotic > 20     # both p-value paths were compared


def test_long_or_tied_time_axes_are_left_to_scipy():
    rng = np.random.default_rng(0)
    n = MAX_PAIRWISE + 10
    x, y = np.arange(n, dtype=float), rng.normal(size=n)
    assert kendall_tau(x, y) == pytest.approx(tuple(kendalltau(x, y)))
    xt = np.array([0.0, 1.0, 1.0, 2.0, 3.0])      # tied times
    yt = np.array([3.0, 2.0, 2.5, 1.0, 0.5])
    assert kendall_tau(xt, yt) == pytest.approx(tuple(kendalltau(xt, yt)))


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 10, 30, 100, 199])
def test_small_sample_factor_equals_student_over_normal(dof):
    assert small_sample_factor(dof) == pytest.approx(float(t.ppf(0.975, dof) / norm.ppf(0.975)), rel=1e-14)
