"""When to stop: early stopping that tells a material improvement from noise (framework-free).

Every framework's stopper compares a raw, noisy validation number with a patience count. :class:`NoiseAwareStopper`
judges each epoch against the best one with the evidence losslens has:

* with per-sample validation losses (a recorder's ``V``: the same fixed samples every epoch), the difference to the
  best epoch has a *paired* standard error, far tighter than two separate ones;
* with epoch values only (a framework metric), the noise is the curve's robust epoch-to-epoch scatter
  (:func:`scatter_sigma`), times √2 for a difference of two epochs.

An epoch is a *material improvement* when it is below the best so far by more than ``max(min_delta, Z·SE)``
(:data:`Z_STOP`). Training stops when

1. the monitored value is worse than the best beyond noise for :data:`WORSE_EPOCHS` consecutive epochs (the
   overfitting signal of ``regime.overfitting``, judged online), or
2. no material improvement for ``patience`` epochs (an upper bound, as in every framework's stopper).

The epoch to restore is the one with the lowest value (the truly best epoch, whether or not its improvement was
material). ``benchmarks/early_stopping.py`` measures regret and epochs trained against patience rules on replayed
real training runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["NoiseAwareStopper", "StopDecision", "scatter_sigma", "Z_STOP", "WORSE_EPOCHS"]

#: Standard errors beyond which a difference between two epochs counts: the diagnosis's ``Z_NOISE`` (≈ 95 %
#: two-sided normal).
Z_STOP = 2.0

#: Consecutive epochs worse than the best beyond noise that stop training (one can be a fluke at the 2.5 % level
#: of a one-sided test; two in a row at about 0.06 % under independence).
WORSE_EPOCHS = 2


def scatter_sigma(values: Any) -> float:
    """Robust epoch-to-epoch scatter σ of a curve: ``1.4826 · MAD(second differences) / √6`` (a locally linear
    trend cancels; Rousseeuw & Croux 1993 for the MAD scale). 0.0 for fewer than 3 finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 3:
        return 0.0
    d2 = v[2:] - 2 * v[1:-1] + v[:-2]
    mad = float(np.median(np.abs(d2 - np.median(d2))))
    if mad == 0.0:
        mad = float(np.median(np.abs(d2)))
    return 1.4826 * mad / math.sqrt(6.0)


@dataclass
class StopDecision:
    """The stopper's judgement after one epoch.

    Attributes
    ----------
    stop : bool
    best_epoch : int
        The epoch with the lowest monitored value (the one to restore).
    last_material : int
        The last epoch that improved on the best before it beyond noise.
    reason : str
        Why it stops (or why not), in words, with the numbers.
    evidence : dict
        ``value``, ``best``, ``difference``, ``se``, ``threshold``, ``worse_streak``, ``since_material``.
    """

    stop: bool
    best_epoch: int
    last_material: int
    reason: str
    evidence: dict = field(default_factory=dict)


class NoiseAwareStopper:
    """Stop training when the monitored quantity has not improved materially beyond noise (module docstring).

    Parameters
    ----------
    mode : {"min", "max"}
        Whether lower (a loss) or higher (an accuracy) is better.
    min_delta : float
        A change smaller than this never counts as an improvement (units of the monitored value), as in Keras.
    patience : int
        Upper bound: stop after this many epochs without a material improvement.
    worse_epochs : int
        Consecutive epochs worse than the best beyond noise that stop training at once.
    z : float
        Standard errors of a material difference.

    Raises
    ------
    ValueError
        For a bad mode, a negative min_delta, patience < 1 or worse_epochs < 1.
    """

    def __init__(self, mode: str = "min", min_delta: float = 0.0, patience: int = 10,
                 worse_epochs: int = WORSE_EPOCHS, z: float = Z_STOP) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta: expected a number >= 0, got {min_delta!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience: expected an int >= 1, got {patience!r}")
        if isinstance(worse_epochs, bool) or not isinstance(worse_epochs, int) or worse_epochs < 1:
            raise ValueError(f"worse_epochs: expected an int >= 1, got {worse_epochs!r}")
        self.sign = 1.0 if mode == "min" else -1.0
        self.mode, self.min_delta, self.patience, self.worse_epochs, self.z = (mode, float(min_delta), patience,
                                                                                 worse_epochs, float(z))
        self.epochs: list[int] = []
        self.values: list[float] = []
        self.samples: list[np.ndarray | None] = []
        self.best = -1              # position (into the lists) of the lowest value
        self.material = -1          # position of the last material improvement
        self.worse_streak = 0
        self.decision: StopDecision | None = None

    def _se(self, i: int, j: int) -> float:
        """Standard error of value_i − value_j: paired over per-sample values when both have them, else from the
        curve's scatter (√2 σ)."""
        a, b = self.samples[i], self.samples[j]
        if a is not None and b is not None and a.size == b.size and a.size > 1:
            d = a - b
            d = d[np.isfinite(d)]
            if d.size > 1:
                return float(d.std(ddof=1) / math.sqrt(d.size))
        return math.sqrt(2.0) * scatter_sigma(self.values)

    def update(self, epoch: int, value: float, per_sample: Any = None) -> StopDecision:
        """Judge one epoch.

        Parameters
        ----------
        epoch : int
        value : float
            The monitored value (e.g. the validation loss, per sample).
        per_sample : array-like, shape (n,), optional
            The per-sample values of a fixed evaluation set (the same samples every epoch) whose mean is ``value``.

        Returns
        -------
        StopDecision
        """
        v = float(value)
        s = None if per_sample is None else self.sign * np.asarray(per_sample, dtype=np.float64).reshape(-1)
        self.epochs.append(int(epoch))
        self.values.append(self.sign * v)
        self.samples.append(s)
        k = len(self.values) - 1
        x = self.values[k]
        if not math.isfinite(x):
            self.worse_streak += 1
        if self.best < 0 or (math.isfinite(x) and x < self.values[self.best]):
            self.best = k if math.isfinite(x) else self.best
        ev: dict[str, Any] = {"value": v}
        if self.material < 0:
            if math.isfinite(x):
                self.material = k
            reason = "first epoch"
        else:
            m = self.material
            se = self._se(k, m) if math.isfinite(x) else math.nan
            threshold = max(self.min_delta, self.z * se) if math.isfinite(se) else self.min_delta
            diff = x - self.values[m]
            ev.update(best=self.sign * self.values[self.best], difference=self.sign * diff, se=se,
                      threshold=threshold)
            if math.isfinite(x) and diff < -threshold:
                self.material, self.worse_streak = k, 0
                reason = f"improved beyond noise ({self.sign * diff:+.4g}, threshold {threshold:.3g})"
            else:
                b = self.best
                se_b = self._se(k, b) if math.isfinite(x) else math.nan
                worse = (not math.isfinite(x)) or (math.isfinite(se_b) and x - self.values[b] >
                                                   max(self.min_delta, self.z * se_b) and k != b)
                self.worse_streak = self.worse_streak + 1 if worse else 0
                reason = ("worse than the best beyond noise" if worse else "within noise of the best")
        since = k - self.material if self.material >= 0 else k + 1
        ev.update(worse_streak=self.worse_streak, since_material=since)
        stop = False
        if self.worse_streak >= self.worse_epochs:
            stop = True
            reason = (f"worse than the best epoch ({self.epochs[self.best]}) beyond noise for {self.worse_streak} "
                      "consecutive epochs")
        elif since >= self.patience:
            stop = True
            reason = f"no improvement beyond noise for {since} epochs (patience {self.patience})"
        self.decision = StopDecision(stop, self.epochs[self.best] if self.best >= 0 else int(epoch),
                                     self.epochs[self.material] if self.material >= 0 else int(epoch), reason, ev)
        return self.decision

    def state_dict(self) -> dict[str, Any]:
        """The stopper's history (plain lists): ``load_state_dict`` continues it after a resume."""
        return {"epochs": list(self.epochs), "values": [self.sign * v for v in self.values]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay a saved history (per-sample values are not kept: the resumed judgement uses the curve's noise)."""
        for e, v in zip(state.get("epochs", []), state.get("values", [])):
            self.update(int(e), float(v))
