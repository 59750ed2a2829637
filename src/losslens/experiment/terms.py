"""Decomposition terms combined across the runs of one experiment.

Combining within-run and between-run noise
------------------------------------------
For a term with per-run estimates ``x_i`` (standard errors ``s_i``) over ``k``
runs, each ``x_i = μ + u_i + e_i`` with seed effect ``u_i`` (variance τ²) and
measurement error ``e_i`` (variance ``s_i²``): a random-effects model
(DerSimonian & Laird 1986, "Meta-analysis in clinical trials", *Controlled
Clinical Trials* 7). The observed between-run variance ``S² = var(x_i)``
(ddof 1) estimates ``τ² + mean(s_i²)``, so the standard error of the mean over
seeds is ``sqrt(S² / k)`` — it already contains the within-run noise — and the
mean is judged with Student's t on ``k − 1`` degrees of freedom (two-sided,
the level of :data:`LEVEL`). τ² itself is estimated by the moment estimator
``max(0, S² − mean(s_i²))`` and reported as the seed-to-seed spread beyond
measurement noise. A single run can only be judged against its within-run SE
(``Z_NOISE`` standard errors, as in the single-run diagnosis).

Runs of one experiment usually share their evaluation samples (one fixed
validation set, the same probe indices). The sampling error of those samples
is then common to every seed and does not average out over seeds, and ``S²``
does not see it. It is estimated from the per-sample losses averaged over the
seeds (a samples × seeds layout: ``SE_shared² = var_j(mean_i x_ij) / n`` per
evaluation set, summed over the sets a term uses; :func:`shared_se`) and
added: ``SE² = S²/k + SE_shared²``, with Welch–Satterthwaite degrees of
freedom (Satterthwaite 1946, *Biometrics Bulletin* 2) taking the shared part
as exactly known. This counts the seed-independent part of the measurement
noise twice (it is in ``S²`` too), so it is conservative by at most
``mean(s_i²)/k``. Runs whose evaluation sets differ (other fingerprints or
sizes) have independent sampling errors, already in ``S²``: no shared part.
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ..findings import Z_NOISE
from .summary import RunSummary

__all__ = ["TermSummary", "combine_terms", "term_summaries", "shared_se", "LEVEL", "TERMS"]

#: Two-sided confidence level of the across-seed judgements (t intervals).
LEVEL = 0.95

#: Decomposition terms judged across seeds, in report order.
TERMS = ("penalty", "timing", "train_mode", "augmentation", "generalization_gap", "unmeasured")


def shared_se(sums: Sequence[RunSummary], name: str) -> float:
    """Sampling error of quantity ``name`` shared by runs evaluated on the same samples.

    Parameters
    ----------
    sums : sequence of RunSummary
    name : str
        ``"best_val"``, ``"generalization_gap"`` (or ``"gap"``) or a term name.

    Returns
    -------
    float
        ``sqrt(Σ_sets (m/k)² · var_j(mean over the m runs of the per-sample values) / n)``
        over the evaluation sets the quantity uses, each shared by ``m ≥ 2`` of the ``k``
        runs (same fingerprint, or no fingerprint, and the same size); 0.0 when no set is
        shared or per-sample values are missing (independent errors are already in the
        between-run variance).
    """
    if name == "gap":
        name = "generalization_gap"
    got = [s.samples.get(name) for s in sums]
    parts = [p for p in got if p is not None]
    if not parts or len(parts) != len(got):
        return 0.0
    if len({tuple(sg for sg, _, _ in p) for p in parts}) != 1:
        return 0.0
    k = len(parts)
    total = 0.0
    for c in range(len(parts[0])):
        groups: dict[str, list[np.ndarray]] = {}
        for p in parts:
            groups.setdefault(p[c][1], []).append(p[c][2])
        for vals in groups.values():
            if len(vals) < 2:
                continue  # a set used by one run only: its error is independent, already in S²
            mat = np.vstack(vals)
            ok = np.all(np.isfinite(mat), axis=0)
            if ok.sum() < 2:
                continue
            avg = mat[:, ok].mean(axis=0)
            total += (len(vals) / k) ** 2 * float(avg.var(ddof=1)) / avg.size
    return math.sqrt(total)


@dataclass
class TermSummary:
    """A quantity judged across seeds (:func:`combine_terms`).

    Attributes
    ----------
    name : str
    values, ses : numpy.ndarray, shape (k,)
        Per-run estimates and within-run standard errors.
    per_seed_beyond : numpy.ndarray of bool, shape (k,)
        ``|x_i| > Z_NOISE · s_i`` (the single-run criterion).
    mean : float
        Mean over runs.
    sd_between : float
        Observed SD across runs (ddof 1; NaN for one run).
    within_se : float
        Root-mean-square within-run SE.
    tau : float
        Seed-to-seed SD beyond measurement noise, ``sqrt(max(0, S² − mean(s²)))``.
    se_mean : float
        SE of the mean over seeds: ``sqrt(S² / k + SE_shared²)`` (k ≥ 2) or the run's own SE (k = 1).
    lo, hi : float
        Confidence interval of the mean (t on k − 1 df; ±Z_NOISE·SE for k = 1).
    status : str
        ``"beyond noise"`` (the interval excludes 0 and no seed contradicts it),
        ``"uncertain"`` (beyond noise in some seeds but not across seeds, or
        seeds beyond noise with opposite signs), ``"within noise"``,
        ``"single run"`` (one run, beyond its own noise: seed variation unknown),
        ``"skipped"`` (the passes could not differ: exactly 0) or ``"not measured"``
        (no run has a finite value).
    """

    name: str
    values: np.ndarray
    ses: np.ndarray
    per_seed_beyond: np.ndarray
    mean: float
    sd_between: float
    within_se: float
    tau: float
    se_mean: float
    lo: float
    hi: float
    status: str

    @property
    def k(self) -> int:
        return int(self.values.size)

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"name": self.name, "k": self.k, "mean": num(self.mean), "se_mean": num(self.se_mean),
                "lo": num(self.lo), "hi": num(self.hi), "sd_between": num(self.sd_between),
                "within_se": num(self.within_se), "tau": num(self.tau), "status": self.status,
                "values": [num(float(v)) for v in self.values], "ses": [num(float(v)) for v in self.ses],
                "per_seed_beyond": [bool(b) for b in self.per_seed_beyond]}


def combine_terms(name: str, values: Sequence[float], ses: Sequence[float], statuses: Sequence[str] = (),
                  level: float = LEVEL, shared_se: float = 0.0) -> TermSummary:
    """Judge one quantity across seeds against within-run and between-run noise.

    Parameters
    ----------
    name : str
    values, ses : sequence of float, length k
        Per-run estimates and their within-run standard errors; non-finite
        estimates are dropped.
    statuses : sequence of str, optional
        Per-run term statuses (``"measured"``, ``"skipped"``, ``"not measured"``, ``"estimated"``).
    level : float
        Two-sided confidence level.
    shared_se : float
        Sampling error common to every run (runs evaluated on the same samples,
        :func:`shared_se`); 0 when the runs' measurement errors are independent.

    Returns
    -------
    TermSummary
        See the module docstring for the method.
    """
    v = np.asarray(values, dtype=np.float64)
    s = np.asarray(ses, dtype=np.float64)
    st = list(statuses) if statuses else ["measured"] * v.size
    keep = np.isfinite(v)
    v, s = v[keep], s[keep]
    st = [x for x, kk in zip(st, keep) if kk]
    k = v.size
    nan = math.nan
    if k == 0:
        return TermSummary(name, v, s, np.zeros(0, bool), nan, nan, nan, nan, nan, nan, nan, "not measured")
    with np.errstate(divide="ignore", invalid="ignore"):
        beyond = np.where(s > 0, np.abs(v) > Z_NOISE * s, v != 0) & np.array([x != "skipped" for x in st])
    mean = float(v.mean())
    fin = s[np.isfinite(s)]
    within = float(math.sqrt((fin ** 2).mean())) if fin.size else nan
    if all(x == "skipped" for x in st):
        return TermSummary(name, v, s, beyond, mean, 0.0, 0.0, 0.0, 0.0, mean, mean, "skipped")
    if k == 1:
        se = float(s[0]) if np.isfinite(s[0]) else nan
        lo, hi = mean - Z_NOISE * se, mean + Z_NOISE * se
        status = "single run" if bool(beyond[0]) else "within noise"
        return TermSummary(name, v, s, beyond, mean, nan, within, nan, se, lo, hi, status)
    sd = float(v.std(ddof=1))
    tau = math.sqrt(max(0.0, sd ** 2 - (within ** 2 if math.isfinite(within) else 0.0)))
    a_var = sd ** 2 / k
    b_var = shared_se ** 2 if math.isfinite(shared_se) else 0.0
    se = math.sqrt(a_var + b_var)
    # Welch-Satterthwaite: the shared part is taken as known (its n - 1 df are large)
    df = (a_var + b_var) ** 2 / (a_var ** 2 / (k - 1)) if a_var > 0 else math.inf
    crit = float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))
    lo, hi = mean - crit * se, mean + crit * se
    if se > 0:
        across = abs(mean) > crit * se
    else:
        across = mean != 0.0
    signs = np.sign(v[beyond])
    contradicted = bool(beyond.any()) and across and bool((signs != np.sign(mean)).any())
    if across and not contradicted:
        status = "beyond noise"
    elif beyond.any():
        status = "uncertain"
    else:
        status = "within noise"
    return TermSummary(name, v, s, beyond, mean, sd, within, tau, se, lo, hi, status)


def term_summaries(sums: Sequence[RunSummary], level: float = LEVEL) -> dict[str, TermSummary]:
    """Every decomposition term and the generalization gap, combined across runs (:func:`combine_terms`)."""
    out: dict[str, TermSummary] = {}
    for name in TERMS:
        rows = [s.terms[name] for s in sums if name in s.terms]
        if rows:
            out[name] = combine_terms(name, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], level,
                                      shared_se=shared_se(sums, name) if len(rows) == len(sums) else 0.0)
    gaps = [(s.gap, s.gap_se) for s in sums if math.isfinite(s.gap)]
    if gaps:
        out["generalization_gap"] = combine_terms(
            "generalization_gap", [g[0] for g in gaps], [g[1] for g in gaps], level=level,
            shared_se=shared_se(sums, "generalization_gap") if len(gaps) == len(sums) else 0.0)
    return out
