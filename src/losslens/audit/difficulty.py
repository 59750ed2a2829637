"""Is the validation set easier? Per-sample losses of one run, compared.

Two comparisons, both on per-sample losses (loss per sample, the loss
function's units, end-of-epoch weights in eval mode on clean inputs):

1. validation versus the probe set (the eval-mode training loss ``C`` of the
   DESIGN protocol): the difference of means ``mean(val) − mean(probe)`` with a
   percentile bootstrap 95 % confidence interval (:func:`scipy.stats.bootstrap`,
   2 000 resamples, the two samples resampled independently; Efron &
   Tibshirani 1993, ch. 13), and the two-sample Kolmogorov–Smirnov test
   (:func:`scipy.stats.ks_2samp`) for a difference in the whole distribution.
   The validation set is flagged as easier when the whole interval lies below 0.
   The percentile interval is used rather than BCa because BCa's jackknife is
   quadratic in memory for vectorised two-sample statistics.
2. leaked versus clean validation samples (exact or near duplicates of a
   training sample, or members of a group that also occurs in training): the
   same difference of means and interval, and the validation loss with the
   leaked samples removed, which is what the validation loss would have been
   without the leak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LossComparison", "Difficulty", "compare_losses", "difficulty", "losses_from_run"]

N_BOOT = 2000


@dataclass
class LossComparison:
    """``mean(a) − mean(b)`` with a bootstrap interval and a KS test.

    Attributes
    ----------
    name_a, name_b : str
        What the two samples are.
    n_a, n_b : int
    mean_a, mean_b : float
        Mean loss per sample.
    diff : float
        ``mean_a − mean_b``.
    se : float
        Bootstrap standard error of ``diff``.
    ci_low, ci_high : float
        95 % percentile bootstrap interval of ``diff`` (NaN with fewer than 2 samples on a side).
    ks_statistic, ks_p : float
        Two-sample KS test of the distributions.
    """

    name_a: str
    name_b: str
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    se: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    ks_statistic: float = math.nan
    ks_p: float = math.nan
    confidence: float = 0.95

    @property
    def below_zero(self) -> bool:
        """True when the whole interval is below 0 (``a`` lower than ``b`` beyond noise)."""
        return bool(math.isfinite(self.ci_high) and self.ci_high < 0)

    @property
    def above_zero(self) -> bool:
        """True when the whole interval is above 0."""
        return bool(math.isfinite(self.ci_low) and self.ci_low > 0)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}


def compare_losses(a: Any, b: Any, *, name_a: str = "a", name_b: str = "b", n_boot: int = N_BOOT,
                   confidence: float = 0.95, seed: int = 0) -> LossComparison:
    """Difference of mean per-sample losses with a bootstrap interval and a KS test.

    Parameters
    ----------
    a, b : array-like (n_a,), (n_b,)
        Per-sample losses. Non-finite values are dropped.
    name_a, name_b : str
        Labels for the report.
    n_boot : int
        Bootstrap resamples (2 000: the percentile interval's endpoints then
        have a Monte Carlo error of about 2 % of the interval's width).
    confidence : float
    seed : int

    Returns
    -------
    LossComparison

    Raises
    ------
    ValueError
        If either sample is empty after dropping non-finite values.
    """
    from scipy import stats

    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        raise ValueError(f"compare_losses: {name_a!r} has {x.size} and {name_b!r} has {y.size} finite losses; "
                         "both need at least one")
    res = LossComparison(name_a, name_b, int(x.size), int(y.size), float(x.mean()), float(y.mean()),
                         float(x.mean() - y.mean()), confidence=confidence)
    if x.size >= 2 and y.size >= 2:
        boot = stats.bootstrap((x, y), lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis),
                               n_resamples=n_boot, confidence_level=confidence, method="percentile",
                               vectorized=True, random_state=np.random.default_rng(seed))
        res.ci_low, res.ci_high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        res.se = float(boot.standard_error)
        ks = stats.ks_2samp(x, y)
        res.ks_statistic, res.ks_p = float(ks.statistic), float(ks.pvalue)
    return res


@dataclass
class Difficulty:
    """Loss-based comparison of the validation set with the training data.

    Attributes
    ----------
    val_vs_probe : LossComparison or None
        Validation losses minus probe-set (eval-mode training) losses.
    leaked_vs_clean : LossComparison or None
        Losses of leaked validation samples minus those of clean ones.
    val_loss_clean : float
        Mean validation loss without the leaked samples (NaN when unknown).
    n_leaked : int
        Validation samples counted as leaked (exact or near duplicates, shared groups).
    source : str
        Where the losses come from (e.g. "run 'x', epoch 9").
    """

    val_vs_probe: LossComparison | None = None
    leaked_vs_clean: LossComparison | None = None
    val_loss_clean: float = math.nan
    val_loss: float = math.nan
    n_leaked: int = 0
    source: str = ""
    epochs: tuple[int, ...] = ()

    @property
    def val_easier(self) -> bool:
        """Validation losses below the probe losses beyond noise (interval below 0)."""
        return self.val_vs_probe is not None and self.val_vs_probe.below_zero

    def to_dict(self) -> dict[str, Any]:
        return {"val_vs_probe": self.val_vs_probe.to_dict() if self.val_vs_probe else None,
                "leaked_vs_clean": self.leaked_vs_clean.to_dict() if self.leaked_vs_clean else None,
                "val_loss": None if not math.isfinite(self.val_loss) else self.val_loss,
                "val_loss_clean": None if not math.isfinite(self.val_loss_clean) else self.val_loss_clean,
                "n_leaked": self.n_leaked, "source": self.source, "epochs": list(self.epochs),
                "val_easier": self.val_easier}


def losses_from_run(run: Any, epoch: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None, str, int]:
    """Per-sample validation and eval-mode probe losses of one epoch of a run.

    Parameters
    ----------
    run : losslens.record.Run
    epoch : int, optional
        0-based epoch; default the last epoch that has per-sample validation losses.

    Returns
    -------
    val_losses, probe_losses : numpy.ndarray or None
        ``measurements["validation"].values`` and ``measurements["eval_clean"].values``.
    source : str
    epoch : int

    Raises
    ------
    ValueError
        If the run has no epoch with per-sample validation losses, or ``epoch`` is out of range.
    """
    epochs = list(run.epochs)
    if epoch is not None:
        if not 0 <= epoch < len(epochs):
            raise ValueError(f"epoch {epoch} out of range: the run has {len(epochs)} epochs")
        cands = [epochs[epoch]]
    else:
        cands = [e for e in reversed(epochs)
                 if "validation" in e.measurements and e.measurements["validation"].values is not None]
    if not cands or "validation" not in cands[0].measurements or cands[0].measurements["validation"].values is None:
        raise ValueError("run: no epoch with per-sample validation losses (imported logs have none; "
                         "record the run with a losslens adapter)")
    e = cands[0]
    v = e.measurements["validation"].values
    c = e.measurements.get("eval_clean")
    name = getattr(run, "name", None) or getattr(run, "run_id", None) or "run"
    return (np.asarray(v), np.asarray(c.values) if c is not None and c.values is not None else None,
            f"{name}, end of epoch {e.index}", int(e.index))


def difficulty(val_losses: Any = None, probe_losses: Any = None, *, leaked: np.ndarray | None = None,
               n_val: int | None = None, seed: int = 0, source: str = "",
               epochs: tuple[int, ...] = ()) -> Difficulty:
    """Compare validation losses with probe losses, and leaked with clean validation samples.

    Parameters
    ----------
    val_losses : array-like (n_val,), optional
        Per-sample validation losses (eval mode), aligned with the validation
        inputs when ``leaked`` is given.
    probe_losses : array-like (n_probe,), optional
        Per-sample eval-mode losses on the probe set (clean inputs).
    leaked : array of int, optional
        Validation indices with an exact or near duplicate in training (or in
        a group shared with training).
    n_val : int, optional
        Size of the validation inputs; when given and ``len(val_losses)``
        differs, the leaked-versus-clean comparison is skipped (the losses
        cannot be matched to samples).
    seed : int
    source, epochs :
        Provenance for the report.

    Returns
    -------
    Difficulty
    """
    res = Difficulty(source=source, epochs=epochs)
    if val_losses is None:
        return res
    v = np.asarray(val_losses, dtype=np.float64).ravel()
    res.val_loss = float(np.nanmean(v)) if v.size else math.nan
    if probe_losses is not None and len(np.asarray(probe_losses)):
        res.val_vs_probe = compare_losses(v, probe_losses, name_a="validation", name_b="probe set (eval mode)",
                                          seed=seed)
    if leaked is not None and (n_val is None or n_val == v.size):
        mask = np.zeros(v.size, bool)
        mask[np.asarray(leaked, dtype=np.int64)] = True
        res.n_leaked = int(mask.sum())
        if 0 < mask.sum() < v.size:
            res.leaked_vs_clean = compare_losses(v[mask], v[~mask], name_a="leaked validation samples",
                                                 name_b="clean validation samples", seed=seed)
            res.val_loss_clean = float(np.nanmean(v[~mask]))
        elif mask.sum() == 0:
            res.val_loss_clean = res.val_loss
    return res
