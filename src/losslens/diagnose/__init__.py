"""Diagnosis: pure functions from a :class:`~losslens.record.Run` to findings.

One module per family: :mod:`.gap` (the gap decomposition), :mod:`.regime`
(under/over/good fit), :mod:`.stability` (non-finite losses, divergence).
No deep-learning framework is imported.

>>> from losslens.diagnose import diagnose          # doctest: +SKIP
>>> result = diagnose(run)
>>> [f.code for f in result.findings]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..findings import Z_NOISE, Evidence, Finding
from ..record import Run, _jsonable
from .gap import EpochDecomposition, Term, decompose, gap_findings
from .regime import label_noise_findings, regime_findings
from .stability import stability_findings
from .timing import with_end_of_epoch_estimates
from .verdict import VERDICT_CODES, Verdict, headline

__all__ = ["Diagnosis", "diagnose", "decompose", "headline", "Verdict", "VERDICT_CODES", "Finding", "Evidence",
           "EpochDecomposition", "Term", "Z_NOISE"]


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`.

    Attributes
    ----------
    run : Run
        The diagnosed run.
    findings : list of Finding
        Ordered: stability first, then fit regime, then the gap.
    decomposition : list of EpochDecomposition
        Per-epoch gap decomposition (epochs with a validation loss).
    verdict : Verdict
        The one headline verdict (:func:`~losslens.diagnose.verdict.headline`).
    """

    run: Run
    findings: list[Finding] = field(default_factory=list)
    decomposition: list[EpochDecomposition] = field(default_factory=list)
    verdict: Verdict = field(default_factory=lambda: Verdict("insufficient", None, "low", None, ""))

    def codes(self) -> list[str]:
        """The finding codes, in order."""
        return [f.code for f in self.findings]

    def get(self, code: str) -> Finding | None:
        """The first finding with ``code``, or None."""
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the run without per-sample arrays)."""
        return _jsonable({
            "verdict": self.verdict.to_dict(),
            "run": self.run.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "decomposition": [
                {"epoch": d.epoch, "reported": d.reported, "validation": d.validation,
                 "terms": {n: {"value": t.value, "se": t.se, "status": t.status} for n, t in d.terms.items()}}
                for d in self.decomposition
            ],
        })


def _recorded_duplicates(run: Run) -> list[Finding]:
    """``split.exact_duplicates`` from the check the adapters run at the start of training.

    The adapters store :meth:`losslens.audit.ExactDuplicates.to_dict` in
    ``run.meta["split_exact_duplicates"]``; a clean split adds nothing.
    """
    d = run.meta.get("split_exact_duplicates")
    if not isinstance(d, dict) or not d.get("n_val_duplicated"):
        return []
    n, n_val = int(d["n_val_duplicated"]), int(d.get("n_val") or 0)
    pairs = d.get("pairs") or []
    shown = ", ".join(f"{a}↔{b}" for a, b in pairs[:5])
    return [Finding(
        "split.exact_duplicates", "warning",
        f"{n} validation samples are exact copies of training samples",
        f"{n} of {n_val} validation inputs ({100 * n / max(n_val, 1):.1f} %) occur exactly in the training set "
        f"(found at the start of training by hashing both splits; training↔validation index pairs: {shown}"
        f"{', …' if len(pairs) > 5 else ''}). Their validation loss measures memorization, not generalization.",
        "Remove the copies from the validation set (or deduplicate before splitting), then compare the validation "
        "loss on the clean part; `losslens audit` also finds near duplicates and shift.",
        [Evidence("validation samples with an exact training copy", float(n), unit="samples"),
         Evidence("fraction of the validation set", n / max(n_val, 1), unit="fraction")],
        (), {"n_val_duplicated": n, "pairs": pairs[:100]})]


def diagnose(run: Run, audit: Any = None) -> Diagnosis:
    """Diagnose a run.

    Parameters
    ----------
    run : Run
        A recorded or imported run; may be empty or contain non-finite losses
        (reported as findings, never raised).
    audit : losslens.audit.AuditResult, optional
        A split audit of the run's training and validation data. Its findings
        are appended, and a ``gap.val_easier`` finding cites them (duplicates,
        group leaks, shift, per-sample difficulty). Without it, the exact-duplicate
        check the adapters ran at the start of training
        (``run.meta["split_exact_duplicates"]``) is used the same way.

    Returns
    -------
    Diagnosis
        Its ``run`` is ``run``, or for a run without probe passes (an imported log) a copy with the end-of-epoch
        training-loss estimates added (:func:`~losslens.diagnose.timing.with_end_of_epoch_estimates`).
    """
    run = with_end_of_epoch_estimates(run)
    dec = decompose(run)
    stab = stability_findings(run)
    diverged = any(f.code == "stability.divergence" or (f.code == "stability.non_finite" and
                                                         "validation" not in str(f.data.get("what", "")))
                   for f in stab)
    # no fit-regime verdict on a diverged run: its numbers after the divergence say nothing about fit
    regime = [] if diverged and run.status != "imported" else regime_findings(run)
    findings = stab + regime + label_noise_findings(run) + gap_findings(run, dec)
    split = list(audit.findings()) if audit is not None else _recorded_duplicates(run)
    if audit is not None or split:
        easier = next((f for f in findings if f.code == "gap.val_easier"), None)
        if easier is not None:
            causes = [f for f in split if f.severity != "info"]
            if causes:
                easier.message += " The split audit found: " + "; ".join(f.title for f in causes) + "."
                easier.data["audit_codes"] = [f.code for f in causes]
            else:
                easier.message += (" The split audit found no duplicates, leaks or shift: look at per-sample "
                                   "difficulty and label noise in the training set.")
                easier.data["audit_codes"] = []
    findings += split + _measurement_errors(run)
    return Diagnosis(run, findings, dec, headline(findings, run))


def _measurement_errors(run: Run) -> list[Finding]:
    """``recording.measurement_failed``: epochs whose probe/validation passes failed (recorded without them)."""
    errs = run.meta.get("measurement_errors")
    if not isinstance(errs, list) or not errs:
        return []
    eps = [int(e.get("epoch", -1)) for e in errs if isinstance(e, dict)]
    first = errs[0].get("error", "") if isinstance(errs[0], dict) else str(errs[0])
    return [Finding(
        "recording.measurement_failed", "warning",
        f"The probe/validation passes failed in {len(eps)} epoch(s): those epochs have no measurements",
        f"Epochs {', '.join(map(str, eps[:10]))}{', …' if len(eps) > 10 else ''} were recorded with their step "
        f"losses only; training went on. First error: {first}",
        "Check that every probe and validation sample can be read and has the target type the loss expects "
        "(the error above names it).", [], tuple(eps[:10]), {"epochs": eps, "errors": errs[:20]})]
