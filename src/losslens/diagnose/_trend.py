"""Trend statistics of a curve over time: Kendall's τ with its p-value (the Mann–Kendall test), the Theil–Sen
slope, and Student's small-sample factor, computed the way SciPy computes them.

Why not ``scipy.stats``: importing it costs about 0.6 s, more than the rest of ``losslens diagnose`` on a small
log (``benchmarks/cli_speed.py``). These are the same formulas as SciPy's (``scipy.stats.kendalltau`` with
``method="auto"``, variant b: the exact null distribution for n ≤ 33 without ties, else the tie-corrected normal
approximation; ``scipy.stats.theilslopes``' median of pairwise slopes; ``scipy.special.stdtrit`` / ``ndtri`` for
quantiles), for the case the diagnosis has: strictly increasing times. ``tests/test_trend.py`` checks them against
SciPy on random and tied curves; anything else (tied times, more than :data:`MAX_PAIRWISE` points) is handed to
SciPy itself.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["kendall_tau", "theil_sen_slope", "small_sample_factor", "MAX_PAIRWISE"]

#: Above this many points the O(n²) pair counts are left to SciPy (its O(n log n) merge sort).
MAX_PAIRWISE = 3000


def _kendall_p_exact(n: int, c: int) -> float:
    """Two-sided p-value of ``c`` concordant pairs among ``n`` points without ties (Kendall 1970, the
    recurrence of ``scipy.stats._mstats_basic._kendall_p_exact``)."""
    c = int(min(c, (n * (n - 1)) // 2 - c))
    if n <= 2:
        prob = 1.0
    elif c == 0:
        prob = 2.0 / math.factorial(n) if n < 171 else 0.0
    elif c == 1:
        prob = 2.0 / math.factorial(n - 1) if n < 172 else 0.0
    elif 4 * c == n * (n - 1):
        prob = 1.0
    elif n < 171:
        new = np.zeros(c + 1)
        new[0:2] = 1.0
        for j in range(3, n + 1):
            new = np.cumsum(new)
            if j <= c:
                new[j:] -= new[:c + 1 - j]
        prob = 2.0 * float(np.sum(new)) / math.factorial(n)
    else:
        new = np.zeros(c + 1)
        new[0:2] = 1.0
        for j in range(3, n + 1):
            new = np.cumsum(new) / j
            if j <= c:
                new[j:] -= new[:c + 1 - j]
        prob = float(np.sum(new))
    return float(np.clip(prob, 0.0, 1.0))


def kendall_tau(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Kendall's τ-b of ``(x, y)`` and its two-sided p-value, as ``scipy.stats.kendalltau(x, y)``.

    Parameters
    ----------
    x, y : numpy.ndarray, shape (n,)
        Times (strictly increasing for the fast path) and finite values.

    Returns
    -------
    (tau, p) : tuple of float
        NaN, NaN when every ``y`` is tied (as SciPy).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if n > MAX_PAIRWISE or n < 2 or np.any(np.diff(x) <= 0):
        from scipy.stats import kendalltau

        res = kendalltau(x, y)
        return float(res[0]), float(res[1])
    # discordant pairs: i < j (in time) with y_j < y_i; ties in y are neither
    lower = y[None, :] < y[:, None]
    dis = int(np.triu(lower, k=1).sum())
    _, cnt = np.unique(y, return_counts=True)
    cnt = cnt[cnt > 1].astype(np.int64)
    ytie = int((cnt * (cnt - 1) // 2).sum())
    y1 = float((cnt * (cnt - 1.0) * (2 * cnt + 5)).sum())
    tot = (n * (n - 1)) // 2
    if ytie == tot:
        return math.nan, math.nan
    con_minus_dis = tot - ytie - 2 * dis
    tau = float(np.clip(con_minus_dis / np.sqrt(tot) / np.sqrt(tot - ytie), -1.0, 1.0))
    if ytie == 0 and (n <= 33 or min(dis, tot - dis) <= 1):
        return tau, _kendall_p_exact(n, tot - dis)
    from scipy.special import ndtr

    m = n * (n - 1.0)
    var = (m * (2 * n + 5) - y1) / 18      # SciPy's variance with no ties in x (its x0, x1 and xtie are 0)
    z = con_minus_dis / np.sqrt(var)
    return tau, float(np.clip(2 * ndtr(-abs(z)), 0.0, 1.0))


def theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The Theil–Sen slope (Sen 1968): the median of the slopes of all pairs with distinct ``x``, as
    ``scipy.stats.theilslopes(y, x)[0]``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size > MAX_PAIRWISE:
        from scipy.stats import theilslopes

        return float(theilslopes(y, x)[0])
    dx = x[:, np.newaxis] - x
    dy = y[:, np.newaxis] - y
    keep = dx > 0
    return float(np.median(dy[keep] / dx[keep]))


def small_sample_factor(dof: int) -> float:
    """``t_{0.975, dof} / z_{0.975}`` (Student's quantile over the normal one), from ``scipy.special``."""
    from scipy.special import ndtri, stdtrit

    return float(stdtrit(dof, 0.975) / ndtri(0.975))
