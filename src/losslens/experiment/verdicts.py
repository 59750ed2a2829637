"""Verdicts over an experiment: several runs of one configuration with different seeds.

One run is one sample. Each verdict is first taken per run (with that run's
within-run noise, :mod:`losslens.diagnose`), then across the runs:

* **fit regime**: the regime code of :func:`losslens.diagnose.diagnose` per
  run. The same code for every seed gives ``experiment.regime``; anything else
  gives ``experiment.regime_uncertain`` with the per-seed codes.
* **best epoch**: the epoch of lowest validation loss per run, with its spread
  across seeds (mean, SD, range) and the best epoch of the mean curve
  (``experiment.best_epoch``).
* **decomposition terms** (:func:`losslens.diagnose.decompose`, by default at
  each run's last decomposed epoch): judged against within-run noise (each
  run's term SE) and between-run spread (:func:`combine_terms`). A term beyond
  noise in some seeds but not across seeds is ``experiment.term_uncertain``.
* **other per-run findings** (e.g. ``gap.val_easier``, ``stability.divergence``)
  present in some seeds and not in others: ``experiment.finding_uncertain``.
* **split**: runs whose validation sets differ (``experiment.split_changed``)
  or whose validation set holds another run's training samples
  (``experiment.split_overlap``), from the content fingerprints of
  :mod:`losslens.recording.fingerprint` stored in ``run.meta``.

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
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ..diagnose import Z_NOISE, Evidence, Finding, decompose, diagnose
from ..diagnose.gap import TERM_LABELS
from ..record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Run
from ..recording import fingerprint as fp

__all__ = ["RunSummary", "TermSummary", "summarize_run", "combine_terms", "experiment_verdicts",
           "split_findings", "term_summaries", "shared_se", "LEVEL", "TERMS"]

#: Two-sided confidence level of the across-seed judgements (t intervals).
LEVEL = 0.95

#: Decomposition terms judged across seeds, in report order.
TERMS = ("penalty", "timing", "train_mode", "augmentation", "generalization_gap", "unmeasured")

#: Labels of the quantities judged across seeds.
_LABELS = TERM_LABELS

_REGIME_WORDS = {
    "regime.overfitting": "overfitting",
    "regime.still_improving": "still improving",
    "regime.underfit_capacity": "under-fitting (capacity)",
    "regime.over_regularized": "under-fitting (too much regularization)",
    "regime.good_fit": "good fit",
    "regime.too_few_epochs": "too few epochs to tell",
    "regime.plateau": "plateau (no baseline)",
    "regime.no_validation": "no validation loss",
}


@dataclass
class RunSummary:
    """What one run contributes to an experiment's verdicts.

    Attributes
    ----------
    label : str
        Run name (with its store id when stored).
    best_epoch : int
        Epoch of the lowest validation loss (-1 when none).
    best_val : float
        Lowest validation loss (loss per sample, eval mode, end of epoch).
    best_val_se : float
        Its within-run standard error (per-sample losses of the validation set).
        The selection of the minimum is not accounted for (optimistic by the
        usual winner's-curse bias).
    at_epoch : int
        Epoch of the decomposition terms (``at="last"``: the last decomposed
        epoch; ``at="best"``: the best epoch).
    gap, gap_se : float
        Generalization gap V − C at ``at_epoch`` and its SE (NaN without probes).
    terms : dict of str -> (value, se, status)
        Decomposition terms at ``at_epoch``.
    regime : str or None
        The run's regime finding code.
    codes : list of str
        Every finding code of the run's diagnosis.
    n_epochs : int
    """

    label: str
    best_epoch: int = -1
    best_val: float = math.nan
    best_val_se: float = math.nan
    at_epoch: int = -1
    gap: float = math.nan
    gap_se: float = math.nan
    terms: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    regime: str | None = None
    codes: list[str] = field(default_factory=list)
    n_epochs: int = 0
    #: quantity -> [(sign, evaluation-set key, per-sample values)]: the per-sample parts whose means make the
    #: quantity (used for the sampling error shared by runs evaluated on the same samples).
    samples: dict[str, list[tuple[float, str, np.ndarray]]] = field(default_factory=dict, repr=False)

    def quantity(self, name: str) -> tuple[float, float]:
        """(value, within-run SE) of ``best_val``, ``gap`` or a term name (NaN when absent)."""
        if name == "best_val":
            return self.best_val, self.best_val_se
        if name == "gap":
            return self.gap, self.gap_se
        v = self.terms.get(name)
        return (v[0], v[1]) if v is not None else (math.nan, math.nan)


def _label(run: Run, i: int = 0) -> str:
    base = run.name or f"run {i}"
    return f"{base} (id {run.id})" if run.id is not None else base


def summarize_run(run: Run, at: str = "last", label: str | None = None) -> RunSummary:
    """Per-run numbers used across seeds.

    Parameters
    ----------
    run : Run
    at : str
        ``"last"`` (default): decomposition at the last epoch with a training and
        validation loss; ``"best"``: at the epoch of lowest validation loss.
    label : str, optional
        Label of the run in reports (default: its name and id).

    Raises
    ------
    ValueError
        If ``at`` is not ``"last"`` or ``"best"``.
    """
    if at not in ("last", "best"):
        raise ValueError(f"at={at!r}: expected 'last' or 'best'")
    s = RunSummary(label or _label(run), n_epochs=len(run.epochs))
    best = None
    for e in run.epochs:
        m = e.measurements.get(VALIDATION)
        if m is not None and math.isfinite(m.mean) and (best is None or m.mean < best[1].mean):
            best = (e.index, m)
    if best is not None:
        s.best_epoch, s.best_val, s.best_val_se = best[0], float(best[1].mean), float(best[1].sem)
    dec = [d for d in decompose(run) if all(math.isfinite(t.value) for t in d.terms.values())]
    if dec:
        d = dec[-1]
        if at == "best" and best is not None:
            d = next((x for x in dec if x.epoch == best[0]), d)
        s.at_epoch = d.epoch
        s.terms = {n: (float(t.value), float(t.se), t.status) for n, t in d.terms.items()}
        g = d.generalization_gap
        if g is not None:
            s.gap, s.gap_se = float(g.value), float(g.se)
        s.samples.update(_per_sample_parts(run, next(e for e in run.epochs if e.index == d.epoch)))
    if best is not None and best[1].values is not None:
        s.samples["best_val"] = [(1.0, _set_key(run, "val", best[1].values.size), best[1].values.astype(np.float64))]
    diag = diagnose(run)
    s.codes = diag.codes()
    s.regime = next((c for c in s.codes if c.startswith("regime.")), None)
    return s


def _set_key(run: Run, which: str, n: int) -> str:
    """Identity of an evaluation set: its fingerprint when recorded (else unknown), and its size."""
    if which == "val":
        fpr = run.meta.get("val_fingerprint")
    else:
        fpr = run.meta.get("probe_fingerprint") or run.meta.get("probe_content_fingerprint")
    return f"{which}:{fpr}:{n}"


def _per_sample_parts(run: Run, e: Any) -> dict[str, list[tuple[float, str, np.ndarray]]]:
    """Per-sample parts of each decomposition term at epoch ``e`` (see :attr:`RunSummary.samples`)."""
    out: dict[str, list[tuple[float, str, np.ndarray]]] = {}
    c, v = e.get(EVAL_CLEAN), e.get(VALIDATION)
    a, t = e.get(EVAL_AUGMENTED), e.get(TRAIN_MODE)
    if c is None or c.values is None:
        return out
    f64 = np.float64
    cv = c.values.astype(f64)
    av = a.values.astype(f64) if a is not None and a.values is not None and a.values.size == cv.size else cv
    tv = t.values.astype(f64) if t is not None and t.values is not None and t.values.size == cv.size else av
    pk = _set_key(run, "probe", cv.size)
    out["timing"] = [(-1.0, pk, tv)]
    if tv is not av:
        out["train_mode"] = [(1.0, pk, tv - av)]
    if av is not cv:
        out["augmentation"] = [(1.0, pk, av - cv)]
    if v is not None and v.values is not None:
        vk = _set_key(run, "val", v.values.size)
        vv = v.values.astype(f64)
        out["generalization_gap"] = [(-1.0, pk, cv), (1.0, vk, vv)]
    return out


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
    parts = [s.samples.get(name) for s in sums]
    if not parts or any(p is None for p in parts):
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


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "n/a"


def split_findings(runs: Sequence[Run], labels: Sequence[str] | None = None) -> list[Finding]:
    """Split checks over the runs of one experiment (content fingerprints in ``run.meta``).

    * ``experiment.split_changed`` (warning): the runs' validation sets differ
      (``val_fingerprint``); the message groups the runs by validation set.
    * ``experiment.split_overlap`` (error): run i's validation set holds samples
      that run j trained on and run i did not (``val_hashes`` ∩ ``train_hashes``):
      a model of run j evaluated on run i's split sees its own training data.
    * ``experiment.split_unknown`` (info): some runs carry no fingerprints, so
      the split cannot be checked for them.

    Raises
    ------
    ValueError
        If a stored hash field is malformed (the message names the key).
    """
    runs = list(runs)
    labels = list(labels) if labels is not None else [_label(r, i) for i, r in enumerate(runs)]
    out: list[Finding] = []
    if len(runs) < 2:
        return out
    have = [i for i, r in enumerate(runs) if r.meta.get("val_fingerprint")]
    lacking = [labels[i] for i in range(len(runs)) if i not in have]
    if lacking:
        out.append(Finding(
            "experiment.split_unknown", "info", "The split of some runs cannot be checked",
            f"Runs {', '.join(lacking)} carry no validation-set fingerprint, so losslens cannot tell whether they "
            "validated on the same samples as the others.",
            "Record runs with losslens.recording.fingerprint.split_fingerprints(train, val) merged into the "
            "run's metadata (the adapters do this when given the data sets).",
            data={"runs": lacking}))
    groups: dict[str, list[str]] = {}
    for i in have:
        groups.setdefault(str(runs[i].meta["val_fingerprint"]), []).append(labels[i])
    if len(groups) > 1:
        parts = "; ".join(f"set {j + 1} ({fpr[7:19]}…): {', '.join(names)}" for j, (fpr, names) in
                          enumerate(groups.items()))
        train_groups = {str(runs[i].meta.get("train_fingerprint")) for i in have}
        out.append(Finding(
            "experiment.split_changed", "warning", "The runs did not validate on the same samples",
            f"{len(groups)} different validation sets among {len(have)} runs: {parts}. "
            f"{'Their training sets differ too. ' if len(train_groups) > 1 else ''}"
            "Differences between these runs mix the seed's effect with the split's, and a model trained on one "
            "split has seen part of another run's validation set.",
            "Fix the split (split once with a fixed seed and save the indices, or seed the splitter separately from "
            "the training seed), then repeat the runs.",
            data={"groups": groups}))
    # Overlap: run i's validation samples that run j trained on (and run i did not).
    hashes = {}
    for i in have:
        v = fp.stored_hashes(runs[i].meta, "val")
        t = fp.stored_hashes(runs[i].meta, "train")
        hashes[i] = (v, t)
    pairs = []
    for i in have:
        v_i, t_i = hashes[i]
        if v_i is None:
            continue
        for j in have:
            if j == i:
                continue
            t_j = hashes[j][1]
            if t_j is None or runs[i].meta.get("val_fingerprint") == runs[j].meta.get("val_fingerprint") and \
                    runs[i].meta.get("train_fingerprint") == runs[j].meta.get("train_fingerprint"):
                continue
            found, checked, frac = fp.overlap(v_i, t_j, exclude=[t_i] if t_i is not None else [])
            if found:
                pairs.append({"validation_of": labels[i], "trained_on_by": labels[j], "found": found,
                              "checked": checked, "fraction": frac})
    if pairs:
        worst = max(pairs, key=lambda p: p["fraction"])
        out.append(Finding(
            "experiment.split_overlap", "error", "Training samples of one run are in another run's validation set",
            f"{len(pairs)} ordered pair(s) of runs overlap; the largest: {100 * worst['fraction']:.1f} % of the "
            f"validation samples of {worst['validation_of']} ({worst['found']} of {worst['checked']} checked) were "
            f"training samples of {worst['trained_on_by']}. A model or checkpoint from one run evaluated on another "
            "run's validation set is evaluated partly on its own training data.",
            "Use one fixed split for every run of the experiment (seed the split, or save it), and never evaluate "
            "a model on a validation set drawn with a different seed.",
            data={"pairs": pairs}))
    return out


def experiment_verdicts(runs: Sequence[Run], at: str = "last", level: float = LEVEL,
                        summaries: Sequence[RunSummary] | None = None) -> list[Finding]:
    """Findings over the runs of one experiment (module docstring).

    Parameters
    ----------
    runs : sequence of Run
        Runs of one configuration with different seeds (any number ≥ 1).
    at : str
        Epoch of the decomposition terms: ``"last"`` or ``"best"`` (:func:`summarize_run`).
    level : float
        Two-sided confidence level of the across-seed intervals.
    summaries : sequence of RunSummary, optional
        Precomputed :func:`summarize_run` results (same order as ``runs``).

    Returns
    -------
    list of Finding
        Codes in the ``experiment.`` family: ``too_few_runs``, ``regime``,
        ``regime_uncertain``, ``best_epoch``, ``decomposition``,
        ``term_uncertain``, ``finding_uncertain``, ``epochs_differ``,
        ``split_changed``, ``split_overlap``, ``split_unknown``.

    Raises
    ------
    ValueError
        If ``runs`` is empty or ``at`` is unknown.
    """
    runs = list(runs)
    if not runs:
        raise ValueError("experiment_verdicts(runs=...): no runs given")
    labels = [_label(r, i) for i, r in enumerate(runs)]
    sums = list(summaries) if summaries is not None else [summarize_run(r, at, lab) for r, lab in zip(runs, labels)]
    k = len(runs)
    out: list[Finding] = []
    if k < 2:
        out.append(Finding(
            "experiment.too_few_runs", "info", "One run is one sample: seed-to-seed variation is unknown",
            "Every verdict below is judged against this run's own measurement noise only; another seed can "
            "give a different curve, a different best epoch and even a different regime.",
            "Repeat the run with 3–5 (or more) seeds in the same experiment to see which verdicts hold."))

    # -- fit regime ------------------------------------------------------------------------
    per_seed = {s.label: s.regime for s in sums if s.regime}
    no_verdict = [s.label for s in sums if not s.regime]
    counts = Counter(per_seed.values())
    if counts:
        top, n_top = counts.most_common(1)[0]
        n_judged = len(per_seed)
        if len(counts) == 1:
            extra = (f" ({len(no_verdict)} run(s) without epochs have no verdict: {', '.join(no_verdict)})"
                     if no_verdict else "")
            out.append(Finding(
                "experiment.regime", "info", f"Every run: {_REGIME_WORDS.get(top, top)}"
                if n_judged > 1 else f"Fit regime of the only run: {_REGIME_WORDS.get(top, top)}",
                f"The fit-regime verdict {top!r} holds for all {n_judged} run(s) with a verdict{extra}.", "",
                epochs=(), data={"regime": top, "per_seed": per_seed, "n_runs": n_judged, "no_verdict": no_verdict}))
        else:
            tally = ", ".join(f"{_REGIME_WORDS.get(c, c)}: {n}" for c, n in counts.most_common())
            out.append(Finding(
                "experiment.regime_uncertain", "warning", "The fit regime depends on the seed",
                f"Across {n_judged} runs the per-seed verdicts differ ({tally}): per seed "
                + "; ".join(f"{lab}: {c}" for lab, c in per_seed.items())
                + f". The most common, {top!r}, holds in {n_top} of {n_judged}; no single-run verdict holds across "
                "seeds.",
                "Treat the regime as uncertain: add seeds, train for more epochs, or use a larger validation set "
                "before changing the configuration on the strength of one run.",
                data={"per_seed": per_seed, "counts": dict(counts), "most_common": top, "n_runs": n_judged,
                      "no_verdict": no_verdict}))

    # -- best epoch --------------------------------------------------------------------------
    best = [(s.best_epoch, s.best_val, s.best_val_se) for s in sums if s.best_epoch >= 0]
    if best:
        be = np.array([b[0] for b in best], dtype=np.float64)
        bv = combine_terms("best_val", [b[1] for b in best], [b[2] for b in best], level=level,
                           shared_se=shared_se(sums, "best_val") if len(best) == len(sums) else 0.0)
        mean_curve_best = -1
        try:
            from .bands import align

            al = align(runs, VALIDATION, "epoch")
            full = np.all(np.isfinite(al.values), axis=0)
            if full.any():
                m = al.values[:, full].mean(axis=0)
                mean_curve_best = int(al.epochs[full][int(np.argmin(m))])
        except ValueError:
            pass
        sd = float(be.std(ddof=1)) if be.size > 1 else math.nan
        spread = (f"spread across seeds: SD {sd:.2g} epochs, range {int(be.min())}–{int(be.max())}"
                  if be.size > 1 else "one run: spread unknown")
        ev = [Evidence("best epoch per run (lowest validation loss), mean over runs", float(be.mean()),
                       sd / math.sqrt(be.size) if be.size > 1 else math.nan, tuple(int(x) for x in be), "epoch"),
              Evidence("lowest validation loss per run (eval mode, end of epoch), mean over runs", bv.mean,
                       bv.se_mean, tuple(int(x) for x in be))]
        out.append(Finding(
            "experiment.best_epoch", "info",
            f"Best epoch {mean_curve_best if mean_curve_best >= 0 else int(np.median(be))} "
            f"(per run {int(be.min())}–{int(be.max())})" if be.size > 1 else f"Best epoch {int(be[0])}",
            f"Per run, the validation loss is lowest at epochs {', '.join(str(int(x)) for x in be)} "
            f"(mean {be.mean():.3g}, median {np.median(be):.3g}; {spread}); the mean curve over runs is lowest at "
            f"epoch {mean_curve_best}. The lowest validation loss is {_fmt(bv.mean)} ± {_fmt(bv.se_mean, 2)} "
            "(mean over runs ± its SE).",
            "Choose the stopping epoch from the mean curve or with early stopping; the spread across seeds says "
            "how much patience to allow." if be.size > 1 else "",
            ev, tuple(sorted({int(x) for x in be})),
            {"best_epochs": [int(x) for x in be], "best_epoch_mean": float(be.mean()), "best_epoch_sd": sd,
             "best_epoch_min": int(be.min()), "best_epoch_max": int(be.max()), "mean_curve_best_epoch":
             mean_curve_best, "best_val_mean": bv.mean, "best_val_se": bv.se_mean, "best_val_sd": bv.sd_between}))

    # -- decomposition terms -------------------------------------------------------------------
    summaries_t = term_summaries(sums, level)
    if summaries_t:
        parts = "; ".join(f"{t.name}: {_fmt(t.mean)} [{_fmt(t.lo, 3)}, {_fmt(t.hi, 3)}] ({t.status})"
                          for t in summaries_t.values())
        ats = sorted({s.at_epoch for s in sums if s.at_epoch >= 0})
        out.append(Finding(
            "experiment.decomposition", "info", "Gap decomposition across seeds",
            f"Mean over runs with its {int(100 * level)} % interval (t over seeds; within-run noise included): "
            f"{parts}. Epoch(s) {', '.join(map(str, ats))}.", "",
            [Evidence(f"{_LABELS.get(t.name, t.name)}: mean over {t.k} run(s)", t.mean, t.se_mean, tuple(ats))
             for t in summaries_t.values()], tuple(ats),
            {"terms": {n: t.to_dict() for n, t in summaries_t.items()}}))
        for t in summaries_t.values():
            if t.status != "uncertain":
                continue
            n_b = int(t.per_seed_beyond.sum())
            out.append(Finding(
                "experiment.term_uncertain", "warning", f"The {t.name} term is beyond noise in {n_b} of {t.k} runs "
                "but not across seeds",
                f"{_LABELS.get(t.name, t.name)}: per run "
                + ", ".join(f"{_fmt(v)} ± {_fmt(se, 2)}" for v, se in zip(t.values, t.ses))
                + f"; mean {_fmt(t.mean)} with interval [{_fmt(t.lo, 3)}, {_fmt(t.hi, 3)}] across seeds (between-run "
                f"SD {_fmt(t.sd_between, 2)}, within-run SE {_fmt(t.within_se, 2)}). A single run's verdict on this "
                "term does not hold across seeds.",
                "Do not act on this term from one run; add seeds or a larger probe/validation set.",
                [Evidence(_LABELS.get(t.name, t.name), float(v), float(se)) for v, se in zip(t.values, t.ses)],
                data={"term": t.name, **t.to_dict()}))

    # -- other per-run findings that hold for some seeds only ----------------------------------
    if k > 1:
        seen: Counter[str] = Counter()
        for s in sums:
            seen.update(set(s.codes))
        for code, n in sorted(seen.items()):
            if code.startswith("regime.") or code == "gap.decomposition" or n == k:
                continue
            with_ = [s.label for s in sums if code in s.codes]
            out.append(Finding(
                "experiment.finding_uncertain", "info", f"{code} holds for {n} of {k} runs only",
                f"The single-run finding {code!r} is reported for {', '.join(with_)} and not for the other "
                f"{k - n} run(s): it does not hold across seeds.", "",
                data={"code": code, "runs_with": with_, "n_with": n, "n_runs": k}))
        lengths = sorted({s.n_epochs for s in sums})
        if len(lengths) > 1:
            out.append(Finding(
                "experiment.epochs_differ", "info", "The runs have different numbers of epochs",
                f"Epoch counts: {', '.join(f'{s.label}: {s.n_epochs}' for s in sums)}. Bands past the shortest run "
                "average fewer runs, and the last-epoch terms come from different epochs.", "",
                data={"n_epochs": {s.label: s.n_epochs for s in sums}}))

    out += split_findings(runs, labels)
    return out


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
