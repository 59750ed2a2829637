"""``data.label_noise``: the share of the probe set the model cannot fit, from its per-sample eval-mode losses."""

from __future__ import annotations

import math

import numpy as np

from ..findings import Z_NOISE, Evidence, Finding
from ..record import EVAL_CLEAN, VALIDATION, Run
from .series import baseline_of

__all__ = ["label_noise_findings", "label_noise_share", "MIN_NOISY_SHARE"]


def label_noise_share(run: Run) -> float | None:
    """The share of probe samples the model never learns, when it points to noisy labels (else None).

    At the last epoch, the eval-mode per-sample training losses C_i are compared with the baseline loss b
    (the best constant predictor's loss per sample): with clean labels a model that fits the data has few
    samples above b; samples with wrong labels (or corrupted inputs) stay far above it, since the model
    predicts their true class. Reported when between :data:`MIN_NOISY_SHARE` and half of the probe is above
    b in this epoch and the one before (never learnt, not a noisy epoch), the other samples are learnt (their
    median below b / 2), and the validation loss is below the mean eval-mode training loss beyond noise (the
    clean validation data is easier; a model short of capacity confuses validation samples as often).
    Source: the small-loss criterion of learning with noisy labels (Arpit et al. 2017, "A closer look at
    memorization in deep networks"; Han et al. 2018, "Co-teaching"): clean samples are fitted first,
    mislabelled ones stay at a high loss.
    """
    b = baseline_of(run)
    cs = [(e, c.values) for e in run.epochs if (c := e.get(EVAL_CLEAN)) is not None and c.values is not None]
    if b is None or len(cs) < 2:
        return None
    last, prev = cs[-1][1], cs[-2][1]
    v = cs[-1][0].get(VALIDATION)
    if last.size != prev.size or last.size < 50 or v is None:
        return None
    high = (last > b) & (prev > b)
    share = float(np.mean(high))
    if not (MIN_NOISY_SHARE <= share < 0.5) or float(np.median(last[~high])) >= b / 2:
        return None
    # those samples make the training data harder than the validation data: V below C beyond noise (a model
    # short of capacity confuses validation samples just as often, and V stays near C)
    se = math.hypot(last.std(ddof=1) / math.sqrt(last.size), v.sem if math.isfinite(v.sem) else 0.0)
    if not float(last.mean()) - v.mean > Z_NOISE * se:
        return None
    return share


#: Smallest share of never-learnt probe samples reported as label noise: 5 % (a few hard samples stay
#: above the baseline in clean runs: < 2 % in the clean scenarios of benchmarks/scenarios.py).
MIN_NOISY_SHARE = 0.05


def label_noise_findings(run: Run) -> list[Finding]:
    """``data.label_noise``: part of the training set is never learnt (see :func:`label_noise_share`)."""
    share = label_noise_share(run)
    if share is None:
        return []
    e, c = [(x, m) for x in run.epochs if (m := x.get(EVAL_CLEAN)) is not None and m.values is not None][-1]
    assert c.values is not None
    b = baseline_of(run) or math.nan
    n = c.values.size
    k = int(round(share * n))
    se = math.sqrt(share * (1 - share) / n)
    return [Finding(
        "data.label_noise", "warning",
        f"{100 * share:.0f} % of the training samples are never learnt: noisy labels or corrupted samples",
        f"At epoch {e.index}, {k} of {n} probe samples ({100 * share:.1f} ± {100 * se:.1f} %) have an eval-mode "
        f"training loss above the baseline loss {b:.3g} (a constant prediction does better on them), in this "
        f"epoch and the one before, while the median sample's loss is {float(np.median(c.values)):.3g}. Samples "
        "with wrong labels behave like this; they also raise the mean eval-mode training loss "
        f"({c.mean:.3g}), which is not a capacity problem.",
        "Inspect the highest-loss training samples (their labels, then their inputs); relabel or drop them, or "
        "train with a noise-robust loss (label smoothing, a symmetric or truncated loss).",
        [Evidence("share of probe samples above the baseline loss", share, se, (e.index,), "fraction")],
        (e.index,), {"share": share, "n_probe": n})]
