"""The terminal summary of a report (rich).

:func:`render` returns rich renderables; :func:`print_report` prints them and
:func:`to_text` returns them as plain text (no colour codes). User strings
(run name, metric names, messages) are passed as :class:`rich.text.Text`,
never parsed as console markup, so a run called ``[bold]x`` prints literally.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..record import MEASUREMENT_KINDS, loss_unit
from ._model import (
    QUANTITY_LABELS,
    SEVERITY_STYLE,
    STATUS_STYLE,
    SYMBOLS,
    epochs_text,
    fmt,
    fmt_pm,
    not_finished,
    run_facts,
)

if TYPE_CHECKING:  # pragma: no cover
    from . import Report

__all__ = ["render", "print_report", "to_text"]

_ORDER = list(MEASUREMENT_KINDS)


def _term_labels() -> dict[str, str]:
    from ..diagnose.gap import TERM_LABELS

    return TERM_LABELS


def _header(report: "Report") -> RenderableType:
    run = report.run
    facts = run_facts(run)
    t = Text()
    t.append(run.name, style="bold")
    if run.id is not None:
        t.append(f"  (id {run.id})", style="dim")
    t.append("\n")
    parts = []
    for label, value in facts[1:]:
        if label == "status" and not not_finished(run):
            continue
        parts.append((label, value))
    for i, (label, value) in enumerate(parts):
        t.append(f"{label}: ", style="dim")
        style = "bold yellow" if label == "status" else ""
        t.append(value, style=style)
        t.append("\n" if i < len(parts) - 1 else "")
    return Panel(t, title="losslens report", title_align="left", border_style="blue")


_VERDICT_STYLE = {"overfitting": "bold red", "unstable": "bold red", "degenerate": "bold red",
                  "not_learning": "bold red", "still_improving": "bold yellow", "insufficient": "bold yellow",
                  "converged": "bold green"}


def _verdict(report: "Report") -> RenderableType:
    """The headline verdict, first, in one sentence with its key number."""
    v = report.diagnosis.verdict
    t = Text()
    t.append(v.code.replace("_", " ").upper(), style=_VERDICT_STYLE.get(v.code, "bold"))
    t.append("  " + _safe(v.sentence))
    if v.answer:
        t.append("\n" + _safe(v.answer))
    return Panel(t, title="verdict", title_align="left", border_style=_VERDICT_STYLE.get(v.code, "blue").split()[-1])


def _safe(text: str) -> str:
    """Control characters escaped, so run and file names cannot drive the terminal."""
    return "".join(ch if ch.isprintable() or ch == "\n" else repr(ch)[1:-1] for ch in str(text))


def _findings(report: "Report") -> RenderableType:
    findings = report.diagnosis.findings
    if not findings:
        return Text("No findings: nothing could be judged from the recorded epochs.", style="dim")
    items: list[RenderableType] = []
    for f in findings:
        style = SEVERITY_STYLE.get(f.severity, "")
        head = Text()
        head.append(f"{f.severity.upper():8}", style=style)
        head.append(f.title, style="bold")
        head.append(f"  [{f.code}]", style="dim")
        items.append(head)
        if f.message:
            items.append(Text("  " + f.message))
        evidence = f.evidence
        if f.code == "gap.decomposition" and report.diagnosis.decomposition:
            evidence = []
            items.append(Text("    (the parts are in the table below)", style="dim"))
        for ev in evidence:
            line = Text("    • ", style="dim")
            line.append(ev.name)
            line.append(": ")
            line.append(fmt_pm(ev.value, ev.se, signed=False), style="bold")
            if ev.unit and ev.unit != "loss per sample":
                line.append(f" {ev.unit}")
            where = epochs_text(ev.epochs)
            if where:
                line.append(f" ({where})", style="dim")
            items.append(line)
        if f.recommendation:
            rec = Text("  → ", style="green")
            rec.append(f.recommendation)
            items.append(rec)
        items.append(Text(""))
    return Panel(Group(*items), title="findings", title_align="left", border_style="blue")


def _decomposition(report: "Report") -> RenderableType | None:
    dec = report.diagnosis.decomposition
    if not dec:
        reason = ("no epochs recorded" if not report.run.epochs else
                  "no epoch has both a reported training loss and a validation loss")
        return Text(f"Gap decomposition: not available ({reason}).", style="dim")
    d = dec[-1]
    labels = _term_labels()
    table = Table(title=f"Reported training loss − validation loss at epoch {d.epoch} "
                        f"(R + Ω = {fmt(d.reported)}, V = {fmt(d.validation)}; {loss_unit(report.run)})",
                  title_justify="left", show_lines=False, expand=False)
    table.add_column("term")
    table.add_column("value ± SE", justify="right")
    table.add_column("status")
    table.add_column("what it is", overflow="fold")
    for name, term in d.terms.items():
        table.add_row(("− " if term.sign < 0 else "") + name, fmt_pm(term.value, term.se, signed=True),
                      Text(term.status, style=STATUS_STYLE.get(term.status, "")), labels.get(name, ""))
    total_diff = d.reported - d.validation
    table.add_row(Text("total", style="bold"), Text(fmt(total_diff), style="bold"), "",
                  "reported − validation (the terms add up to it; a term marked − is subtracted)", end_section=True)
    return table


def _last_epoch(report: "Report") -> RenderableType | None:
    run = report.run
    if not run.epochs:
        return None
    e = run.epochs[-1]
    # epochs are counted from 0 everywhere (text, tables, JSON); the figures' x axis is time in epochs, where
    # epoch e ends at e + 1 (docs/diagnosis.md, "Conventions")
    table = Table(title=f"Last epoch: epoch {e.index} (counted from 0), values at its end, {fmt(e.position)} "
                        "epochs into training", title_justify="left")
    table.add_column("")
    table.add_column("value ± SE", justify="right")
    table.add_column("what it is", overflow="fold")
    table.add_row(SYMBOLS["train_loss"], fmt(e.train_loss), QUANTITY_LABELS["train_loss"])
    if not (math.isfinite(e.penalty) and e.penalty == 0):
        table.add_row(SYMBOLS["penalty"], fmt(e.penalty), QUANTITY_LABELS["penalty"])
    for kind in sorted(e.measurements, key=lambda k: _ORDER.index(k) if k in _ORDER else len(_ORDER)):
        m = e.measurements[kind]
        label = QUANTITY_LABELS.get(kind, kind)
        if m.source != "measured":
            label += f" [{m.source}]"
        table.add_row(SYMBOLS.get(kind, kind), fmt_pm(m.mean, m.sem), Text(label))
    for name, value in e.metrics.items():
        table.add_row(Text(name), fmt(value), "metric recorded by the training loop")
    return table


def _audit(report: "Report") -> RenderableType | None:
    if report.audit is None:
        return None
    lines = [Text(str(line)) for line in report.audit.summary_lines()]
    return Panel(Group(*lines) if lines else Text("no audit results"), title="split audit", title_align="left",
                 border_style="blue")


def render(report: "Report") -> list[RenderableType]:
    """The renderables of the summary, in order (verdict, header, findings, decomposition, last epoch, audit)."""
    out: list[RenderableType] = [_verdict(report), _header(report), _findings(report)]
    for part in (_decomposition(report), _last_epoch(report), _audit(report)):
        if part is not None:
            out.append(part)
    return out


def print_report(report: "Report", console: Console | None = None) -> None:
    """Print the summary to ``console`` (a new stdout console when None)."""
    console = console or Console()
    for r in render(report):
        console.print(r)


def to_text(report: "Report", width: int = 100) -> str:
    """The summary as plain text (no colour codes), ``width`` characters wide."""
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False,
                      legacy_windows=False)
    for r in render(report):
        console.print(r)
    return console.export_text()

