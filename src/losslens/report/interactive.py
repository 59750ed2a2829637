"""Interactive figures of the run report: plotly.js, inlined, so the page still works offline.

The figures are plotly.js figure specifications (``{"data": [...], "layout": {...}}``: the library's stable JSON
interface) built from the run as plain dicts, and drawn in the page by the plotly.js file that ships inside the
``plotly`` Python package (``plotly/package_data/plotly.min.js``, inlined once per page). No Python plotting
library is imported, so ``losslens diagnose`` does not pay for matplotlib.

What the reader gets: zoom (drag; double-click resets), values on hover, and series toggled by clicking their
legend entry. :func:`loss_curves_spec` shows the series that answer "why is validation below training" by
default (the reported training loss R, the eval-mode training loss C and the validation loss V; the
end-of-epoch estimate T̂ stands in for C in an imported log) and keeps the rest (step losses, T, A, R + Ω, the
baseline) one click away, so step-loss spikes no longer stretch the axis. :func:`decomposition_spec` draws the
gap's parts as stacked bars (at most :data:`~._style.MAX_BARS` evenly spaced epochs).
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import numpy as np

from ..diagnose.timing import epoch_starts
from ..record import EVAL_CLEAN, VALIDATION, Run, loss_unit, measurement_label, to_jsonable
from ._style import (
    _KIND_STYLE,
    DECIMATE_THRESHOLD,
    MAX_BARS,
    MAX_MARKERS,
    SERIES_LABELS,
    TERM_COLORS,
    _thin_index,
    decimate,
    measurement_series,
)

__all__ = ["loss_curves_spec", "decomposition_spec", "overview_spec", "plotly_js", "embed"]

#: Colours of overlaid runs (Okabe-Ito, then Tableau 10), cycled.
RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000",
              "#4E79A7", "#F28E2B", "#E15759", "#76B7B2", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7")

_MARKERS = {"s": "square", "^": "triangle-up", "o": "circle", "D": "diamond"}
_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}


@functools.lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js library (minified) shipped in the ``plotly`` package, for inlining in a page.

    Raises
    ------
    ImportError
        If the ``plotly`` package (a dependency of losslens) is missing or has no bundled plotly.min.js.
    """
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the interactive figures need the 'plotly' package (pip install plotly)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "package_data", "plotly.min.js")
    if not os.path.isfile(path):
        raise ImportError(f"the 'plotly' package has no bundled plotly.min.js ({path})")
    with open(path, encoding="utf-8") as fh:
        return fh.read().replace("</script", "<\\/script")


def embed(spec: dict[str, Any]) -> str:
    """A figure specification as JSON that is safe inside a ``<script>`` element: non-finite numbers are
    ``null``, and ``<``, ``>``, ``&`` are written as ``\\u003c`` … so no string can close the element."""
    text = json.dumps(to_jsonable(spec, fallback=str), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(x_title: str, y_title: str) -> dict[str, Any]:
    return {
        "font": _FONT, "margin": {"l": 60, "r": 20, "t": 30, "b": 40}, "hovermode": "closest",
        "xaxis": {"title": {"text": x_title}, "zeroline": False, "gridcolor": "#e5e5e5"},
        "yaxis": {"title": {"text": y_title}, "gridcolor": "#e5e5e5"},
        "legend": {"orientation": "h", "y": -0.2, "yanchor": "top", "font": {"size": 11}},
        "plot_bgcolor": "white", "paper_bgcolor": "white", "height": 520,
    }


def loss_curves_spec(run: Run, max_points: int = DECIMATE_THRESHOLD) -> dict[str, Any]:
    """The loss curves of ``run`` as a plotly.js figure: every series at its real time in fractional epochs.

    Parameters
    ----------
    run : Run
        Any run (empty, without validation, without probes, with non-finite values: those are not drawn;
        non-finite step losses are marked at the top).
    max_points : int
        Step series longer than this are thinned with :func:`~._style.decimate` (spikes kept).

    Returns
    -------
    dict
        ``{"data": [...], "layout": {...}}``. x: time in epochs (epoch ``e`` spans ``[e, e + 1]``); y: loss per
        sample. Shown by default: R, C and V (T̂ when the run has no C); the others are ``"legendonly"``.
        Bands are ±2 standard errors of the per-sample mean, toggled with their series.
    """
    data: list[dict[str, Any]] = []
    shown: list[np.ndarray] = []
    st = run.steps
    if len(st):
        windows = bool(np.any(st.span[np.isfinite(st.span)] > 1))
        xs, ys = decimate(st.position, st.loss, max_points)
        if xs.size:
            data.append({"type": "scattergl" if xs.size > 2000 else "scatter", "mode": "lines", "x": xs, "y": ys,
                         "name": SERIES_LABELS["windows" if windows else "steps"], "visible": "legendonly",
                         "line": {"color": "#7f7f7f", "width": 1}, "opacity": 0.6,
                         "hovertemplate": "step loss %{y:.4g}<br>at %{x:.3f} epochs<extra></extra>"})
        bad = ~np.isfinite(st.loss) & np.isfinite(st.position)
        if bad.any():
            bx = st.position[bad][:max_points]
            data.append({"type": "scatter", "mode": "markers", "x": bx, "y": [1.0] * bx.size, "yaxis": "y2",
                         "name": f"{SERIES_LABELS['non_finite']} ({int(bad.sum())} steps)",
                         "marker": {"symbol": "x", "color": "#B00000", "size": 9}, "hoverinfo": "x+name"})
    if run.epochs:
        dots = len(run.epochs) <= MAX_MARKERS
        mode = "lines+markers" if dots else "lines"
        end = np.array([e.position for e in run.epochs], dtype=np.float64)
        centre = (epoch_starts(run) + end) / 2.0
        r = np.array([e.train_loss for e in run.epochs], dtype=np.float64)
        ok = np.isfinite(r) & np.isfinite(centre)
        if ok.any():
            data.append({"type": "scatter", "mode": mode, "x": centre[ok], "y": r[ok],
                         "name": SERIES_LABELS["train_loss"], "line": {"color": "#0072B2", "width": 2.2},
                         "marker": {"size": 6}, "hovertemplate": "R = %{y:.4g}<br>epoch centre %{x:.2f}"
                                                                 "<extra></extra>"})
            shown.append(r[ok])
        pen = np.array([e.penalty for e in run.epochs], dtype=np.float64)
        if np.any(np.isfinite(pen) & (pen != 0)):
            rp = r + pen
            okp = np.isfinite(rp) & np.isfinite(centre)
            data.append({"type": "scatter", "mode": mode, "x": centre[okp], "y": rp[okp], "visible": "legendonly",
                         "name": SERIES_LABELS["reported_loss"], "line": {"color": "#0072B2", "dash": "dot"}})
        has_c = any(EVAL_CLEAN in e.measurements for e in run.epochs)
        for kind, (sym, color, marker) in _KIND_STYLE.items():
            for source, (px, py, ps) in measurement_series(run, kind).items():
                estimated = source == "estimated"
                default = kind in (EVAL_CLEAN, VALIDATION) or (kind == "end_of_epoch_estimate" and not has_c)
                visible = True if default else "legendonly"
                group = f"{kind}-{source}"
                label = f"{sym}: {measurement_label(kind, source)}, at the epoch end"
                if estimated:
                    label += " — estimated (not measured)"
                band = np.isfinite(ps)
                if band.any():
                    lo = np.where(band, py - 2 * ps, py)
                    hi = np.where(band, py + 2 * ps, py)
                    data.append({"type": "scatter", "mode": "lines", "x": np.concatenate([px, px[::-1]]),
                                 "y": np.concatenate([hi, lo[::-1]]), "fill": "toself",
                                 "fillcolor": _rgba(color, 0.18), "line": {"width": 0}, "hoverinfo": "skip",
                                 "showlegend": False, "legendgroup": group, "visible": visible})
                data.append({"type": "scatter", "mode": mode, "x": px, "y": py, "name": label,
                             "legendgroup": group, "visible": visible, "customdata": ps,
                             "line": {"color": color, "width": 2, "dash": "dash" if estimated else "solid"},
                             "marker": {"symbol": _MARKERS.get(marker, "circle"), "size": 7,
                                        "color": "white" if estimated else color,
                                        "line": {"color": color, "width": 1.5}},
                             "hovertemplate": f"{sym} = %{{y:.4g}} ± %{{customdata:.2g}}<br>at %{{x:.2f}} epochs"
                                              "<extra></extra>"})
                if default:
                    shown.append(py)
    baseline = run.meta.get("baseline_loss")
    if isinstance(baseline, (int, float)) and math.isfinite(baseline) and run.epochs:
        data.append({"type": "scatter", "mode": "lines", "x": [0, max(e.position for e in run.epochs)],
                     "y": [baseline, baseline], "name": SERIES_LABELS["baseline"], "visible": "legendonly",
                     "line": {"color": "black", "dash": "dot", "width": 1}})
    layout = _layout("time in epochs (epoch e spans [e, e+1]; end-of-epoch passes at e+1)", loss_unit(run))
    layout["yaxis2"] = {"overlaying": "y", "range": [0, 1.05], "visible": False, "fixedrange": True}
    values = np.concatenate(shown) if shown else np.zeros(0)
    values = values[np.isfinite(values)]
    # a log axis when the default series span more than two decades (divergence, or a loss falling towards 0)
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        layout["yaxis"]["type"] = "log"
    if not data:
        layout["annotations"] = [{"text": "no finite losses recorded", "showarrow": False, "xref": "paper",
                                  "yref": "paper", "x": 0.5, "y": 0.5}]
    return {"data": data, "layout": layout}


def decomposition_spec(decomposition: list[Any]) -> dict[str, Any]:
    """The gap decomposition as stacked bars (plotly.js ``barmode="relative"``), one group per epoch.

    Parameters
    ----------
    decomposition : list of losslens.diagnose.gap.EpochDecomposition
        Per-epoch terms (loss per sample), drawn as their contributions to reported − validation (the
        generalization gap V − C with a minus sign); positive parts stack above 0, negative below. A run with
        more than :data:`~._style.MAX_BARS` epochs shows that many evenly spaced ones (first and last included).

    Returns
    -------
    dict
        ``{"data": [...], "layout": {...}}``; hovering a bar gives the term's value ± its standard error.
    """
    thinned = len(decomposition) > MAX_BARS
    if thinned:
        decomposition = [decomposition[i] for i in _thin_index(len(decomposition), MAX_BARS)]
    names: list[str] = []
    for d in decomposition:
        for n in d.terms:
            if n not in names:
                names.append(n)
    epochs = [d.epoch for d in decomposition]
    data: list[dict[str, Any]] = []
    for n in names:
        vals = [d.terms[n].contribution if n in d.terms and math.isfinite(d.terms[n].contribution) else None
                for d in decomposition]
        if not any(v for v in vals):
            continue
        ses = [d.terms[n].se if n in d.terms else None for d in decomposition]
        estimated = any(n in d.terms and d.terms[n].status == "estimated" for d in decomposition)
        sign = next((d.terms[n].sign for d in decomposition if n in d.terms), 1.0)
        label = ("− " if sign < 0 else "") + n.replace("_", " ") + (" (estimated)" if estimated else "")
        data.append({"type": "bar", "x": epochs, "y": vals, "name": label, "customdata": ses,
                     "marker": {"color": TERM_COLORS.get(n, "#444444"),
                                "pattern": {"shape": "/" if estimated else ""}},
                     "hovertemplate": f"{label}: %{{y:.4g}} ± %{{customdata:.2g}}<br>epoch %{{x}}<extra></extra>"})
    diff = [d.reported - d.validation if math.isfinite(d.reported - d.validation) else None for d in decomposition]
    if decomposition:
        data.append({"type": "scatter", "mode": "markers", "x": epochs, "y": diff,
                     "name": "reported − validation (sum of the terms)",
                     "marker": {"symbol": "diamond", "color": "black", "size": 8},
                     "hovertemplate": "R + Ω − V = %{y:.4g}<br>epoch %{x}<extra></extra>"})
    layout = _layout("epoch (terms measured at the end of the epoch)"
                     + (" (evenly spaced epochs shown)" if thinned else ""), "loss per sample")
    layout.update(barmode="relative", height=460)
    if not decomposition:
        layout["annotations"] = [{"text": "no epoch with both a training and a validation loss",
                                  "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}]
    return {"data": data, "layout": layout}


def overview_spec(runs: list[Run], names: list[str] | None = None) -> dict[str, Any]:
    """Several runs overlaid: each run's validation loss V (solid, with its ±2 SE band where it has per-sample
    losses) and reported training loss R (dotted), one colour per run; a legend click shows or hides a run.

    Parameters
    ----------
    runs : list of Run
        The runs of an overview (``losslens diagnose`` of a folder); x is time in epochs, y loss per sample.
    names : list of str, optional
        Legend names (default: the run names).

    Returns
    -------
    dict
        ``{"data": [...], "layout": {...}}`` (plotly.js).
    """
    data: list[dict[str, Any]] = []
    for k, run in enumerate(runs):
        name = (names or [])[k] if names and k < len(names) else run.name
        color = RUN_COLORS[k % len(RUN_COLORS)]
        group = f"run-{k}"
        for px, py, ps in measurement_series(run, VALIDATION).values():
            band = np.isfinite(ps)
            if band.any():
                lo, hi = np.where(band, py - 2 * ps, py), np.where(band, py + 2 * ps, py)
                data.append({"type": "scatter", "mode": "lines", "x": np.concatenate([px, px[::-1]]),
                             "y": np.concatenate([hi, lo[::-1]]), "fill": "toself", "fillcolor": _rgba(color, 0.15),
                             "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False, "legendgroup": group})
            data.append({"type": "scatter", "mode": "lines", "x": px, "y": py, "name": f"{name}: V",
                         "legendgroup": group, "line": {"color": color, "width": 2},
                         "hovertemplate": f"{name}<br>V = %{{y:.4g}} at %{{x:.2f}} epochs<extra></extra>"})
        if run.epochs:
            end = np.array([e.position for e in run.epochs], dtype=np.float64)
            centre = (epoch_starts(run) + end) / 2.0
            r = np.array([e.train_loss for e in run.epochs], dtype=np.float64)
            ok = np.isfinite(r) & np.isfinite(centre)
            if ok.any():
                data.append({"type": "scatter", "mode": "lines", "x": centre[ok], "y": r[ok], "name": f"{name}: R",
                             "legendgroup": group, "line": {"color": color, "width": 1.2, "dash": "dot"},
                             "hovertemplate": f"{name}<br>R = %{{y:.4g}} at %{{x:.2f}} epochs<extra></extra>"})
    layout = _layout("time in epochs", "loss per sample")
    layout["height"] = 560
    layout["legend"] = {"font": {"size": 10}}
    if not data:
        layout["annotations"] = [{"text": "no finite losses in these runs", "showarrow": False, "xref": "paper",
                                  "yref": "paper", "x": 0.5, "y": 0.5}]
    return {"data": data, "layout": layout}
