"""fastai ``CSVLogger`` files (``history.csv``).

Format (fastai 2.x): header ``epoch,train_loss,valid_loss,<metrics...>,time``,
one row per epoch, ``epoch`` 0-based, ``time`` as ``mm:ss``. ``valid_loss`` is
the validation loss with the end-of-epoch weights. ``train_loss`` is **not** an
epoch mean: it is the recorder's ``smooth_loss`` at the end of the epoch,
fastai's ``AvgSmoothLoss`` — an exponential moving average over every step
since training began, ``v ← β v + (1 − β) l`` with β = 0.98, divided by
``1 − β^n`` (bias correction).

The EMA is the loss at ``lag`` steps before the epoch end for a loss linear in
time (:func:`ema_lag`, → 49 steps). Placing it needs
the number of steps per epoch ``S`` (not in the file): pass
``steps_per_epoch``. With it, each value is placed at
``e + 1 − (lag + 0.5) / S`` and the end-of-epoch loss is estimated from the
trend between those points; without it nothing is estimated (the run is still
imported and diagnosed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..record import Run, Steps
from ._common import LogFormatError, check_steps_per_epoch, numeric_columns, read_csv, read_text
from ._epochs import run_from_epoch_columns

__all__ = ["read", "sniff", "FASTAI_BETA", "ema_lag"]

#: ``AvgSmoothLoss(beta=0.98)``, fastai's default (fastai/learner.py, ``Recorder``).
FASTAI_BETA = 0.98


def ema_lag(beta: float, n: int) -> float:
    """Mean age (in steps) of a bias-corrected exponential moving average.

    The bias-corrected EMA after ``n`` steps, ``Σ_k (1−β) β^k l_{n−k} / (1 − β^n)``
    (k = 0 … n − 1), is a weighted mean of the step losses with weights
    ∝ β^k; its mean age is ``lag = Σ k β^k / Σ β^k``. For a loss linear in time
    the EMA equals the loss ``lag`` steps before the last step, exactly.

    Parameters
    ----------
    beta : float
        Smoothing factor, 0 ≤ β < 1 (fastai's ``AvgSmoothLoss`` default 0.98).
    n : int
        Number of steps averaged so far (≥ 1).

    Returns
    -------
    float
        The lag in steps: ``β/(1−β) − n β^n/(1−β^n)``; 0 for n = 1; → β/(1−β) (49
        for β = 0.98) as n grows.

    Raises
    ------
    ValueError
        If ``beta`` is outside [0, 1) or ``n`` < 1.
    """
    if not (0.0 <= beta < 1.0):
        raise ValueError(f"ema_lag: beta must be in [0, 1), got {beta!r}")
    if n < 1:
        raise ValueError(f"ema_lag: n must be at least 1, got {n!r}")
    if beta == 0.0:
        return 0.0
    bn = beta ** n
    return float(beta / (1.0 - beta) - n * bn / (1.0 - bn))



def sniff(header: list[str]) -> bool:
    """True for ``epoch,train_loss,valid_loss,...`` (fastai's column names)."""
    h = [c.strip() for c in header]
    return bool(h) and h[0] == "epoch" and "train_loss" in h and "valid_loss" in h


def _seconds(cell: str | None) -> float:
    if not cell:
        return math.nan
    try:
        parts = [float(p) for p in cell.strip().split(":")]
    except ValueError:
        return math.nan
    total = 0.0
    for p in parts:
        total = total * 60.0 + p
    return total


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None, text: str | None = None,
         steps_per_epoch: float | None = None, beta: float = FASTAI_BETA) -> Run:
    """Import a fastai ``history.csv``.

    Parameters
    ----------
    steps_per_epoch : float, optional
        Optimizer steps per epoch (``len(dls.train)``), needed to place the EMA
        at its real time and estimate the end-of-epoch training loss.
    beta : float
        The ``AvgSmoothLoss`` β (0.98 unless the user changed it).

    Returns
    -------
    Run
        ``Epoch.train_loss`` = the EMA as reported (``meta["reported_loss_kind"]
        = "ema"``), ``VALIDATION`` = ``valid_loss``; with ``steps_per_epoch``,
        ``steps`` holds one row per epoch (the EMA at its lag-corrected time,
        ``span`` = 1 / (1 − β), the EMA's effective number of steps).

    Raises
    ------
    LogFormatError
        As for Keras CSV files; also a ``steps_per_epoch`` outside 1 to 1e9.
    """
    table = read_csv(path, text if text is not None else read_text(path))
    if not table.has("epoch"):
        raise LogFormatError(path, f"no 'epoch' column (header: {', '.join(table.names)})")
    if len(table) == 0:
        raise LogFormatError(path, "header only: no epoch rows")
    check_steps_per_epoch(path, steps_per_epoch)
    epoch = table.floats("epoch", path)
    cols, notes = numeric_columns(table, path, skip=("epoch", "time"))
    if "time" in table.names:
        cols["seconds"] = np.array([_seconds(c) for c in table.text("time")])
    steps = None
    tk = train_loss or ("train_loss" if "train_loss" in cols else None)
    extra: dict[str, Any] = {"ema_beta": beta, "steps_per_epoch": steps_per_epoch}
    if steps_per_epoch is not None and tk in cols and np.all(np.isfinite(epoch)):
        e = np.round(epoch).astype(np.int64)
        n_steps = (e + 1) * float(steps_per_epoch)
        lag = np.array([ema_lag(beta, max(1, int(round(n)))) for n in n_steps])
        pos = e + 1.0 - (lag + 0.5) / float(steps_per_epoch)
        steps = Steps.build(e, cols[tk], position=pos, span=np.full(e.size, 1.0 / (1.0 - beta)))
        extra["ema_lag_steps"] = float(lag[-1]) if lag.size else None
    else:
        notes.append("train_loss is an exponential moving average (β = %g); without steps_per_epoch its lag "
                     "cannot be placed in epochs, so the end-of-epoch training loss is not estimated" % beta)
    run = run_from_epoch_columns(path, epoch, cols, importer="fastai", framework="fastai", train_loss=train_loss,
                                 val_loss=val_loss, reported_loss_kind="ema", notes=notes, extra_meta=extra,
                                 steps=steps)
    for ep in run.epochs:
        sec = ep.metrics.pop("seconds", math.nan)
        ep.seconds = float(sec)
    return run
