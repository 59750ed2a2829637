"""The split findings a diagnosis lists: a split audit's, or the check the adapters ran when recording started.

``split.exact_duplicates`` has one builder (:func:`losslens.audit.findings.exact_duplicates_finding`) for both
sources, with one severity rule.
"""

from __future__ import annotations

from typing import Any

from ..findings import Finding
from ..record import Run

__all__ = ["split_findings_of"]


def split_findings_of(run: Run, audit: Any = None) -> list[Finding]:
    """``audit.findings()`` when a split audit is given; otherwise ``split.exact_duplicates`` from
    ``run.meta["split_exact_duplicates"]`` (the adapters' check at the start of training; a clean split, a
    check that could not run, or no check adds nothing)."""
    if audit is not None:
        return list(audit.findings())
    d = run.info.split.exact_duplicates
    if not isinstance(d, dict) or not d.get("n_val_duplicated"):
        return []
    from ..audit.findings import exact_duplicates_finding  # here: the audit package imports pandas (0.3 s)

    pairs = [list(p) for p in (d.get("pairs") or [])]
    return [exact_duplicates_finding(int(d["n_val_duplicated"]), int(d.get("n_val") or 0),
                                     int(d.get("n_pairs") or len(pairs)), pairs,
                                     sorted({int(p[1]) for p in pairs}), when=" when recording started")]
