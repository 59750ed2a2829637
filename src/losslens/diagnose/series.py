"""A run's curves as the regime checks read them: the validation curve, the training curve (the eval-mode
training loss, else the reported one), the baseline loss, and the early-stopping patience a curve suggests."""

from __future__ import annotations

import math

import numpy as np

from ..record import EVAL_CLEAN, Measurement, Run

__all__ = ["suggest_patience", "baseline_of", "curve", "train_curve", "train_points", "relative"]


def baseline_of(run: Run) -> float | None:
    """The run's baseline loss (``run.info.loss.baseline``) when it is a positive finite number, else None."""
    raw = run.info.loss.baseline
    try:
        b = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return b if math.isfinite(b) and b > 0 else None


def curve(run: Run, kind: str) -> tuple[list[int], np.ndarray, list[Measurement]]:
    idx, pos, ms = [], [], []
    for e in run.epochs:
        m = e.measurements.get(kind)
        if m is not None and math.isfinite(m.mean):
            idx.append(e.index)
            pos.append(e.position)
            ms.append(m)
    return idx, np.asarray(pos, dtype=np.float64), ms


def train_curve(run: Run) -> tuple[list[int], np.ndarray, list[Measurement], str]:
    """Eval-mode training loss C when measured, else the reported data loss R at epoch centres."""
    idx, pos, ms = curve(run, EVAL_CLEAN)
    if len(ms) >= 2:
        return idx, pos, ms, "eval-mode training loss"
    idx, at, ms = [], [], []
    for e in run.epochs:
        if math.isfinite(e.train_loss):
            idx.append(e.index)
            at.append(e.index + 0.5)
            ms.append(Measurement(EVAL_CLEAN, e.train_loss, source="imported"))
    return idx, np.asarray(at, dtype=np.float64), ms, "reported training loss"


def suggest_patience(values: np.ndarray, acceptable: np.ndarray) -> tuple[int, int, int] | None:
    """Smallest early-stopping patience that stops at an acceptable epoch.

    Simulates Keras/Lightning ``EarlyStopping(patience=p, min_delta=0,
    restore_best_weights=True)`` on the curve for p = 1, 2, ...: the run stops
    after p epochs without a new minimum, and the restored epoch is the best
    so far. A patience is acceptable when the restored epoch's loss is within
    noise of the overall minimum (``acceptable[restored]`` is true).

    Parameters
    ----------
    values : numpy.ndarray, shape (n_epochs,)
        Validation loss per epoch.
    acceptable : numpy.ndarray of bool, shape (n_epochs,)
        Epochs whose loss is not worse than the minimum beyond noise.

    Returns
    -------
    (patience, stop_index, restored_index) or None
        ``stop_index`` is the position in ``values`` where training would have
        stopped (the last epoch when it would not have stopped),
        ``restored_index`` the best epoch so far at that point. None when no
        patience below ``n_epochs`` works.
    """
    n = values.size
    for p in range(1, n):
        best, best_i, wait, stop = math.inf, -1, 0, n - 1
        for i, v in enumerate(values):
            if v < best:
                best, best_i, wait = v, i, 0
            else:
                wait += 1
                if wait >= p:
                    stop = i
                    break
        if acceptable[best_i]:
            return p, stop, best_i
    return None


def relative(x: float, ref: float) -> str:
    return f" ({100 * x / ref:+.1f} %)" if ref > 0 else ""


def train_points(run: Run) -> tuple[np.ndarray, np.ndarray, list[int], str]:
    """The training curve to judge: step/window losses at their positions when the log has more of them than
    epochs, else the reported epoch losses at epoch centres. Returns (positions, values, epoch of each, name)."""
    st = run.steps
    if len(st) >= max(5, len(run.epochs) + 1):
        ok = np.isfinite(st.loss)
        return st.position[ok], st.loss[ok], [int(e) for e in st.epoch[ok]], "training loss (logged steps)"
    idx = [e.index for e in run.epochs if math.isfinite(e.train_loss)]
    pos = np.array([e.index + 0.5 for e in run.epochs if math.isfinite(e.train_loss)], dtype=np.float64)
    val = np.array([e.train_loss for e in run.epochs if math.isfinite(e.train_loss)], dtype=np.float64)
    return pos, val, idx, "reported training loss"


#: Curve-judgement code -> (finding code, severity, title).
