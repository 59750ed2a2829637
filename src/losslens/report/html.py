"""The self-contained HTML report (jinja2).

One file that opens offline: the CSS and the JavaScript are inline, there is no web
font and no external reference; the figures are interactive plotly.js charts whose
library is inlined once (:mod:`.interactive`). The template is
rendered with autoescaping on, so every user string (run name, metric names,
metadata values, finding messages) is escaped. The only markup that is not
escaped is the split audit's fragment, which its module returns already
escaped (``audit.to_html()``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from ..record import MEASUREMENT_KINDS
from . import interactive
from ._env import render
from ._model import (
    QUANTITY_LABELS,
    STATUS_STYLE,
    SYMBOLS,
    epoch_rows,
    fmt,
    fmt_pm,
    not_finished,
    run_facts,
)
from .audit import audit_fragment

if TYPE_CHECKING:  # pragma: no cover
    from . import Report

__all__ = ["render_html"]



def _figure_data(report: "Report") -> list[dict[str, Any]]:
    out = [{
        "title": "Loss curves",
        "id": "losslens-loss-curves",
        "spec": Markup(interactive.embed(interactive.loss_curves_spec(report.run))),
        "caption": "Every series at its real time in fractional epochs: step losses at the centre of their batch, "
                   "the reported epoch mean at the epoch centre, the end-of-epoch passes and the validation loss "
                   "at the epoch end. Shaded bands: ±2 standard errors of the mean over the samples. Dashed lines "
                   "are estimated, not measured. Shown first: R, C and V; click a legend entry to show or hide a "
                   "series (step losses, T, A, R + Ω, the baseline), drag to zoom, double-click to reset. Long "
                   "step series are decimated keeping every bucket's minimum and maximum, so spikes remain.",
    }]
    if report.diagnosis.decomposition:
        out.append({
            "title": "Gap decomposition per epoch",
            "id": "losslens-decomposition",
            "spec": Markup(interactive.embed(interactive.decomposition_spec(report.diagnosis.decomposition))),
            "caption": "Reported training loss − validation loss split into its parts at the end of each epoch. "
                       "Positive parts stack above zero, negative parts below; the diamond is their sum. "
                       "A negative 'generalization gap' part means validation above the eval-mode training "
                       "loss. Hover a bar for its value ± standard error.",
        })
    return out


def _cell(value: Any) -> dict[str, Any]:
    """A table cell: text plus whether the value is not finite (for styling)."""
    if value is None:
        return {"text": "—", "bad": False, "source": ""}
    v, se, source = value
    bad = isinstance(v, float) and not math.isfinite(v)
    return {"text": fmt_pm(v, se), "bad": bad, "source": source if source != "measured" else ""}


#: Per-epoch tables of the HTML page list at most this many epochs; report.json keeps every epoch.
MAX_TABLE_ROWS = 200


def _table_epochs(run: Any) -> set[int] | None:
    """The epochs the HTML tables list for a long run (None: all): evenly spaced ones, always the first, the last
    and the one with the lowest validation loss, so the page stays readable and its size bounded."""
    n = len(run.epochs)
    if n <= MAX_TABLE_ROWS:
        return None
    picks = np.unique(np.round(np.linspace(0, n - 1, MAX_TABLE_ROWS - 1)).astype(np.int64))
    shown = {run.epochs[int(i)].index for i in picks}
    vals = [(m.mean, e.index) for e in run.epochs if (m := e.measurements.get("validation")) is not None
            and math.isfinite(m.mean)]
    if vals:
        shown.add(min(vals)[1])
    return shown


def _context(report: "Report") -> dict[str, Any]:
    from ..diagnose.gap import TERM_LABELS

    run = report.run
    diagnosis = report.diagnosis
    rows = epoch_rows(run)
    shown = _table_epochs(run)
    if shown is not None:
        rows = [r for r in rows if r["epoch"] in shown]
    kinds = ["train_loss"] + (["penalty"] if any(
        isinstance(e.penalty, float) and e.penalty != 0 for e in run.epochs) else []) + [
        k for k in MEASUREMENT_KINDS if run.has(k)]
    measurement_rows = [{"epoch": r["epoch"], "position": fmt(r["position"]),
                         "cells": [_cell(r[k]) for k in kinds]} for r in rows]
    term_names: list[str] = []
    signs: dict[str, float] = {}
    for d in diagnosis.decomposition:
        for n, term in d.terms.items():
            if n not in term_names:
                term_names.append(n)
                signs[n] = term.sign
    dec_rows = []
    for d in diagnosis.decomposition:
        if shown is not None and d.epoch not in shown:
            continue
        cells = []
        for n in term_names:
            t = d.terms.get(n)
            if t is None:
                cells.append({"text": "—", "status": "", "bad": False})
            else:
                cells.append({"text": fmt_pm(t.value, t.se, signed=True) if t.status != "skipped" else "0 (skipped)",
                              "status": t.status, "bad": not math.isfinite(t.value)})
        dec_rows.append({"epoch": d.epoch, "reported": fmt(d.reported), "validation": fmt(d.validation),
                         "diff": fmt(d.reported - d.validation), "cells": cells})
    legend = [(SYMBOLS.get(k, k), QUANTITY_LABELS[k]) for k in ["train_loss", "penalty", *MEASUREMENT_KINDS]]
    term_legend = [(n, TERM_LABELS.get(n, n)) for n in ("penalty", "timing", "train_mode", "augmentation",
                                                        "generalization_gap", "unmeasured")]
    status_legend = [
        ("measured", "computed from per-sample losses recorded during training"),
        ("estimated", "inferred, e.g. from the within-epoch trend of imported logs; not measured"),
        ("skipped", "the two passes cannot differ (no augmentation: A = C; no dropout or batch norm: T = A), "
                    "so the term is exactly 0"),
        ("not measured", "no probe passes were recorded, so this part cannot be split"),
    ]
    audit_html = None
    if report.audit is not None:
        # The findings section already lists split.* findings when the diagnosis was given the audit.
        listed = any(f.code.startswith("split.") for f in report.diagnosis.findings)
        audit_html = Markup(audit_fragment(report.audit, include_findings=not listed))
    return {
        "run": run,
        "verdict": report.diagnosis.verdict.to_dict(),
        "facts": run_facts(run),
        "not_finished": not_finished(run),
        "n_epochs": len(run.epochs),
        "n_shown": len(shown) if shown is not None else None,
        "findings": diagnosis.findings,
        "figures": _figure_data(report),
        "plotly_js": Markup(interactive.plotly_js()),
        "kinds": [(SYMBOLS.get(k, k), QUANTITY_LABELS.get(k, k)) for k in kinds],
        "measurement_rows": measurement_rows,
        # a term entering reported − validation with a minus sign (the generalization gap V − C) says so
        "term_names": [("− " if signs.get(n, 1.0) < 0 else "") + n for n in term_names],
        "dec_rows": dec_rows,
        "legend": legend,
        "term_legend": term_legend,
        "status_legend": status_legend,
        "status_style": STATUS_STYLE,
        "audit_html": audit_html,
    }


def render_html(report: "Report", refresh: float | None = None, plotly_src: str | None = None) -> str:
    """The report as one self-contained HTML document (str); with ``refresh`` (seconds) the page reloads itself
    that often (``losslens watch``); with ``plotly_src`` (a relative URL) the page loads plotly.js from that file
    instead of inlining its 4.8 MB (many reports in one folder share one copy)."""
    return render("run.html.j2", refresh=refresh, plotly_src=plotly_src, **_context(report))
