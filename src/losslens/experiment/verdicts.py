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

The statistics are in :mod:`.terms` (combining within-run and between-run noise) and :mod:`.summary`
(one run summarized).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from ..diagnose import Evidence, Finding
from ..diagnose.gap import TERM_LABELS
from ..record import VALIDATION, Run
from ..recording import fingerprint as fp
from .summary import RunSummary, _label, summarize_run
from .terms import LEVEL, TERMS, TermSummary, combine_terms, shared_se, term_summaries

__all__ = ["RunSummary", "TermSummary", "summarize_run", "combine_terms", "experiment_verdicts",
           "split_findings", "term_summaries", "shared_se", "LEVEL", "TERMS"]

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
    # fingerprints of different content-hash versions are not comparable: the newest version's runs are checked
    newest = max((fp.content_hash_version(runs[i].meta) for i in have), default=fp.CONTENT_HASH_VERSION)
    older = [labels[i] for i in have if fp.content_hash_version(runs[i].meta) != newest]
    have = [i for i in have if fp.content_hash_version(runs[i].meta) == newest]
    lacking = [labels[i] for i in range(len(runs)) if i not in have and labels[i] not in older]
    if lacking or older:
        why = []
        if lacking:
            why.append(f"Runs {', '.join(lacking)} carry no validation-set fingerprint, so losslens cannot tell "
                       "whether they validated on the same samples as the others.")
        if older:
            why.append(f"Runs {', '.join(older)} were recorded by an older losslens whose sample hashes differ "
                       "from the others', so their split is not compared with the others'.")
        out.append(Finding(
            "experiment.split_unknown", "info", "The split of some runs cannot be checked", " ".join(why),
            "Record runs with losslens.recording.fingerprint.split_fingerprints(train, val) merged into the "
            "run's metadata (the adapters do this when given the data sets), with this version of losslens.",
            data={"runs": lacking + older, "older_content_hash": older}))
    groups: dict[str, list[str]] = {}
    for i in have:
        groups.setdefault(str(runs[i].info.split.val_fingerprint), []).append(labels[i])
    if len(groups) > 1:
        parts = "; ".join(f"set {j + 1} ({fpr[7:19]}…): {', '.join(names)}" for j, (fpr, names) in
                          enumerate(groups.items()))
        train_groups = {str(runs[i].info.split.train_fingerprint) for i in have}
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
            if t_j is None or runs[i].info.split.val_fingerprint == runs[j].info.split.val_fingerprint and \
                    runs[i].info.split.train_fingerprint == runs[j].info.split.train_fingerprint:
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


