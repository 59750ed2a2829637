"""Styles and thinning shared by the static figures (:mod:`.figures`, matplotlib) and the interactive ones
(:mod:`.interactive`, plotly.js): colours, labels, decimation. No plotting library is imported here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..record import END_OF_EPOCH_ESTIMATE, EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION

#: Number of points above which a series is decimated before plotting. A line of
#: 5 000 points renders in well under a second with Agg and is denser than the
#: pixels of a report figure (about 1 000 px wide), so nothing visible is lost.
DECIMATE_THRESHOLD = 5000

#: Symbols and colours of the end-of-epoch series (colour-blind-safe Okabe-Ito palette).
_KIND_STYLE = {
    TRAIN_MODE: ("T", "#E69F00", "s"),
    END_OF_EPOCH_ESTIMATE: ("T̂", "#E69F00", "s"),
    EVAL_AUGMENTED: ("A", "#CC79A7", "^"),
    EVAL_CLEAN: ("C", "#009E73", "o"),
    VALIDATION: ("V", "#D55E00", "D"),
}

#: Colours of the decomposition terms.
TERM_COLORS = {
    "penalty": "#999999",
    "timing": "#56B4E9",
    "train_mode": "#E69F00",
    "augmentation": "#CC79A7",
    "generalization_gap": "#009E73",
    "unmeasured": "#BBBBBB",
}

#: Labels of the series that are not end-of-epoch measurements.
SERIES_LABELS = {
    "steps": "step loss (train mode, the training batch as fed, e.g. augmented; before each update; "
             "one point per step)",
    "windows": "logged training loss (train mode; mean over a logging window, at the window centre)",
    "train_loss": "reported training loss R (train mode, mean of the epoch's step losses, at the epoch centre)",
    "reported_loss": "reported training loss R + Ω (penalty included, mean over the epoch, at the epoch centre)",
    "baseline": "baseline loss (best constant predictor)",
    "non_finite": "non-finite step loss (NaN or inf)",
}


def decimate(x: Any, y: Any, max_points: int = DECIMATE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Thin a series for plotting without losing its extremes.

    The points are split, in order, into about ``max_points / 4`` buckets of
    consecutive points; from each bucket the first, the last, the minimum and
    the maximum of ``y`` are kept (the min/max or "M4" decimation used by
    time-series plotting tools: Jugel et al., *M4: A Visualization-Oriented
    Time Series Data Aggregation*, VLDB 2014). A single-point spike is the
    maximum of its bucket, so it survives.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Positions and values; only finite pairs are kept.
    max_points : int
        Series with at most this many finite points are returned unchanged
        (as float arrays). Must be at least 4.

    Returns
    -------
    x, y : numpy.ndarray, shape (m,)
        The kept points in their original order, ``m <= max(n, max_points)``.

    Raises
    ------
    ValueError
        If ``x`` and ``y`` differ in length or ``max_points < 4``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"decimate: x has {x.size} points but y has {y.size}")
    if max_points < 4:
        raise ValueError(f"decimate: max_points must be at least 4, got {max_points}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = y.size
    if n <= max_points:
        return x, y
    size = math.ceil(n / (max_points // 4))
    n_buckets = math.ceil(n / size)
    padded_lo = np.full(n_buckets * size, np.inf)
    padded_hi = np.full(n_buckets * size, -np.inf)
    padded_lo[:n] = y
    padded_hi[:n] = y
    starts = np.arange(n_buckets) * size
    i_min = starts + padded_lo.reshape(n_buckets, size).argmin(axis=1)
    i_max = starts + padded_hi.reshape(n_buckets, size).argmax(axis=1)
    i_last = np.minimum(starts + size - 1, n - 1)
    idx = np.unique(np.concatenate([starts, i_min, i_max, i_last]))
    return x[idx], y[idx]


#: At most this many epochs get a bar in the decomposition figure; a longer run shows this many evenly spaced
#: epochs (always the first and the last), so the figure stays readable and its cost bounded.
MAX_BARS = 60
#: Epoch series get a marker per epoch up to this many epochs (beyond, lines only).
MAX_MARKERS = 200


def _thin_index(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced indices of ``range(n)`` including 0 and ``n - 1`` (all of them when ``n <= k``)."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def measurement_series(run: Any, kind: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The finite end-of-epoch values of ``kind`` in ``run``, split by source (``"measured"``, ``"estimated"``,
    ``"imported"``): ``{source: (positions in epochs, means, standard errors)}``, each of shape ``(n,)``."""
    by_source: dict[str, list[tuple[float, float, float]]] = {}
    for e in run.epochs:
        m = e.measurements.get(kind)
        if m is None or not (math.isfinite(m.mean) and math.isfinite(e.position)):
            continue
        by_source.setdefault(m.source, []).append((e.position, m.mean, m.sem))
    return {source: tuple(np.array(c, dtype=np.float64) for c in zip(*pts))  # type: ignore[misc]
            for source, pts in by_source.items()}
