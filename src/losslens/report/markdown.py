"""Reports as GitHub-flavoured Markdown (``--format markdown``), fit for ``$GITHUB_STEP_SUMMARY`` or a pull
request comment: the verdict first, the findings as a table, the gap decomposition of the last epoch with its
standard errors. Numbers go through the one formatter of :mod:`._model`; user strings are escaped so a run named
``a|b`` or ``<script>`` cannot break the table or inject HTML."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from ._model import fmt, fmt_pm

if TYPE_CHECKING:  # pragma: no cover
    from . import Report

__all__ = ["escape", "report_markdown", "findings_markdown"]

_SEVERITY = {"error": "🔴 error", "warning": "🟠 warning", "info": "🔵 info"}


def escape(text: Any) -> str:
    """Text safe in a Markdown table cell: pipes, backslashes, HTML brackets and line breaks neutralised."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    s = s.replace("`", "\\`").replace("*", "\\*").replace("_", "\\_")
    return " ".join(s.split())


def findings_markdown(findings: Iterable[Any]) -> str:
    """A table of findings (severity, title, code), most severe first; ``""`` when there are none."""
    order = {"error": 0, "warning": 1, "info": 2}
    rows = sorted(findings, key=lambda f: order.get(f.severity, 3))
    if not rows:
        return ""
    out = ["| severity | finding | code |", "| --- | --- | --- |"]
    out += [f"| {_SEVERITY.get(f.severity, f.severity)} | {escape(f.title)} | `{f.code}` |" for f in rows]
    return "\n".join(out) + "\n"


def report_markdown(report: "Report", level: int = 3) -> str:
    """The report of one run as Markdown (headings at ``level``)."""
    v = report.diagnosis.verdict
    h = "#" * level
    lines = [f"{h} losslens · {escape(report.run.name)}", "",
             f"**{v.code.replace('_', ' ').upper()}** · {escape(v.sentence)}"
             + (f" {escape(v.answer)}" if v.answer else ""), ""]
    table = findings_markdown(report.findings)
    if table:
        lines += [table]
    dec = [d for d in report.diagnosis.decomposition if math.isfinite(d.reported - d.validation)]
    if dec:
        d = dec[-1]
        names = list(d.terms)
        lines += [f"Gap decomposition at epoch {d.epoch} (loss per sample; reported − validation = the sum of the "
                  "terms, ± one standard error):", "",
                  "| R + Ω | V | R + Ω − V | " + " | ".join(("− " if d.terms[n].sign < 0 else "") + escape(n)
                                                          for n in names) + " |",
                  "| ---: " * (3 + len(names)) + "|",
                  f"| {fmt(d.reported)} | {fmt(d.validation)} | {fmt(d.reported - d.validation)} | "
                  + " | ".join(fmt_pm(d.terms[n].value, d.terms[n].se, signed=True) + _status(d.terms[n].status)
                               for n in names) + " |", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _status(status: str) -> str:
    return "" if status == "measured" else f" ({status})"
