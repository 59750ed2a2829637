"""Findings of the split audit (stable codes, family ``split``).

==========================  ========  =======================================================
code                        severity  when
==========================  ========  =======================================================
split.exact_duplicates      error /   validation samples identical to a training sample
                            warning   (error from 1 % of the validation set)
split.near_duplicates       warning   validation samples within cleanlab's near-duplicate radius
split.group_leak            error     group keys (patient, subject, ...) in both splits
split.label_shift           warning   class shares differ (chi-square p < 0.01, Cramér's V ≥ 0.1)
split.feature_shift         warning   adversarial validation tells the splits apart
split.val_easier_samples    warning   validation per-sample losses below the probe set's
                                      (95 % bootstrap interval below 0)
split.clean                 info      none of the above
==========================  ========  =======================================================

``data`` of every finding is JSON-safe. ``split.val_easier_samples`` lists in
``data["causes"]`` the codes of the other split findings present (leaks, shifts),
so the diagnosis' ``gap.val_easier`` can cite them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..findings import Evidence, Finding

if TYPE_CHECKING:  # pragma: no cover
    from .core import AuditResult

__all__ = ["split_findings", "exact_duplicates_finding", "CODES"]

CODES = ("split.exact_duplicates", "split.near_duplicates", "split.group_leak", "split.label_shift",
         "split.feature_shift", "split.val_easier_samples", "split.clean")

#: Share of the validation set from which exact duplicates are an error, not a warning. A severity
#: cut, not a statistical threshold: any leak is reported; from 1 % on it is large enough to matter
#: for model selection (leaked samples sit near the training loss).
EXACT_ERROR_FRACTION = 0.01


def _leak_evidence(res: "AuditResult") -> list[Evidence]:
    d = res.difficulty
    if d is None or d.leaked_vs_clean is None:
        return []
    c = d.leaked_vs_clean
    return [Evidence("validation loss, leaked − clean samples (eval mode, per-sample bootstrap)", c.diff, c.se,
                     d.epochs),
            Evidence("validation loss without the leaked samples", d.val_loss_clean, math.nan, d.epochs)]


def exact_duplicates_finding(n_val_duplicated: int, n_val: int, n_pairs: int, pairs: list, val_indices: list,
                             extra_evidence: list[Evidence] | None = None, when: str = "") -> Finding:
    """``split.exact_duplicates``: the one builder, for the audit and for the check the adapters run when
    recording starts (``run.meta["split_exact_duplicates"]``, :func:`losslens.recording.input_duplicates`).

    Parameters
    ----------
    n_val_duplicated, n_val, n_pairs : int
        Validation samples with an identical training sample, validation-set size, identical pairs.
    pairs : list of [train_index, val_index]
        Up to 100 are kept in ``data["pairs"]``.
    val_indices : list of int
        The duplicated validation samples (as many as known).
    extra_evidence : list of Evidence, optional
        E.g. the validation loss of the leaked vs the clean samples (audit with per-sample losses).
    when : str
        Where the check ran, for the message (e.g. " when recording started").

    Severity: an error from :data:`EXACT_ERROR_FRACTION` of the validation set, a warning below.
    """
    frac = n_val_duplicated / max(n_val, 1)
    shown = ", ".join(f"{a}↔{b}" for a, b in pairs[:5]) + (", …" if len(pairs) > 5 else "")
    return Finding(
        "split.exact_duplicates", "error" if frac >= EXACT_ERROR_FRACTION else "warning",
        f"{n_val_duplicated} validation samples also occur in the training set",
        f"{n_val_duplicated} of {n_val} validation samples ({100 * frac:.1f} %) are identical to a training sample "
        f"after normalization ({n_pairs} pairs; content hashes verified by comparison{when}; training↔validation "
        f"index pairs: {shown}). The model is evaluated on data it was trained on, which lowers the validation "
        "loss: it measures memorization, not generalization.",
        "Remove these samples from the validation set (indices in data['val_indices']) or deduplicate the "
        "data before splitting; `losslens audit` also finds near duplicates and shift.",
        [Evidence("validation samples with an identical training sample", n_val_duplicated, unit="samples"),
         Evidence("fraction of the validation set", frac, unit="fraction")] + list(extra_evidence or []),
        data={"n_val_duplicated": int(n_val_duplicated), "fraction_val": frac, "n_pairs": int(n_pairs),
              "val_indices": list(val_indices), "pairs": list(pairs[:100])})


def split_findings(res: "AuditResult") -> list[Finding]:
    """Findings of an :class:`~losslens.audit.AuditResult` (see the module table).

    Parameters
    ----------
    res : AuditResult

    Returns
    -------
    list of Finding
        Leaks first (exact, near, groups), then shifts, then difficulty; a
        single ``split.clean`` info finding when nothing is flagged.
    """
    out: list[Finding] = []
    e = res.exact
    if e.n_val_duplicated:
        out.append(exact_duplicates_finding(e.n_val_duplicated, e.n_val, e.n_pairs, e.pairs[:100].tolist(),
                                            e.val_indices[:1000].tolist(), _leak_evidence(res)))
    nd = res.near
    if nd is not None and nd.n_val_near:
        frac = nd.n_val_near / max(nd.n_val, 1)
        out.append(Finding(
            "split.near_duplicates", "warning",
            f"{nd.n_val_near} validation samples are near duplicates of training samples",
            f"{nd.n_val_near} of {nd.n_val} validation samples ({100 * frac:.1f} %), not identical, lie within "
            f"distance {nd.radius:.3g} of a training sample in {nd.feature_space}: {nd.threshold:g} × the median "
            f"distance between a training sample and its nearest training neighbour ({nd.median_nn_train:.3g}), "
            "cleanlab's near-duplicate rule.",
            "Look at the pairs (the 'Split audit' section shows them side by side). If they are the same item "
            "(re-encoded, resized, shifted, lightly edited), drop them from validation or split by a group key "
            "(e.g. scikit-learn GroupShuffleSplit).",
            [Evidence("validation samples with a near duplicate in training", nd.n_val_near, unit="samples"),
             Evidence("near-duplicate radius", nd.radius, unit=f"{nd.metric} distance"),
             Evidence("median nearest-neighbour distance within training", nd.median_nn_train,
                      unit=f"{nd.metric} distance")] + ([] if e.n_val_duplicated else _leak_evidence(res)),
            data={"n_val_near": nd.n_val_near, "fraction_val": frac, "radius": nd.radius,
                  "val_indices": nd.val_indices[:1000].tolist(),
                  "pairs": nd.pairs[~nd.pair_exact][:100].tolist()}))
    g = res.groups
    if g is not None and g.n_shared:
        out.append(Finding(
            "split.group_leak", "error", f"{g.n_shared} groups occur in both the training and validation sets",
            f"{g.n_shared} of {g.n_val_groups} validation groups also occur in training; {g.n_val_samples} of "
            f"{res.n_val} validation samples belong to them (and {g.n_train_samples} training samples). Samples of "
            "one group (patient, subject, session) are correlated, so the validation loss is optimistic.",
            "Split by group: scikit-learn GroupShuffleSplit or GroupKFold with the group key, so that each group "
            "is entirely in one split.",
            [Evidence("groups in both splits", g.n_shared, unit="groups"),
             Evidence("validation samples in shared groups", g.n_val_samples, unit="samples")],
            data={"n_shared": g.n_shared, "shared": g.shared[:100], "n_val_samples": g.n_val_samples}))
    ls = res.label_shift
    if ls is not None and ls.flagged:
        if ls.kind == "classes":
            changes = ", ".join(f"class {c}: {100 * d:+.1f} points" for c, d in ls.largest[:3])
            msg = (f"Class shares differ between training and validation (chi-square {ls.statistic:.3g} with "
                   f"{ls.dof} degrees of freedom, p = {ls.p_value:.2g}; Cramér's V = {ls.effect:.3f}). Largest "
                   f"changes of the validation share: {changes}.")
            ev = [Evidence("Cramér's V (split × class)", ls.effect, unit="Cramér's V"),
                  Evidence("chi-square p-value", ls.p_value, unit="p-value")]
        else:
            msg = (f"The target distribution differs (two-sample KS D = {ls.effect:.3f}, p = {ls.p_value:.2g}).")
            ev = [Evidence("KS statistic of the targets", ls.effect, unit="KS D"),
                  Evidence("KS p-value", ls.p_value, unit="p-value")]
        out.append(Finding(
            "split.label_shift", "warning", "The validation set has a different label distribution", msg,
            "Use a stratified split (scikit-learn train_test_split(..., stratify=y)); if the shift is real "
            "(deployment data differ), compare per-class losses rather than the mean.",
            ev, data={"p_value": ls.p_value, "effect": ls.effect, "largest": [list(x) for x in ls.largest]}))
    fs = res.feature_shift
    if fs is not None and fs.flagged:
        top = ", ".join(f"{f['name']} (train mean {f['train_mean']:.3g}, val mean {f['val_mean']:.3g})"
                        for f in fs.top_features[:3])
        out.append(Finding(
            "split.feature_shift", "warning", "A classifier can tell validation inputs from training inputs",
            f"Adversarial validation: a gradient-boosted classifier separates validation from training rows with "
            f"cross-validated ROC AUC {fs.auc:.3f} (0.5 = indistinguishable; permutation null of "
            f"{fs.n_permutations} shuffles: p = {fs.p_permutation:.2g}, normal fit p = {fs.p_normal:.2g}) on "
            f"{fs.features}. Most separating: {top}.",
            "Check how the validation set was collected (time, source, preprocessing); draw both splits at random "
            "from the same pool, or, if the shift is real, weight or stratify training to match it.",
            [Evidence("adversarial-validation ROC AUC (cross-validated)", fs.auc, unit="ROC AUC"),
             Evidence("permutation p-value", fs.p_permutation, unit="p-value")],
            data={"auc": fs.auc, "p_permutation": fs.p_permutation, "p_normal": fs.p_normal,
                  "top_features": [f["name"] for f in fs.top_features]}))
    d = res.difficulty
    if d is not None and d.val_easier:
        c = d.val_vs_probe
        causes = [f.code for f in out]
        msg = (f"Per sample, the validation loss is {c.diff:+.4g} (95 % bootstrap interval [{c.ci_low:+.4g}, "
               f"{c.ci_high:+.4g}]) relative to the eval-mode loss on the probe set ({d.source}; KS D = "
               f"{c.ks_statistic:.3f}, p = {c.ks_p:.2g}).")
        if d.leaked_vs_clean is not None:
            lc = d.leaked_vs_clean
            msg += (f" The {d.n_leaked} leaked validation samples have mean loss {lc.mean_a:.4g} against "
                    f"{lc.mean_b:.4g} for the clean ones; without them the validation loss would be "
                    f"{d.val_loss_clean:.4g} instead of {d.val_loss:.4g}.")
        if causes:
            msg += " Found in the split: " + ", ".join(causes) + "."
            rec = "Fix the leaks or shifts listed above, then compare the losses again."
        else:
            rec = ("No leak or shift was found: the validation samples are easier. Check label noise or corrupted "
                   "samples in training, and how the validation set was drawn; a larger random validation set "
                   "gives a more faithful estimate.")
        out.append(Finding(
            "split.val_easier_samples", "warning", "Validation samples have lower losses than training samples",
            msg, rec,
            [Evidence("validation − probe loss (eval mode, per sample)", c.diff, c.se, d.epochs)]
            + _leak_evidence(res),
            epochs=d.epochs,
            data={"diff": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "ks_p": c.ks_p, "causes": causes,
                  "val_loss_clean": d.val_loss_clean}))
    if not out:
        checked = ["exact duplicates"]
        ev = [Evidence("validation samples with an identical training sample", 0, unit="samples")]
        if nd is not None:
            checked.append("near duplicates")
            ev.append(Evidence("validation samples with a near duplicate", 0, unit="samples"))
        if g is not None:
            checked.append("group keys")
        if ls is not None:
            checked.append("label shares")
            ev.append(Evidence("Cramér's V (split × class)" if ls.kind == "classes" else "KS D of the targets",
                               ls.effect, unit="Cramér's V" if ls.kind == "classes" else "KS D"))
        if fs is not None:
            checked.append("input shift")
            ev.append(Evidence("adversarial-validation ROC AUC (cross-validated)", fs.auc, unit="ROC AUC"))
        if d is not None and d.val_vs_probe is not None:
            checked.append("per-sample difficulty")
            ev.append(Evidence("validation − probe loss (eval mode, per sample)", d.val_vs_probe.diff,
                               d.val_vs_probe.se, d.epochs))
        skipped = [n for n in res.notes]
        out.append(Finding(
            "split.clean", "info", "The split looks clean",
            "Checked: " + ", ".join(checked) + ". Nothing was flagged."
            + (" Not checked: " + "; ".join(skipped) + "." if skipped else ""),
            "", ev, data={"checked": checked}))
    return out
