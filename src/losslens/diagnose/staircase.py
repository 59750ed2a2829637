"""The epoch staircase (``data.epoch_staircase``): the training loss drops at every epoch boundary.

In multi-epoch fine-tunes the step losses fall in a step at each new epoch, and users ask whether it is a bug
(huggingface/transformers#18730, lm-sys/FastChat#2025, hiyouga/LlamaFactory#7485). It is what a model does when it
meets samples it has already fitted: from the second epoch on, every batch has been seen, and the loss on seen
samples is lower than on fresh ones (memorization). This module measures the discontinuity with its standard error
from the step losses alone (recorded runs, ``trainer_state.json``, TensorBoard), and says whether the validation
loss improved over the same epochs.

Measurement, per interior epoch boundary ``b`` (in fractional epochs): a straight line is fitted by least squares
to the step losses in ``[b − W, b)`` and another to those in ``(b, b + W]`` (points whose logging window straddles
``b`` left out), both in ``x − b``; the jump is the difference of their intercepts at ``b``, and its standard error
comes from each fit's residual scatter (the OLS variance of an intercept, Draper & Smith, *Applied Regression
Analysis*, 1998, §1.4). Two lines that meet at ``b`` give no jump however steep the curve is. The boundaries'
jumps are pooled by their mean, whose error is the root of the summed variances over their count. A staircase is
reported when the pooled jump is negative by more than :data:`Z_STAIRCASE` standard errors and more than
:data:`MIN_REL_STEP` of the loss level. False alarms on smooth noisy curves with no boundary effect:
``tests/test_staircase.py`` (measured below 1 % over 300 curves).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..findings import Evidence, Finding
from ..record import EVAL_CLEAN, VALIDATION, Run
from .gap import decompose_epoch

__all__ = ["staircase_findings", "boundary_jumps", "measured_memorization", "Z_STAIRCASE", "MIN_REL_STEP", "WINDOW"]

#: Pooled drop needed, in standard errors (one-sided; the scatter of logged windows is not quite independent,
#: so more than the 2 used elsewhere).
Z_STAIRCASE = 3.0
#: Pooled drop needed, relative to the loss level at the boundaries: smaller steps are not worth a finding.
MIN_REL_STEP = 0.02
#: Width of the fit on each side of a boundary, in epochs.
WINDOW = 0.3
#: Points needed on each side of a boundary.
MIN_POINTS = 4


def _fit_at(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept at x = 0 of the least-squares line through ``(x, y)``, and its variance."""
    n = x.size
    xm, ym = float(x.mean()), float(y.mean())
    sxx = float(((x - xm) ** 2).sum())
    if sxx <= 0 or n < 3:
        return math.nan, math.nan
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    a = ym - slope * xm
    resid = y - (a + slope * x)
    s2 = float((resid ** 2).sum()) / (n - 2)
    return a, s2 * (1.0 / n + xm * xm / sxx)


def boundary_jumps(run: Run, window: float = WINDOW) -> list[dict[str, float]]:
    """The loss jump at each interior epoch boundary of ``run``'s step losses.

    Returns
    -------
    list of dict
        ``{"boundary", "jump", "se", "level", "n_before", "n_after"}`` per boundary with enough points on both
        sides: ``jump`` (loss per sample) is the value just after minus just before (negative: a drop).
    """
    st = run.steps
    if len(st) < 2 * MIN_POINTS:
        return []
    ok = np.isfinite(st.position) & np.isfinite(st.loss)
    pos, loss = st.position[ok], st.loss[ok]
    if pos.size < 2 * MIN_POINTS:
        return []
    order = np.argsort(pos, kind="stable")
    pos, loss = pos[order], loss[order]
    gaps = np.diff(pos)
    spacing = float(np.median(gaps[gaps > 0])) if np.any(gaps > 0) else 0.0
    half = 0.5 * spacing   # a point closer than this to b is a window that straddles b
    out = []
    for b in range(int(math.floor(pos[0])) + 1, int(math.ceil(pos[-1]))):
        before = (pos >= b - window) & (pos < b - half)
        after = (pos > b + half) & (pos <= b + window)
        if before.sum() < MIN_POINTS or after.sum() < MIN_POINTS:
            continue
        a1, v1 = _fit_at(pos[before] - b, loss[before])
        a2, v2 = _fit_at(pos[after] - b, loss[after])
        if not all(math.isfinite(v) for v in (a1, v1, a2, v2)):
            continue
        out.append({"boundary": float(b), "jump": a2 - a1, "se": math.sqrt(v1 + v2),
                    "level": 0.5 * (a1 + a2), "n_before": int(before.sum()), "n_after": int(after.sum())})
    return out


def _validation_change(run: Run, boundaries: list[float]) -> float | None:
    """Change of the validation loss from the evaluation nearest before the first boundary to the one nearest
    after the last (None without two such evaluations)."""
    pts = [(e.position, e.measurements[VALIDATION].mean) for e in run.epochs
           if VALIDATION in e.measurements and math.isfinite(e.measurements[VALIDATION].mean)
           and math.isfinite(e.position)]
    if len(pts) < 2 or not boundaries:
        return None
    before = [v for p, v in pts if p <= boundaries[0] + 1e-9]
    after = [v for p, v in pts if p >= boundaries[-1] + 1e-9]
    if not before or not after:
        return None
    return after[-1] - before[-1]


def measured_memorization(run: Run) -> dict[str, Any] | None:
    """Where probes exist: the validation loss minus the eval-mode loss of seen training samples (the
    generalization gap of the decomposition, paired standard error) at the first and the last evaluation that
    has both; None without them.

    Returns
    -------
    dict or None
        ``first_epoch``, ``gap_first``, ``gap_first_se``, ``last_epoch``, ``gap_last``, ``gap_last_se`` (loss per
        sample or per token, as the run's measurements), ``growth`` (``gap_last − gap_first``) and ``growth_se``
        (the two errors in quadrature); ``seen``: per evaluation at the end of a complete epoch, ``times_seen``
        (the passes over the training set so far: every probe sample has been trained on that many times),
        ``train`` and ``train_se`` (the probe's eval-mode loss), ``validation`` and ``validation_se`` (samples
        never trained on).
    """
    gaps: list[tuple[int, Any]] = []
    seen: list[dict[str, float]] = []
    for e in run.epochs:
        c = e.get(EVAL_CLEAN)
        if c is None:
            continue
        d = decompose_epoch(e)
        g = d.generalization_gap if d is not None else None
        if g is not None and math.isfinite(g.value):
            gaps.append((e.index, g))
            v = e.get(VALIDATION)
            if v is not None and math.isfinite(e.position) and abs(e.position - round(e.position)) < 1e-6:
                seen.append({"epoch": float(e.index), "times_seen": float(round(e.position)), "train": float(c.mean),
                             "train_se": float(c.sem), "validation": float(v.mean), "validation_se": float(v.sem)})
    if not gaps:
        return None
    (i0, g0), (i1, g1) = gaps[0], gaps[-1]
    growth_se = math.hypot(g0.se, g1.se) if i1 != i0 and math.isfinite(g0.se) and math.isfinite(g1.se) else math.nan
    return {"first_epoch": float(i0), "gap_first": float(g0.value), "gap_first_se": float(g0.se),
            "last_epoch": float(i1), "gap_last": float(g1.value), "gap_last_se": float(g1.se),
            "growth": float(g1.value - g0.value) if i1 != i0 else math.nan, "growth_se": growth_se, "seen": seen}


def staircase_findings(run: Run) -> list[Finding]:
    """``data.epoch_staircase`` (info) when the step losses drop at the epoch boundaries beyond noise; else none.

    The finding's data: ``jumps`` (per boundary), ``mean_jump`` and ``se`` (pooled), ``rel`` (relative to the
    level), ``validation_change`` (over the same epochs, when evaluated)."""
    jumps = boundary_jumps(run)
    if not jumps:
        return []
    j = np.array([x["jump"] for x in jumps])
    s = np.array([x["se"] for x in jumps])
    mean = float(j.mean())
    se = float(math.sqrt(float((s ** 2).sum())) / j.size)
    level = float(np.median([x["level"] for x in jumps]))
    rel = mean / abs(level) if level else math.inf
    if not (se > 0 and mean < -Z_STAIRCASE * se and -rel > MIN_REL_STEP):
        return []
    bounds = [x["boundary"] for x in jumps]
    dv = _validation_change(run, bounds)
    each = ", ".join(f"{x['jump']:+.3g} ± {x['se']:.2g} at the start of epoch {int(x['boundary'])}"
                     for x in jumps[:6])
    if dv is None:
        v_txt = " Whether it carries over to unseen data needs a validation loss evaluated around the boundaries."
    elif dv > 0:
        v_txt = (f" Over the same epochs the validation loss rose by {dv:+.3g}: the drop is memorization of seen "
                 "samples that does not carry over to unseen data.")
    else:
        v_txt = (f" Over the same epochs the validation loss changed by {dv:+.3g}: the extra passes still helped "
                 "unseen data.")
    mem = measured_memorization(run)
    if mem is not None:
        v_txt += (f" Measured on the probe set (training samples, eval mode) against the validation set: unseen "
                  f"samples' loss exceeds seen samples' by {mem['gap_last']:+.3g} ± {mem['gap_last_se']:.2g} at "
                  f"epoch {int(mem['last_epoch'])}")
        v_txt += (f", from {mem['gap_first']:+.3g} ± {mem['gap_first_se']:.2g} at epoch {int(mem['first_epoch'])}: "
                  "that growth is the memorization." if math.isfinite(mem["growth"]) else ".")
        if len(mem["seen"]) >= 2:
            v_txt += (" Eval-mode loss of the probe samples after " + ", ".join(
                f"{int(x['times_seen'])} pass{'es' if x['times_seen'] != 1 else ''}: {x['train']:.3g} ± "
                f"{x['train_se']:.2g}" for x in mem["seen"][:6]) + "; of the never-seen validation samples: "
                + ", ".join(f"{x['validation']:.3g} ± {x['validation_se']:.2g}" for x in mem["seen"][:6]) + ".")
    msg = (f"The training loss drops at each new epoch by {mean:+.3g} ± {se:.2g} per boundary on average "
           f"({100 * rel:+.1f} % of its level; {each}), a step no smooth trend explains (a line fitted on each side "
           f"meets the other {abs(mean) / se:.1f} standard errors apart). From the second epoch on every sample has "
           f"been seen, and the loss on seen samples is lower: memorization, not a bug.{v_txt}")
    rec = ("Expected when training several epochs on the same data. If the validation loss rises with it, keep "
           "the checkpoint of the epoch before (or train fewer epochs, on more data, with more regularization).")
    evidence = [Evidence("epoch-boundary drop of the training loss (after − before)", mean, se,
                         tuple(int(b) for b in bounds))]
    return [Finding("data.epoch_staircase", "info", "The training loss steps down at every epoch boundary",
                    msg, rec, evidence, tuple(int(b) for b in bounds),
                    {"jumps": jumps, "mean_jump": mean, "se": se, "rel": rel, "validation_change": dv,
                     "memorization": mem})]
