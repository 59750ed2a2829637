"""Robust judgement of one loss curve: the headline regime from values alone.

Used for curves without per-sample losses (imported logs: the validation loss,
or the training loss when a log has no validation loss). Recorded runs with
per-sample validation losses are judged by :mod:`.regime` with paired errors.

Every rule compares an effect with the curve's own noise *and* with its level:

* **noise** ``σ``: the robust scatter of the curve around its local trend
  (:func:`robust_sigma`, the MAD of second differences scaled to a normal
  standard deviation, as in :mod:`._noise`); single spikes do not inflate it, a
  straight line does not shrink it below :data:`NOISE_FLOOR` of the level (a
  zero noise estimate never means infinite precision);
* **trend**: the Mann–Kendall test (Kendall's τ between time and value,
  ``scipy.stats.kendalltau``; Mann 1945, Kendall 1975) and the Theil–Sen slope
  (``scipy.stats.theilslopes``; Sen 1968), both robust to outliers and to the
  shape of a monotone trend;
* **materiality**: a change must also be a minimum fraction of the level
  (:data:`MIN_REL_GAIN`, :data:`MIN_REL_RISE`): "significant but immaterial"
  (0.5 % over the judged window) is not "still improving".

Long curves (step logs) are first reduced to at most :data:`MAX_POINTS` means
of consecutive chunks, which bounds time and memory (Theil–Sen is quadratic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._noise import scatter_sigma

__all__ = ["CurveJudgement", "judge_curve", "robust_sigma", "chunk_means", "NOISE_FLOOR", "MIN_REL_GAIN",
           "MIN_REL_RISE", "NOT_LEARNING_REL", "ERRATIC_LOG_SIGMA", "MAX_POINTS", "MIN_POINTS"]

#: Smallest noise σ, as a fraction of the curve's median level: float32 logs of a smooth curve have
#: second differences of ~0, and a zero σ would make every wiggle "beyond noise".
NOISE_FLOOR = 0.002

#: Smallest fall of the fitted (Theil–Sen) trend across the judged window, as a fraction of the level,
#: for "still improving". Expert readings of 62 real logs (shared/real-logs/LABELS.md) call a curve
#: converged when its last evaluations change by < 0.5–1 % and still improving at 2 % or more; 1.5 %
#: sits between. A convention for the smallest effect of interest (Lakens, Scheel & Isager 2018).
MIN_REL_GAIN = 0.015

#: Smallest rise above the minimum, as a fraction of the minimum, for overfitting (same reasoning:
#: the experts' "within-noise wobble at the end is still converged").
MIN_REL_RISE = 0.02

#: Largest total relative change of a curve that still counts as "not learning" (LABELS.md: "barely
#: moves from its start over the whole run (e.g. < 2-5 % total)").
NOT_LEARNING_REL = 0.04

#: Robust scatter of log(loss) around its local trend above which a curve is erratic: ±50 % jumps as
#: typical noise, where a usable validation curve scatters by a few per cent. The two erratic real logs
#: of shared/real-logs scatter by 0.56 and 0.59; flat curves with 20 % Gaussian noise (8-500 points) give
#: false alarms in at most 2 % at 0.5 (tests/test_curves.py).
ERRATIC_LOG_SIGMA = 0.5

#: Curves longer than this are reduced to chunk means first.
MAX_POINTS = 200

#: Fewest points for any trend judgement.
MIN_POINTS = 3


@dataclass
class CurveJudgement:
    """Outcome of :func:`judge_curve`.

    Attributes
    ----------
    code : str
        ``"overfitting"``, ``"still_improving"``, ``"converged"``, ``"not_learning"``,
        ``"unstable"`` (erratic), ``"degenerate"`` or ``"insufficient"``.
    reason : str
        One sentence with the numbers that decided.
    best : int or None
        Index (into the given arrays) of the best point, for ``overfitting`` and in general the minimum.
    data : dict
        The numbers: ``sigma``, ``level``, ``slope``, ``window`` (start index), ``rel_change`` ...
    """

    code: str
    reason: str
    best: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


def chunk_means(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``x`` and ``y`` over ``max_points`` consecutive chunks of (nearly) equal length.

    Parameters
    ----------
    x, y : numpy.ndarray, shape (n,)
        Finite values in time order.

    Returns
    -------
    (x, y) : numpy.ndarray, shape (min(n, max_points),)
    """
    n = y.size
    if n <= max_points:
        return x, y
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    cx = np.add.reduceat(x, edges[:-1]) / np.diff(edges)
    cy = np.add.reduceat(y, edges[:-1]) / np.diff(edges)
    return cx, cy


def robust_sigma(y: np.ndarray) -> float:
    """Robust point-to-point noise σ of a curve around its local trend (units of ``y``).

    ``1.4826 · MAD(second differences) / √6`` (:func:`._noise.scatter_sigma`):
    for a locally linear trend plus independent noise of standard deviation σ
    the second difference has standard deviation ``σ√6`` (Rousseeuw & Croux
    1993 for the MAD scale); and
    ``1.4826 · MAD(first differences) / √2`` (a constant slope cancels in the
    MAD); the larger of the two, since a MAD of few differences is often far
    too small. 0.0 for fewer than 3 points.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.size < 3:
        return 0.0
    s2 = scatter_sigma(y)
    # the same from first differences (std σ√2 around a locally constant slope): a second estimate from other
    # differences; the larger of the two, because a MAD of a few values often comes out far too small
    d1 = np.diff(y)
    s1 = 1.4826 * float(np.median(np.abs(d1 - np.median(d1)))) / math.sqrt(2.0)
    return max(s2, s1)


def _mk(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mann–Kendall: Kendall's τ of (time, value) and its two-sided p-value (1.0 when undefined)."""
    from ._trend import kendall_tau

    if y.size < 3 or np.all(y == y[0]):
        return 0.0, 1.0
    tau, p = kendall_tau(x, y)
    if not math.isfinite(tau):
        return 0.0, 1.0
    return float(tau), float(p) if math.isfinite(p) else 1.0


def _theil_sen(x: np.ndarray, y: np.ndarray) -> float:
    from ._trend import theil_sen_slope

    if y.size < 2 or np.ptp(x) == 0:
        return 0.0
    return theil_sen_slope(x, y)


def _smooth3(y: np.ndarray) -> np.ndarray:
    """Running median of 3 (Tukey 1977), ends kept: one noisy inner point cannot be the minimum on its own."""
    if y.size < 3:
        return y.copy()
    s = y.copy()
    s[1:-1] = np.median(np.vstack([y[:-2], y[1:-1], y[2:]]), axis=0)
    return s


def _level_jump(y: np.ndarray, sigma: float, start: int) -> int:
    """Start of the last regime after a step in the curve (e.g. a learning-rate drop), or ``start``.

    A step is a fall between consecutive points larger than 8 σ and than half of the total fall
    from ``start``; the last such step with at least 3 points after it wins.
    """
    cut = start
    total = float(y[start] - np.min(y[start:])) if y.size > start else 0.0
    for i in range(start, y.size - 3):
        drop = y[i] - y[i + 1]
        if drop > 8 * sigma and drop > 0.5 * total > 0:
            cut = i + 1
    return cut


def judge_curve(x: Any, y: Any, *, role: str = "validation", other: Any = None) -> CurveJudgement:
    """Judge one loss curve: degenerate, erratic, not learning, overfitting, still improving or converged.

    Parameters
    ----------
    x : array-like, shape (n,)
        Positions (fractional epochs or steps), increasing.
    y : array-like, shape (n,)
        Loss values (per sample; NaN/inf are dropped here: the stability
        findings report them).
    role : {"validation", "training"}
        Which loss this is; overfitting is only judged on a validation loss.
    other : array-like, optional
        The other curve's values (the training loss when judging validation): a
        run whose training loss moved materially is learning even when its
        validation loss, first evaluated late, barely moves.

    Returns
    -------
    CurveJudgement

    Notes
    -----
    Order: degenerate (constant or ~0 over a long stretch) → too few points →
    erratic (robust log-scale scatter above :data:`ERRATIC_LOG_SIGMA`, and more
    than half of the total change) → not learning (start-to-end change below
    :data:`NOT_LEARNING_REL` on this and the other curve) → overfitting (a
    sustained, material rise after the smoothed minimum: Mann–Kendall
    increasing after it, or most of the last evaluations above it beyond
    noise) → still improving (a significant, material fall over the last third
    of the run, judged after a learning-rate step when there is one) →
    converged.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n_raw = y.size
    if n_raw == 0:
        return CurveJudgement("insufficient", f"no finite {role} loss")
    x, y = chunk_means(x, y)
    n = y.size
    # degenerate: exactly constant over a long stretch, or ~0
    deg = _degenerate(y, role)
    if deg is not None:
        return deg
    if n < MIN_POINTS:
        return CurveJudgement("insufficient", f"{n} {role} loss value(s): a trend needs at least {MIN_POINTS}",
                              int(np.argmin(y)), {"n": n})
    level = float(np.median(np.abs(y)))
    sigma = max(robust_sigma(y), NOISE_FLOOR * level)
    data: dict[str, Any] = {"n": n, "n_raw": n_raw, "sigma": sigma, "level": level}
    if n < 9:
        data["confidence"] = "low"   # a noise estimate from fewer than 9 points is itself unreliable
    # erratic: noise large relative to the level, and larger than the trend it would hide
    h = n // 3   # the trend to compare with: the fitted change over the last two thirds (after the first descent)
    if np.all(y > 0) and n >= 6:
        s_log = scatter_sigma(np.log(y))   # second differences: a smooth descent does not count as scatter
        trend_log = abs(_theil_sen(x[h:], np.log(y[h:])) * float(x[-1] - x[h]))
        data["log_sigma"] = s_log
        if s_log > ERRATIC_LOG_SIGMA and s_log > 0.5 * trend_log:
            return CurveJudgement(
                "unstable", f"the {role} loss jumps by a factor of {math.exp(min(s_log, 700.0)):.3g} from one "
                f"evaluation to the next (robust scatter of log loss {s_log:.2f}), more than its trend over the last "
                "two thirds",
                int(np.argmin(y)), data)
    # not learning: barely moves from its start over the whole run
    k0 = max(1, min(n // 10, 5))
    start, end = float(np.median(y[:k0])), float(np.median(y[-k0:]))
    kc = max(MIN_POINTS, n // 10)   # the lowest level reached: the smallest median of kc consecutive points
    best_s = float(min(np.median(y[i:i + kc]) for i in range(0, max(1, n - kc + 1))))
    rel = (start - min(end, best_s)) / abs(start) if start != 0 else 0.0
    tau_all, p_all = _mk(x, y)
    dip = start - best_s
    dip_noise = 2 * 1.2533 * sigma / math.sqrt(kc)   # 2 SE of a median of kc points
    no_trend = (not (tau_all < 0 and p_all < 0.05) and end >= start - 2 * sigma
                and dip <= max(dip_noise, NOT_LEARNING_REL * abs(start)))
    data.update(rel_change=rel, tau_run=tau_all, p_run=p_all)
    other_moved = False
    if other is not None:
        o = np.asarray(other, dtype=np.float64)
        o = o[np.isfinite(o)]
        if o.size >= MIN_POINTS:
            ko = max(1, min(o.size // 10, 5))
            os_, oe = float(np.median(o[:ko])), float(np.median(o[-ko:]))
            other_moved = os_ != 0 and abs(os_ - oe) / abs(os_) >= NOT_LEARNING_REL
    # a curve that ended materially above its start changed: that is overfitting or instability, not "no change"
    rose_run = end > start + max(4 * sigma, 2 * NOT_LEARNING_REL * abs(start))
    if (rel < NOT_LEARNING_REL or (no_trend and n >= 8)) and not other_moved and not rose_run:
        why = (f"at best {100 * rel:.1f} % below its start" if rel < NOT_LEARNING_REL else
               f"no downward trend over {n} points (Mann–Kendall τ = {tau_all:+.2f}, p = {p_all:.2g})")
        return CurveJudgement(
            "not_learning", f"the {role} loss barely moves over the run: {start:.4g} at the start, {end:.4g} at the "
            f"end, {why}", int(np.argmin(y)), data)
    sm = _smooth3(y)
    b = int(np.argmin(sm))
    # the best raw point next to the smoothed minimum
    lo, hi = max(0, b - 1), min(n, b + 2)
    best = lo + int(np.argmin(y[lo:hi]))
    data["best"] = best
    post = n - 1 - b
    if role == "validation" and post >= max(MIN_POINTS, math.ceil(0.1 * n)):
        ref = float(sm[b])
        tail = y[b + 1:]
        m = max(MIN_POINTS, math.ceil(tail.size / 2))
        last = tail[-m:]
        rise = float(np.median(last) - ref)
        # noise of the post-minimum stretch around its own trend: a noise estimate that happens to be low
        # cannot turn a flat stretch into a rise
        # noise of the post-minimum stretch on its own: a global estimate that happens to be low cannot turn a
        # flat stretch into a rise (the larger of two estimates, each robust to the trend's shape)
        sigma_o = max(sigma, robust_sigma(tail))
        above = float(np.mean(last > ref + 2 * sigma_o))
        tau, p = _mk(x[b + 1:], tail)
        data.update(rise=rise, rise_rel=rise / abs(ref) if ref else math.inf, above=above, tau_post=tau,
                    p_post=p)
        data["sigma_post"] = sigma_o
        # fewer than 12 points: the noise estimate itself is uncertain (a MAD of < 10 differences), so ask 4σ
        material = rise > MIN_REL_RISE * abs(ref) and rise > 3 * sigma_o
        if material and ((above >= 0.75 and tau > 0 and p < 0.05) or above >= 0.9):
            return CurveJudgement(
                "overfitting", f"the {role} loss reached its minimum {float(y[best]):.4g} and then rose: the last "
                f"{m} evaluations are {rise:+.3g}{_pct(rise, ref)} above it, beyond the noise "
                f"±{sigma_o:.2g} in {100 * above:.0f} % of them", best, data)
    # still improving: a significant, material fall over the last third (after a step, if any)
    # the last third (at least 5 points, for a rank test); a short curve (< 9 points) its last half plus one
    w = max(5, math.ceil(n / 3)) if n >= 9 else max(MIN_POINTS, n // 2 + 1)
    start_w = _level_jump(y, sigma, n - w)
    if n - start_w < MIN_POINTS:
        start_w = n - MIN_POINTS
    xs, ys = x[start_w:], y[start_w:]
    slope = _theil_sen(xs, ys)
    fall = -slope * float(xs[-1] - xs[0])
    lvl = float(np.median(np.abs(ys))) or level
    tau, p = _mk(xs, ys)
    data.update(window=start_w, slope=slope, fall=fall, fall_rel=fall / lvl if lvl else 0.0, tau=tau, p=p)
    if ys.size >= 5:
        significant = tau < 0 and p < 0.02   # one-sided 1 %: the false-alarm budget on flat noise is 2 %
    elif n >= 5:   # too few for a rank test on the window: the last point is the lowest, and the whole curve falls
        tau_a, p_a = _mk(x, y)
        significant = float(ys[-1]) <= float(np.min(ys)) and tau_a < 0 and p_a < 0.1
        # the size of the fall: below the mean of the two points before it (a noise estimate from < 9 points is
        # itself too noisy to judge by; the rank test carries the significance)
        fall = float(np.mean(y[-3:-1]) - y[-1])
        data["fall"] = fall
    else:   # 3-4 points: no noise estimate is possible; the last evaluation must beat all earlier ones
        significant = float(y[-1]) < float(np.min(y[:-1]))
        data["confidence"] = "low"
    if significant and fall > MIN_REL_GAIN * lvl and (fall > 2 * sigma or 5 <= n < 9):
        return CurveJudgement(
            "still_improving", f"the {role} loss still falls over its last {ys.size} points: {float(ys[0]):.4g} → "
            f"{float(ys[-1]):.4g}, a fitted fall of {fall:.3g}{_pct(fall, lvl)}", best, data)
    return CurveJudgement(
        "converged", f"the {role} loss no longer changes materially: its last {ys.size} points change by "
        f"{100 * -fall / lvl if lvl else 0.0:+.1f} % (fitted), within noise or below {100 * MIN_REL_GAIN:.1f} % of "
        "its level", best, data)


def _pct(x: float, ref: float) -> str:
    """`` (+12.3 %)`` of ``ref``, or nothing when ``ref`` is 0 (a relative change of a zero level is undefined)."""
    return f" ({100 * x / abs(ref):+.1f} %)" if ref else ""


def _degenerate(y: np.ndarray, role: str) -> CurveJudgement | None:
    """A loss exactly constant (or exactly 0) over a long stretch, or a validation loss of ~0."""
    n = y.size
    if n < 5:
        return None
    if role == "validation" and float(np.max(np.abs(y[-max(1, n // 5):]))) < 1e-6:
        return CurveJudgement("degenerate", f"the {role} loss is ~0 ({float(y[-1]):.2g}) at the end: a label leak or a "
                              "masking bug is more likely than a perfect model", n - 1, {"kind": "zero"})
    # longest stretch whose values all lie within 1e-4 of their level: a model that still learns moves its
    # (chunk-mean) loss by far more; float32 resolution is ~1e-7
    best_len, i = 0, 0
    for j in range(n):
        while i < j:
            seg = y[i:j + 1]
            if float(np.ptp(seg)) <= 1e-4 * max(float(np.max(np.abs(seg))), 1e-12):
                break
            i += 1
        best_len = max(best_len, j - i)
    if best_len + 1 >= max(5, 0.3 * n):
        return CurveJudgement(
            "degenerate", f"the {role} loss stays exactly at {float(np.median(y[-5:])):.6g} for {best_len + 1} "
            f"consecutive values ({100 * (best_len + 1) / n:.0f} % of the run): the model has collapsed to a "
            "constant output, or the loss is not connected to the parameters", int(np.argmin(y)),
            {"kind": "constant", "stretch": best_len + 1})
    return None


def noise_band(x: Any, y: Any) -> dict[str, Any]:
    """Which points are within noise of the best, and where the last material improvement was.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Positions and losses (finite, in time order, not chunked).

    Returns
    -------
    dict
        ``within_noise``: indices whose loss is within 2σ (σ = :func:`robust_sigma` with the
        :data:`NOISE_FLOOR`) of the minimum; ``last_improvement``: index of the last point that beat every
        earlier one by more than 2σ and by :data:`MIN_REL_GAIN` of the level; ``after``: positions from it to
        the end (same unit as ``x``).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0:
        return {}
    lvl = float(np.median(np.abs(y)))
    sigma = max(robust_sigma(y), NOISE_FLOOR * lvl)
    tol = max(2 * sigma, MIN_REL_GAIN * lvl)
    last, run_best = 0, float(y[0])
    for i in range(1, y.size):
        if y[i] < run_best - tol:
            last = i
        run_best = min(run_best, float(y[i]))
    return {"within_noise": [int(i) for i in np.flatnonzero(y <= float(np.min(y)) + 2 * sigma)],
            "last_improvement": last, "after": float(x[-1] - x[last])}
