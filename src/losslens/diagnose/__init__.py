"""Diagnosis: pure functions from a :class:`~losslens.record.Run` to findings.

One module per family: :mod:`.gap` (the gap decomposition), :mod:`.regime`
(under/over/good fit), :mod:`.stability` (non-finite losses, divergence), :mod:`.split`; each family is a check
registered by name (:mod:`.registry`, the built-in ones in :mod:`.checks`) and :func:`diagnose` runs the
registry. No deep-learning framework is imported.

>>> from losslens.diagnose import diagnose          # doctest: +SKIP
>>> result = diagnose(run)
>>> [f.code for f in result.findings]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..findings import Z_NOISE, Evidence, Finding
from ..record import Run, _jsonable
from .gap import EpochDecomposition, Term, decompose
from .registry import Check, register, registered_checks, run_checks
from .timing import with_end_of_epoch_estimates
from .verdict import VERDICT_CODES, Verdict, headline

__all__ = ["Diagnosis", "diagnose", "decompose", "headline", "Verdict", "VERDICT_CODES", "Finding", "Evidence",
           "EpochDecomposition", "Term", "Z_NOISE", "Check", "register", "registered_checks"]


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
                 "terms": {n: {"value": t.value, "se": t.se, "status": t.status, "sign": t.sign}
                           for n, t in d.terms.items()}}
                for d in self.decomposition
            ],
        })


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
    # Floating-point warnings (a 1e308 loss overflowing a weighted mean) are not for the user: a non-finite
    # result is what the checks look at (stability.non_finite, missing estimates), and they say it in words.
    with np.errstate(all="ignore"):
        run = with_end_of_epoch_estimates(run)
        dec = decompose(run)
        findings = run_checks(run, dec, audit)
        return Diagnosis(run, findings, dec, headline(findings, run))
