"""Findings: the unit of a diagnosis and of a split audit (record layer: both produce them, neither owns them).

A :class:`Finding` has a stable ``code`` (``family.name``, never renamed once
released), a severity, a title a user understands, the evidence (numbers with
their standard errors and the epochs they come from) and a recommendation.
"Not enough evidence yet" is a valid finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Evidence", "Finding", "SEVERITIES", "Z_NOISE", "where"]

SEVERITIES = ("info", "warning", "error")

#: Number of standard errors beyond which a difference counts as "beyond noise".
#: Two standard errors is the usual ~95 % two-sided normal criterion (1.96 rounded up).
Z_NOISE = 2.0


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class Evidence:
    """One number behind a finding.

    Attributes
    ----------
    name : str
        What the number is, in words (mode, when measured, how averaged).
    value : float
        The number (loss per sample unless ``unit`` says otherwise).
    se : float
        Its standard error (NaN when not known).
    epochs : tuple of int
        Epochs (0-based) the number comes from.
    unit : str
        Unit of ``value``.
    """

    name: str
    value: float
    se: float = math.nan
    epochs: tuple[int, ...] = ()
    unit: str = "loss per sample"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": _num(float(self.value)), "se": _num(float(self.se)),
                "epochs": list(self.epochs), "unit": self.unit}


@dataclass
class Finding:
    """A diagnosis statement with its evidence.

    Attributes
    ----------
    code : str
        Stable identifier, ``family.name`` (e.g. ``"regime.overfitting"``).
    severity : str
        ``"info"``, ``"warning"`` or ``"error"``.
    title : str
        One line a user understands.
    message : str
        The explanation, with the numbers.
    recommendation : str
        What to change (may be empty when nothing needs changing).
    evidence : list of Evidence
        The numbers, with uncertainty and epochs.
    epochs : tuple of int
        The epochs the finding is about.
    data : dict
        Machine-readable extras (e.g. ``best_epoch``, ``patience``).
    """

    code: str
    severity: str
    title: str
    message: str = ""
    recommendation: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    epochs: tuple[int, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"finding {self.code!r}: severity {self.severity!r} not in {SEVERITIES}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "recommendation": self.recommendation,
            "evidence": [e.to_dict() for e in self.evidence],
            "epochs": list(self.epochs),
            "data": {k: _num(v) for k, v in self.data.items()},
        }


def where(run: Any, epoch: int) -> str:
    """An evaluation as the user knows it: ``"epoch 3"``, or for logs whose record epochs are evaluation
    intervals (Hugging Face ``trainer_state.json``) ``"step 1500 (2.4 epochs)"``: never "epoch 0" for a first
    evaluation at step 1000.

    Parameters
    ----------
    run : losslens.record.Run
    epoch : int
        The record's epoch index.
    """
    meta = getattr(run, "meta", {}) or {}
    spe = meta.get("steps_per_epoch")
    if meta.get("epoch_unit") == "evaluation interval" and isinstance(spe, (int, float)) and math.isfinite(spe):
        ep = next((e for e in run.epochs if e.index == epoch), None)
        if ep is not None and math.isfinite(ep.position):
            return f"step {int(round(ep.position * spe))} ({ep.position:.3g} epochs)"
    return f"epoch {epoch}"
