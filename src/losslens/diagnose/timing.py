"""The timing correction without probes: the end-of-epoch training loss estimated from a log.

A framework's training loss is an average taken while the weights change: an
epoch mean (Keras, Lightning ``*_epoch``), a window mean (Hugging Face
``loss``, over the last ``logging_steps`` steps) or an exponential moving
average (fastai). The validation loss is measured with the end-of-epoch
weights. The *timing* term of the gap decomposition (DESIGN.md) is the part of
``reported − validation`` that comes only from this difference in time. With
probe passes it is measured (``R − T``); from a log alone it can be
**estimated** from the trend of the training loss around the epoch end. This
module does that and nothing else; the estimate is stored as a
:class:`~losslens.record.Measurement` of kind ``END_OF_EPOCH_ESTIMATE`` with
``source="estimated"`` (the diagnosis adds it, :func:`with_end_of_epoch_estimates`: importers record what the
log says), which :func:`losslens.diagnose.gap.decompose_epoch`
turns into a ``timing`` term with status ``"estimated"`` plus an
``unmeasured`` remainder (dropout, batch norm, augmentation and the
generalization gap cannot be told apart without probes).

Three methods, chosen by what the log holds (:func:`add_end_of_epoch_estimates`):

``steps`` (within-epoch trend)
    Step or window losses, each at its real time (a window mean at its
    window's centre): a robust straight-line fit of loss against position
    (fractional epochs, :func:`robust_line_at`) evaluated at the epoch end,
    with the standard error of that prediction. The fit uses the second half
    of the epoch when it holds at least :data:`MIN_POINTS` values, else the
    whole epoch, else the values within one, two, then four epoch lengths on either
    side of the epoch end (logs with fewer values than epochs). Assumption:
    the loss is close to linear in time over the fitted window. When it is
    curved — a fast early decrease is convex — a line fitted over a window of
    length h misses the end value by a bias that grows as h²; fitting the
    half epoch cuts the bias four-fold, and the remaining bias, estimated as a
    third of the difference between the half-epoch and whole-epoch fits, is
    added (in quadrature) to the standard error.

``means`` (trend between consecutive epoch means)
    Only one number per epoch (Keras CSV / History, Lightning ``*_epoch``
    alone): each epoch mean ``R_e`` is placed at its epoch centre (exact when
    the loss is linear within the epoch and batches are equal-sized) and the
    end value is the linear interpolation between the centres of epochs ``e``
    and ``e + 1`` (``(R_e + R_{e+1}) / 2`` for unit epochs); for the last
    epoch, the extrapolation from ``e − 1`` and ``e``. Its standard error is
    the disagreement between the two neighbouring secants — for unit epochs
    ``|R_{e+1} − 2 R_e + R_{e−1}| / 2``, the second difference: the error of
    the linear assumption, which is also where step noise shows — as a root
    mean square over the (up to five) nearest interior epochs, so that one
    accidentally smooth epoch does not make the error vanish; with fewer than
    three epochs it is the whole correction (the estimate is then never
    "beyond noise").

``ema`` (lag-corrected exponential moving average)
    fastai's ``train_loss`` is ``AvgSmoothLoss``: ``v ← β v + (1 − β) l`` over
    every step so far, divided by ``1 − β^n`` (bias correction), β = 0.98. For
    a loss linear in time, a normalised weighted mean of the step losses equals
    the loss at the weights' mean time, so the reported value is the loss at
    ``lag`` steps before the last step, with ``lag = Σ k β^k / Σ β^k``
    (k = 0 … n − 1 steps back; → β / (1 − β) = 49 steps for large n,
    :func:`losslens.importers.fastai.ema_lag`). The value is placed there (``e + 1 − (lag + 0.5) / S`` for
    ``S`` steps per epoch, the 0.5 being the last step's centre) and the
    ``means`` rule is then applied to these positions. Without ``S`` the lag
    cannot be converted to epochs and nothing is estimated.

No deep-learning framework is imported.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..record import END_OF_EPOCH_ESTIMATE, EVAL_CLEAN, TRAIN_MODE, Measurement, Run

__all__ = [
    "robust_line_at",
    "epoch_starts",
    "end_estimate_from_points",
    "add_end_of_epoch_estimates",
    "with_end_of_epoch_estimates",
    "MIN_POINTS",
    "HUBER_C",
]

#: Fewest finite step/window losses inside an epoch for the within-epoch fit:
#: a line has two parameters and its residual scale needs at least two more
#: degrees of freedom for a usable standard error.
MIN_POINTS = 4

#: Huber tuning constant: 1.345 σ gives 95 % efficiency at the normal
#: distribution (Huber 1964, "Robust estimation of a location parameter",
#: Ann. Math. Statist. 35; the value used by statsmodels' ``HuberT``).
HUBER_C = 1.345

#: Scale of the median absolute deviation that makes it consistent for σ at the normal.
_MAD_TO_SIGMA = 1.4826


def robust_line_at(x, y, x0: float, weights=None, iterations: int = 20) -> tuple[float, float]:
    """Robust straight-line fit of ``y`` on ``x``, evaluated at ``x0``.

    Huber M-estimation by iteratively re-weighted least squares (Holland &
    Welsch 1977, "Robust regression using iteratively reweighted
    least-squares", Commun. Statist. A6), residual scale from the median
    absolute deviation (× 1.4826) of a preliminary least-squares fit, kept fixed
    during the iterations, tuning constant :data:`HUBER_C`. Prior
    weights (e.g. the number of steps a window mean averages, whose variance is
    proportional to 1 / span) multiply the Huber weights. Loss spikes therefore
    pull the line far less than in ordinary least squares. O(n) per iteration.

    Parameters
    ----------
    x, y : array-like, shape (n,)
        Positions (fractional epochs) and losses. Non-finite pairs are dropped.
    x0 : float
        Where to evaluate the line (the epoch end).
    weights : array-like, shape (n,), optional
        Prior weights (default 1).
    iterations : int
        Maximum IRLS iterations.

    Returns
    -------
    estimate, se : float
        The fitted value at ``x0`` and its standard error
        ``σ̂ · sqrt(1/Σw + (x0 − x̄_w)² / Σ w (x − x̄_w)²)`` (prior weights ``w``;
        the prediction-of-the-mean error of weighted least squares) with Huber's
        robust σ̂² = Σ ψ(r)² / (n − 2) / (mean ψ′)². NaN, NaN with fewer than
        three usable points or no spread in ``x``. The error assumes
        independent residuals around the line (minibatch noise; consecutive
        window means do not overlap). With few points it is multiplied by
        ``t_{0.975, n−2} / z_{0.975}`` (Student), so that the decomposition's
        "beyond 2 standard errors" criterion keeps about 95 % coverage.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    w0 = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(w0) & (w0 > 0)
    if not ok.all():
        x, y, w0 = x[ok], y[ok], w0[ok]
    n = x.size
    if n < 3 or not float(x.max() - x.min()) > 0:
        return math.nan, math.nan
    sqw0 = np.sqrt(w0)

    def wls(w: np.ndarray) -> tuple[float, float]:
        sw = float(w.sum())
        xm = float(np.dot(w, x)) / sw
        ym = float(np.dot(w, y)) / sw
        dx = x - xm
        sxx = float(np.dot(w, dx * dx))
        if not sxx > 0:
            return math.nan, math.nan
        b = float(np.dot(w, dx * (y - ym))) / sxx
        return ym - b * xm, b

    a, b = wls(w0)
    if not math.isfinite(a):
        return math.nan, math.nan
    # residual scale from the preliminary fit (MAD × 1.4826), kept fixed during the iterations
    r = (y - (a + b * x)) * sqw0
    dev = np.abs(r - np.median(r))
    scale = _MAD_TO_SIGMA * float(np.median(dev))
    if not scale > 0:
        # more than half the points on the line: the mean absolute deviation (x 1.2533, consistent
        # for sigma at the normal) still separates the rest
        scale = 1.2533 * float(dev.mean())
    if scale > 0:
        cut = HUBER_C * scale
        for _ in range(iterations):
            r = (y - (a + b * x)) * sqw0
            ar = np.abs(r)
            w = w0 * np.minimum(1.0, cut / np.maximum(ar, 1e-300))
            a2, b2 = wls(w)
            if not math.isfinite(a2):
                break
            done = abs(a2 - a) <= 1e-10 * (abs(a) + 1e-12) and abs(b2 - b) <= 1e-10 * (abs(b) + 1e-12)
            a, b = a2, b2
            if done:
                break
    # Huber's asymptotic covariance (Huber 1981, "Robust Statistics", sec. 7.6, without the
    # small-sample factor K): sigma^2 = sum(psi(r)^2) / (n - 2) / mean(psi'(r))^2, applied to the
    # weighted-least-squares design with the prior weights.
    r = (y - (a + b * x)) * sqw0
    if scale > 0:
        cut = HUBER_C * scale
        psi = np.clip(r, -cut, cut)
        frac = float(np.count_nonzero(np.abs(r) <= cut)) / n
        sigma2 = float(np.dot(psi, psi)) / (n - 2) / max(frac, 1.0 / n) ** 2
    else:
        sigma2 = float(np.dot(r, r)) / (n - 2)
    sw0 = float(w0.sum())
    xm0 = float(np.dot(w0, x)) / sw0
    sxx0 = float(np.dot(w0, (x - xm0) ** 2))
    est = float(a + b * x0)
    se = float(math.sqrt(sigma2 * (1.0 / sw0 + (x0 - xm0) ** 2 / sxx0)))
    se *= _small_sample_factor(n - 2)
    return est, se


@functools.lru_cache(maxsize=256)
def _small_sample_factor(dof: int) -> float:
    """``t_{0.975, dof} / z_{0.975}``: with few points, "beyond 2 standard errors" keeps ~95 % coverage (Student)."""
    if dof >= 200:
        return 1.0
    from ._trend import small_sample_factor

    return small_sample_factor(dof)


def epoch_starts(run: Run) -> np.ndarray:
    """Start of each epoch's interval in fractional epochs, shape (n_epochs,).

    The previous epoch's ``position`` when the previous epoch is the preceding
    index, else ``max(position − 1, 0)`` for interval-based runs whose first
    interval ends before 1, else ``position − 1``.
    """
    out = np.empty(len(run.epochs))
    prev = None
    for i, e in enumerate(run.epochs):
        if prev is not None and prev.index == e.index - 1 and math.isfinite(prev.position):
            out[i] = prev.position
        else:
            out[i] = max(e.position - 1.0, 0.0) if e.position < 1.0 else e.position - 1.0
        prev = e
    return out


def end_estimate_from_points(q, y, ends) -> tuple[np.ndarray, np.ndarray]:
    """End-of-epoch values from one point per epoch (the ``means`` / ``ema`` rule).

    Parameters
    ----------
    q : array-like, shape (n,)
        Position of each epoch's value (fractional epochs; the epoch centre for
        an epoch mean, the lag-corrected time for an EMA).
    y : array-like, shape (n,)
        The values (NaN where missing).
    ends : array-like, shape (n,)
        The epoch ends where the estimate is wanted.

    Returns
    -------
    est, se : numpy.ndarray, shape (n,)
        Linear interpolation between the point of the epoch and the next finite
        one (extrapolation from the previous one for the last), and its error:
        the root mean square of the secant disagreements
        ``|slope forward − slope backward|`` at the (up to five) nearest
        interior points, times the distance from the point to the epoch end;
        with fewer than three points, the whole correction. NaN where no
        neighbour is finite.
    """
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    n = y.size
    est = np.full(n, np.nan)
    se = np.full(n, np.nan)
    ok = np.flatnonzero(np.isfinite(y) & np.isfinite(q))
    # secant disagreement |slope forward − slope backward| at every interior point (per epoch of distance)
    dis = np.full(ok.size, np.nan)
    for j in range(1, ok.size - 1):
        a, b, c = ok[j - 1], ok[j], ok[j + 1]
        if q[b] != q[a] and q[c] != q[b]:
            dis[j] = abs((y[c] - y[b]) / (q[c] - q[b]) - (y[b] - y[a]) / (q[b] - q[a]))
    for j, i in enumerate(ok):
        if j + 1 < ok.size and q[ok[j + 1]] != q[i]:
            k = ok[j + 1]
            est[i] = y[i] + (y[k] - y[i]) * (ends[i] - q[i]) / (q[k] - q[i])
        elif j >= 1 and q[ok[j - 1]] != q[i]:
            k = ok[j - 1]
            est[i] = y[i] + (y[i] - y[k]) * (ends[i] - q[i]) / (q[i] - q[k])
        if not math.isfinite(est[i]):
            est[i] = math.nan
            continue
        near = dis[max(0, j - 2): j + 3]
        near = near[np.isfinite(near)]
        if near.size:
            se[i] = float(np.sqrt(np.mean(near ** 2))) * abs(ends[i] - q[i])
        else:
            se[i] = abs(est[i] - y[i])
    return est, se


def _fit_window(xs: np.ndarray, ys: np.ndarray, ws: np.ndarray, lo: float, hi: float, x0: float) -> tuple[float, float]:
    a = int(np.searchsorted(xs, lo, side="left"))
    b = int(np.searchsorted(xs, hi, side="right"))
    if b - a < MIN_POINTS:
        return math.nan, math.nan
    return robust_line_at(xs[a:b], ys[a:b], x0, ws[a:b])


def _estimates_from_steps(st, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``steps`` rule for every epoch (see the module docstring)."""
    fin = np.isfinite(st.position) & np.isfinite(st.loss)
    order = np.argsort(st.position[fin], kind="stable")
    xs = st.position[fin][order]
    ys = st.loss[fin][order]
    ws = st.span[fin][order]
    ws = np.where(np.isfinite(ws) & (ws > 0), ws, 1.0)
    est = np.full(ends.size, np.nan)
    se = np.full(ends.size, np.nan)
    for i in range(ends.size):
        end, start = ends[i], starts[i]
        length = end - start
        if not (math.isfinite(end) and math.isfinite(start) and length > 0):
            continue
        half = _fit_window(xs, ys, ws, end - length / 2.0, end, end)
        whole = _fit_window(xs, ys, ws, start, end, end)
        if math.isfinite(half[0]):
            e, s = half
            if math.isfinite(whole[0]):
                # curvature allowance: for a quadratic trend the end-value bias of a line fitted over a
                # window of length h grows as h^2, so the half-window bias is (half - whole) / 3.
                s = math.hypot(s, (half[0] - whole[0]) / 3.0)
        elif math.isfinite(whole[0]):
            e, s = whole
        else:
            e, s = math.nan, math.nan
            for k in (1.0, 2.0, 4.0):
                e, s = _fit_window(xs, ys, ws, end - k * length, end + k * length, end)
                if math.isfinite(e):
                    break
        est[i], se[i] = e, s
    return est, se


def add_end_of_epoch_estimates(run: Run, ema_beta: float | None = None) -> str:
    """Estimate each epoch's end-of-epoch training loss and store it in the run.

    For every epoch with a finite training loss and no measured ``TRAIN_MODE``
    pass, adds ``Measurement(END_OF_EPOCH_ESTIMATE, mean=estimate, sem=se, n=0,
    source="estimated")`` (loss per sample, same units as the log). Epochs
    where no estimate is possible are left alone.

    Parameters
    ----------
    run : Run
        An imported run: ``run.steps`` holds step or window losses at their
        real positions (possibly empty), ``run.epochs`` the reported training
        losses and the epoch-end positions.
    ema_beta : float, optional
        When the reported loss is an EMA (fastai), its β; the per-epoch EMA
        values are taken from ``run.steps`` (one row per epoch, already placed at
        the lag-corrected time) and the ``ema`` rule is used.

    Returns
    -------
    str
        The method used: ``"steps"``, ``"means"``, ``"ema"``, a combination
        (``"steps+means"`` when some epochs had too few step values), or
        ``"none"``. Also stored in ``run.meta["timing_method"]``.
    """
    if not run.epochs:
        run.meta["timing_method"] = "none"
        return "none"
    ends = np.array([e.position for e in run.epochs], dtype=np.float64)
    starts = epoch_starts(run)
    est = np.full(len(run.epochs), np.nan)
    se = np.full(len(run.epochs), np.nan)
    used: list[str] = []
    st = run.steps
    if ema_beta is not None:
        if len(st):
            by_epoch = {int(e): (p, v) for e, p, v in zip(st.epoch, st.position, st.loss)}
            q = np.array([by_epoch.get(e.index, (np.nan, np.nan))[0] for e in run.epochs])
            y = np.array([by_epoch.get(e.index, (np.nan, np.nan))[1] for e in run.epochs])
            est, se = end_estimate_from_points(q, y, ends)
            if np.isfinite(est).any():
                used.append("ema")
    else:
        if len(st):
            est, se = _estimates_from_steps(st, starts, ends)
            if np.isfinite(est).any():
                used.append("steps")
        missing = ~np.isfinite(est)
        if missing.any() and run.meta.get("reported_loss_kind", "epoch_mean") == "epoch_mean":
            r = np.array([e.train_loss for e in run.epochs], dtype=np.float64)
            q = (starts + ends) / 2.0
            e2, s2 = end_estimate_from_points(q, r, ends)
            fill = missing & np.isfinite(e2)
            if fill.any():
                est[fill], se[fill] = e2[fill], s2[fill]
                used.append("means")
    for i, e in enumerate(run.epochs):
        if not math.isfinite(est[i]) or not math.isfinite(e.train_loss):
            continue
        if TRAIN_MODE in e.measurements:
            continue
        s = float(se[i]) if math.isfinite(se[i]) else abs(float(e.train_loss - est[i]))
        e.measurements[END_OF_EPOCH_ESTIMATE] = Measurement(END_OF_EPOCH_ESTIMATE, float(est[i]), s, 0, None,
                                                            "estimated")
    method = "+".join(used) if used else "none"
    run.meta["timing_method"] = method
    return method


def with_end_of_epoch_estimates(run: Run) -> Run:
    """``run`` with the end-of-epoch estimates of :func:`add_end_of_epoch_estimates`, for the diagnosis.

    A run without probe passes (an imported log) gets a copy with the estimates added (its epochs copied, the
    measurements dicts new; the run given is not changed); the EMA rule is used when the log's training loss is
    an EMA (``run.meta["reported_loss_kind"] == "ema"`` with ``run.meta["ema_beta"]``). A run that already has
    estimates, or measured train-mode or eval-mode probe passes, is returned as it is.
    """
    if not run.epochs or any(k in e.measurements for e in run.epochs
                             for k in (END_OF_EPOCH_ESTIMATE, TRAIN_MODE, EVAL_CLEAN)):
        return run
    import copy

    out = copy.copy(run)
    out.meta = dict(run.meta)
    out.epochs = [copy.copy(e) for e in run.epochs]
    for e in out.epochs:
        e.measurements = dict(e.measurements)
    beta = run.meta.get("ema_beta") if run.meta.get("reported_loss_kind") == "ema" else None
    add_end_of_epoch_estimates(out, ema_beta=float(beta) if isinstance(beta, (int, float)) else None)
    return out
