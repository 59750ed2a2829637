"""Noise estimates shared by the diagnosis families.

Two sources of noise are combined in quadrature wherever a curve is judged:

* **sampling noise** of the fixed validation (or probe) set, from per-sample
  losses: paired where the same samples are compared at two epochs;
* **epoch-to-epoch scatter** of the model itself (SGD noise), which the
  per-sample errors of a fixed set cannot see, estimated robustly from the
  second differences of the curve: for a locally linear trend plus
  independent noise of standard deviation σ, ``x[e+1] − 2·x[e] + x[e−1]`` has
  standard deviation ``σ·√6``; σ is taken as ``1.4826 · MAD / √6`` (the MAD
  scaled to a normal standard deviation, Rousseeuw & Croux 1993).
"""

from __future__ import annotations

import math

import numpy as np

from ..record import Measurement
from ..recording.stopping import scatter_sigma  # one estimator for the diagnosis and the stopper

__all__ = ["scatter_sigma", "epoch_diff_se", "trend"]


def epoch_diff_se(a: Measurement, b: Measurement, sigma: float) -> float:
    """Standard error of ``a.mean − b.mean`` for two epochs of the same curve.

    Paired over per-sample values when both carry them (same fixed set),
    otherwise from the two standard errors when known; plus the model's
    epoch-to-epoch scatter for two epochs (``2σ²``), in quadrature.
    """
    la, lb = a.linearized(), b.linearized()
    if la is not None and lb is not None and la.size == lb.size and la.size > 1:
        d = la - lb
        d = d[np.isfinite(d)]
        sampling = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    elif math.isfinite(a.sem) and math.isfinite(b.sem):
        sampling = math.hypot(a.sem, b.sem)
    else:
        sampling = 0.0
    return math.hypot(sampling, math.sqrt(2.0) * sigma)  # hypot: no overflow for huge losses


def trend(positions: np.ndarray, ms: list[Measurement], sigma: float) -> tuple[float, float]:
    """Least-squares slope of a curve (loss per epoch) and its standard error.

    The error combines the per-sample slope spread (each sample's own slope
    over the same epochs, when per-sample values exist: the paired analogue of
    the difference test) and the scatter ``σ / sqrt(Sxx)``, in quadrature.

    Parameters
    ----------
    positions : numpy.ndarray, shape (k,)
        Times of the measurements in fractional epochs.
    ms : list of Measurement, length k
    sigma : float
        Epoch-to-epoch scatter of the curve (:func:`scatter_sigma`).

    Returns
    -------
    slope, se : float
        Loss per epoch; ``se`` is NaN when it cannot be estimated.
    """
    x = np.asarray(positions, dtype=np.float64)
    y = np.array([m.mean for m in ms], dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    xc = x - x.mean()
    sxx = float((xc ** 2).sum())
    slope = float((xc * (y - y.mean())).sum() / sxx)
    parts = [sigma / math.sqrt(sxx)]
    vals = [m.linearized() for m in ms]   # token-weighted measurements: their linearisation
    if all(v is not None for v in vals) and len({v.size for v in vals}) == 1 and vals[0].size > 1:
        mat = np.vstack(vals)  # (k, n)
        ok = np.all(np.isfinite(mat), axis=0)
        mat = mat[:, ok]
        if mat.shape[1] > 1:
            s = (xc[:, None] * (mat - mat.mean(axis=0))).sum(axis=0) / sxx
            parts.append(float(s.std(ddof=1) / math.sqrt(s.size)))
    elif all(math.isfinite(m.sem) for m in ms):
        with np.errstate(over="ignore"):
            parts.append(float(np.sqrt((((xc / sxx) * np.array([m.sem for m in ms])) ** 2).sum())))
    return slope, math.hypot(*parts)
