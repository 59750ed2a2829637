"""The one headline verdict of a run, read off its findings.

A user reads a diagnosis "stability first, then the fit regime"; the headline
does the same and names the finding that decided it. Its vocabulary is the one
of the expert labels in ``shared/real-logs/LABELS.md``:

============== ==============================================================
code           meaning
============== ==============================================================
overfitting    the validation loss reached a minimum and then rose beyond its
               own noise for a sustained stretch (``best`` says where)
converged      the loss stopped improving materially and does not rise in a
               sustained way (plateau, good fit, and the under-fitting
               plateaus: capacity, over-regularization)
still_improving the loss is still falling materially at the end
not_learning   the loss barely moves over the whole run, or stays at chance
unstable       non-finite losses, divergence, or an erratic loss
degenerate     a loss exactly constant or 0 over a long stretch, or a
               validation loss of ~0 (a leak or a masking bug)
insufficient   too few evaluations to judge
============== ==============================================================

Without a validation loss the training loss is judged the same way (the
regime findings say which curve they judged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..findings import Finding

__all__ = ["Verdict", "VERDICT_CODES", "FINDING_VERDICT", "headline"]

#: The headline vocabulary (LABELS.md), in the order a user reads a run.
VERDICT_CODES = ("unstable", "degenerate", "not_learning", "insufficient", "overfitting", "still_improving",
                 "converged")

#: Finding code -> headline verdict code. Stability and degenerate findings come first when present.
FINDING_VERDICT: dict[str, str] = {
    "stability.non_finite": "unstable",
    "stability.divergence": "unstable",
    "stability.erratic": "unstable",
    "regime.degenerate": "degenerate",
    "regime.not_learning": "not_learning",
    "regime.too_few_epochs": "insufficient",
    "regime.no_validation": "insufficient",
    "regime.surrogate_loss": "insufficient",
    "regime.overfitting": "overfitting",
    "regime.still_improving": "still_improving",
    "regime.good_fit": "converged",
    "regime.plateau": "converged",
    "regime.converged": "converged",
    "regime.underfit_capacity": "converged",
    "regime.over_regularized": "converged",
}

_PRIORITY = {c: i for i, c in enumerate(VERDICT_CODES)}

_SENTENCE = {
    "unstable": "Unstable",
    "degenerate": "Degenerate log",
    "not_learning": "Not learning",
    "insufficient": "Too few evaluations to judge",
    "overfitting": "Overfitting",
    "still_improving": "Still improving",
    "converged": "Converged",
}


@dataclass
class Verdict:
    """The headline verdict of a run.

    Attributes
    ----------
    code : str
        One of :data:`VERDICT_CODES`.
    best : dict or None
        For ``overfitting``: ``{"epoch": int, "step": int or None, "position": float}``, the
        evaluation with the lowest validation loss (epoch index as recorded, 0-based; the global
        optimizer step where the log has one; position in fractional epochs). None otherwise.
    confidence : str
        ``"high"`` when the deciding finding is beyond noise by a wide margin (or a hard fact such as a
        NaN), ``"medium"`` otherwise, ``"low"`` for judgements on a few points.
    finding : str or None
        Code of the finding that decided the verdict.
    sentence : str
        One sentence with the key number, for the top of every report.
    answer : str
        A second sentence answering the question users bring (:func:`answer`): why validation is below training,
        or when to stop; ``""`` when the findings answer neither.
    """

    code: str
    best: dict[str, Any] | None
    confidence: str
    finding: str | None
    sentence: str
    answer: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"code", "best", "confidence", "finding", "sentence", "answer"}`` (JSON-safe)."""
        return {"code": self.code, "best": self.best, "confidence": self.confidence, "finding": self.finding,
                "sentence": self.sentence, "answer": self.answer}


def headline(findings: list[Finding], run: Any = None) -> Verdict:
    """The headline verdict from a run's findings.

    Parameters
    ----------
    findings : list of Finding
        The findings of :func:`losslens.diagnose.diagnose` (any order).
    run : losslens.record.Run, optional
        Used to give the best evaluation's global step and position.

    Returns
    -------
    Verdict
        The verdict of the most urgent mapped finding (:data:`FINDING_VERDICT`,
        ordered by :data:`VERDICT_CODES`); ``insufficient`` when no finding maps.
    """
    mapped = [(f, FINDING_VERDICT[f.code]) for f in findings if f.code in FINDING_VERDICT]
    if not mapped:
        return Verdict("insufficient", None, "low", None, "Too few evaluations to judge the run.",
                       answer(findings))
    f, code = min(mapped, key=lambda fc: _PRIORITY[fc[1]])
    best = None
    if code == "overfitting":
        e = f.data.get("best_epoch")
        best = {"epoch": e, "step": f.data.get("best_step"), "position": f.data.get("best_position")}
        if run is not None and e is not None:
            ep = next((x for x in run.epochs if x.index == e), None)
            if ep is not None:
                best["position"] = float(ep.position)
                if best["step"] is None and ep.metrics.get("global_step") is not None:
                    best["step"] = int(ep.metrics["global_step"])
    confidence = str(f.data.get("confidence") or ("high" if f.severity == "error" else "medium"))
    if code == "insufficient":
        confidence = "low"
    first = _first_sentence(f.message) or f.title
    sentence = f"{_SENTENCE[code]}. {first}" if first else _SENTENCE[code] + "."
    if not sentence.endswith("."):
        sentence += "."
    return Verdict(code, best, confidence, f.code, sentence, answer(findings))


def answer(findings: list[Finding]) -> str:
    """The sentence after the verdict: the answer to "why is validation below training?" when the run shows it
    (its largest measured cause, or the tie), else to "when should I stop?" (the last material improvement and
    the training after it); ``""`` when neither is known. Numbers are those of the findings it cites."""
    from .gap import TERM_WORDS

    by = {f.code: f for f in findings}
    f = by.get("gap.val_below_train")
    last = by.get("gap.decomposition")
    at_end = f is not None and (last is None or not last.epochs or f.data.get("epoch") == last.epochs[-1])
    if f is not None and f.data.get("causes") and at_end:   # the question is asked of the end of the run
        tie = f.data.get("tie") or []
        names = tie if len(tie) > 1 else f.data["causes"][:1]
        what = " and ".join(TERM_WORDS.get(n, n) for n in names)
        ev = f.evidence[0] if f.evidence else None
        num = ""
        if ev is not None and len(names) == 1:
            se = f" ± {ev.se:.2g}" if ev.se is not None and math.isfinite(ev.se) and ev.se > 0 else ""
            num = f" ({ev.value:+.3g}{se} loss per sample)"
        return f"Validation is below training at epoch {f.data.get('epoch')} mainly because of {what}{num}."
    f = by.get("gap.val_easier")
    if f is not None:
        return "With the same weights, validation is easier than the training probe beyond noise: audit the split."
    f = by.get("regime.noise_band")
    if f is not None and f.data.get("last_material_improvement") is not None:
        after = f.data.get("epochs_after_last_improvement")
        tail = f"; {after:.3g} epochs came after it" if isinstance(after, (int, float)) and after > 0 else ""
        return f"When to stop: the last material improvement was at {f.title.split(' at ', 1)[-1]}{tail}."
    return ""


def _first_sentence(text: str) -> str:
    """The first sentence of a message (up to ". " followed by a capital letter), without the final period."""
    import re

    text = (text or "").strip()
    m = re.search(r"\.\s+(?=[A-Z])", text)
    return (text[:m.start()] if m else text).rstrip(".")
