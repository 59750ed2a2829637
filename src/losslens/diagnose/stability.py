"""Stability: non-finite losses and divergence.

* ``stability.non_finite`` (error): a step loss, reported epoch loss or
  end-of-epoch measurement is NaN or infinite. It is recorded, never raised.
* ``stability.divergence`` (error): the training loss is above the baseline
  loss (best constant predictor) beyond noise after it had been below it
  beyond noise (noise: the scatter of the curve up to its minimum), or more
  than :data:`FAR_ABOVE_BASELINE` times it; or the
  reported training loss (data part) rose after its minimum beyond noise and
  ended at or above where it started: the run lost all its progress.
* ``stability.training_loss_rising`` (warning): the reported training loss
  rose after its minimum beyond noise, but not back to its start.

Noise of an epoch mean of step losses: the standard deviation of the epoch's
step losses over ``sqrt(n_steps)`` (the steps are treated as independent; the
within-epoch trend makes this conservative), combined in quadrature with the
curve's epoch-to-epoch scatter (:func:`._noise.scatter_sigma`).
"""

from __future__ import annotations

import math

import numpy as np

from ..findings import Z_NOISE, Evidence, Finding
from ..record import EVAL_CLEAN, MEASUREMENT_KINDS, Measurement, Run
from ._noise import scatter_sigma, trend

__all__ = ["stability_findings", "FAR_ABOVE_BASELINE"]

#: A training loss this many times the baseline loss is a blow-up even if the run never beat the constant
#: predictor: a freshly initialised classifier or regressor starts near the baseline (ln K for K balanced
#: classes, the target variance for standardised MSE), so 1.5 times it means the updates made it worse.
FAR_ABOVE_BASELINE = 1.5


def _first_non_finite(run: Run) -> tuple[int, str] | None:
    """(epoch, what) of the first non-finite loss, in time order."""
    steps = run.steps
    bad_steps = np.flatnonzero(~np.isfinite(steps.loss)) if len(steps) else np.array([], dtype=int)
    first_step_epoch = int(steps.epoch[bad_steps[0]]) if bad_steps.size else None
    for e in run.epochs:
        if first_step_epoch is not None and first_step_epoch <= e.index:
            break
        if not math.isfinite(e.train_loss) and not math.isnan(e.train_loss):
            return e.index, "reported training loss"
        for kind in MEASUREMENT_KINDS:
            m = e.measurements.get(kind)
            if m is not None and (not math.isfinite(m.mean) or
                                  (m.values is not None and not np.all(np.isfinite(m.values)))):
                return e.index, kind.replace("_", " ") + " loss"
    if bad_steps.size:
        i = int(bad_steps[0])
        within = int(np.sum(steps.epoch[:i] == steps.epoch[i]))
        return int(steps.epoch[i]), f"step loss (step {within} of the epoch, {bad_steps.size} non-finite steps)"
    # reported losses may be NaN without steps (imported logs)
    for e in run.epochs:
        if e.n_steps and math.isnan(e.train_loss):
            return e.index, "reported training loss"
    return None


def _worse_than_constant(run: Run) -> Finding | None:
    """Divergence by level: the training loss is above the baseline loss beyond noise and not falling.

    The baseline loss is that of the best constant predictor (label-prior
    entropy, target variance): a model that trained at all beats it. Uses the
    eval-mode training loss C where measured, else the reported loss R.
    """
    baseline = run.meta.get("baseline_loss")
    if baseline is None or not math.isfinite(float(baseline)) or float(baseline) <= 0:
        return None
    baseline = float(baseline)
    pos, ms, name = [], [], "eval-mode training loss"
    for e in run.epochs:
        m = e.measurements.get(EVAL_CLEAN)
        if m is not None and math.isfinite(m.mean):
            pos.append(e.position)
            ms.append(m)
    if len(ms) < 2:
        name = "reported training loss"
        pos = [e.index + 0.5 for e in run.epochs if math.isfinite(e.train_loss)]
        ms = [Measurement(EVAL_CLEAN, e.train_loss) for e in run.epochs if math.isfinite(e.train_loss)]
    if len(ms) < 2:
        return None
    last = ms[-1]
    vals = np.array([m.mean for m in ms])
    # the scatter of the learning part (up to the minimum): a divergence must not hide in the noise it makes
    m_i = int(np.argmin(vals))
    sigma = scatter_sigma(vals[: m_i + 1])
    se_last = math.hypot(last.sem if math.isfinite(last.sem) else 0.0, sigma)
    if not last.mean - baseline > Z_NOISE * se_last:
        return None
    # divergence is losing what was learnt: the loss was below the baseline beyond noise at some epoch (a run
    # that never beat the constant predictor is "not learning", judged by the regime family)
    lows = [m for m in ms if baseline - m.mean > Z_NOISE * math.hypot(m.sem if math.isfinite(m.sem) else 0.0,
                                                                       sigma)]
    if not lows and last.mean < FAR_ABOVE_BASELINE * baseline:
        return None
    k = min(len(ms), max(3, math.ceil(len(ms) / 3)))
    slope, se_slope = trend(np.asarray(pos[-k:]), ms[-k:], scatter_sigma(vals))
    ep = run.epochs[-1].index
    return Finding(
        "stability.divergence", "error", "Training diverged: the model is worse than a constant prediction",
        f"The {name} at epoch {ep} is {last.mean:.4g}, above the baseline loss {baseline:.4g} of the best constant "
        f"predictor beyond noise" + (f", after it had reached {float(vals.min()):.4g}" if lows else
                                      f", {last.mean / baseline:.3g} times it") +
        f" (trend over the last {k} epochs {slope:+.3g} ± {se_slope:.2g} per epoch): the updates made the model "
        "worse than a constant output.",
        "Lower the learning rate (by 10×) or add warm-up, clip gradients, and check that inputs are scaled and "
        "targets match the loss.",
        [Evidence(name, last.mean, last.sem, (ep,)), Evidence("baseline loss (best constant predictor)", baseline)],
        (ep,), {"baseline_loss": baseline})


def stability_findings(run: Run) -> list[Finding]:
    """Non-finite and divergence findings of a run (possibly empty)."""
    out: list[Finding] = []
    bad = _first_non_finite(run)
    if bad is not None:
        epoch, what = bad
        out.append(Finding(
            "stability.non_finite", "error", f"Training diverged: non-finite loss from epoch {epoch}",
            f"The first NaN or infinite value is a {what} in epoch {epoch}. Every later number of the run is "
            "unreliable; losslens recorded them as they were.",
            "Lower the learning rate (or add warm-up), clip gradients (e.g. torch.nn.utils.clip_grad_norm_), "
            "check the inputs and targets for NaN/inf, and use a numerically stable loss (logits with "
            "CrossEntropyLoss/BCEWithLogitsLoss instead of softmax/sigmoid followed by log).",
            [], (epoch,), {"first_epoch": epoch, "what": what}))

    worse = _worse_than_constant(run)
    if worse is not None:
        out.append(worse)
        return out
    idx = [e.index for e in run.epochs if math.isfinite(e.train_loss)]
    r = np.array([e.train_loss for e in run.epochs if math.isfinite(e.train_loss)])
    if r.size < 3:
        return out
    m = int(np.argmin(r))
    if m == r.size - 1:
        return out
    sigma = scatter_sigma(r)

    def step_se(epoch: int) -> float:
        s = run.steps.loss[(run.steps.epoch == epoch) & np.isfinite(run.steps.loss)] if len(run.steps) else []
        return float(np.std(s, ddof=1) / math.sqrt(len(s))) if len(s) > 1 else 0.0

    rise = float(r[-1] - r[m])
    se = math.hypot(step_se(idx[-1]), step_se(idx[m]), math.sqrt(2.0) * sigma)
    if not rise > Z_NOISE * se:
        return out
    ev = [Evidence("reported training loss at its minimum (data part, epoch mean)", float(r[m]), step_se(idx[m]),
                   (idx[m],)),
          Evidence("rise of the reported training loss since its minimum", rise, se, (idx[m], idx[-1]))]
    if r[-1] >= r[0]:
        out.append(Finding(
            "stability.divergence", "error", f"Training diverged after epoch {idx[m]}",
            f"The reported training loss fell to {r[m]:.4g} at epoch {idx[m]}, then rose by {rise:.4g} ± {se:.2g} "
            f"to {r[-1]:.4g} at epoch {idx[-1]}, at or above where it started ({r[0]:.4g}).",
            "Lower the learning rate or use a schedule that decays it; clip gradients; check for a data or "
            "augmentation change late in training.", ev, (idx[m], idx[-1]), {"min_epoch": idx[m]}))
    else:
        out.append(Finding(
            "stability.training_loss_rising", "warning", f"The training loss rose after epoch {idx[m]}",
            f"The reported training loss rose by {rise:.4g} ± {se:.2g} from its minimum {r[m]:.4g} at epoch "
            f"{idx[m]} to {r[-1]:.4g} at epoch {idx[-1]}.",
            "Usually a learning rate too large for this stage of training: decay it (step/cosine schedule) or "
            "lower it.", ev, (idx[m], idx[-1]), {"min_epoch": idx[m]}))
    return out
