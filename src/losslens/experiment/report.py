"""Self-contained HTML pages for an experiment and for a comparison.

One file that opens offline: inline CSS, no JavaScript, figures as inline
base64 PNG (matplotlib, Agg canvas, no pyplot state). The template is rendered
by jinja2 with autoescaping on, so every user string (run and experiment
names, metadata, finding messages) is escaped.

Figures:

* :func:`band_figure`: each run as a thin line, the mean over runs as a thick
  line and the pointwise bootstrap confidence band of the mean
  (:mod:`.bands`) as a shaded area, for the validation loss, the eval-mode
  training loss and the reported training loss;
* :func:`comparison_figure`: the mean validation and eval-mode training loss
  of the two sides, each with its band.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import math
import os
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
from markupsafe import Markup
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bands import Band, bands
from .compare import Comparison

if TYPE_CHECKING:  # pragma: no cover
    from . import Experiment

__all__ = ["band_figure", "comparison_figure", "render_experiment_html", "render_comparison_html",
           "save_experiment_html", "save_comparison_html", "to_png_base64", "SERIES"]

#: Series drawn in band figures: kind -> (label, colour). Okabe-Ito colour-blind-safe palette.
SERIES = {
    "validation": ("validation loss V (eval mode, end of epoch)", "#D55E00"),
    "eval_clean": ("eval-mode training loss C (probe set, end of epoch)", "#009E73"),
    "train_loss": ("reported training loss R (train mode, mean over the epoch)", "#0072B2"),
    "train_mode": ("train-mode probe loss T (dropout/BN on, end of epoch)", "#E69F00"),
}
_SIDE_COLORS = ("#0072B2", "#D55E00")


def _new_figure(width: float = 9.0, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png_base64(fig: Figure) -> str:
    """PNG bytes of a figure, base64-encoded (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def band_figure(band_map: dict[str, Band], title: str = "") -> Figure:
    """Individual runs, mean curve and confidence band of each quantity.

    Parameters
    ----------
    band_map : dict of str -> Band
        From :func:`.bands.bands` (all on the same axis).
    title : str
        Figure title (plain text; matplotlib does not interpret HTML).

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas.

    Raises
    ------
    ValueError
        If ``band_map`` is empty.
    """
    if not band_map:
        raise ValueError("band_figure: no bands to draw")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    on = next(iter(band_map.values())).aligned
    for kind, b in band_map.items():
        label, color = SERIES.get(kind, (kind, "#555555"))
        al = b.aligned
        for i in range(al.n_runs):
            ok = np.isfinite(al.values[i])
            ax.plot(al.x[ok], al.values[i, ok], color=color, alpha=0.3, lw=0.8)
        ok = np.isfinite(b.lo) & np.isfinite(b.hi)
        ax.fill_between(al.x[ok], b.lo[ok], b.hi[ok], color=color, alpha=0.25, lw=0)
        okm = np.isfinite(b.mean)
        k = int(b.n.max()) if b.n.size else 0
        ax.plot(al.x[okm], b.mean[okm], color=color, lw=2.2,
                label=f"{label}: mean of {k} runs, {int(round(100 * b.level))} % band")
    ax.set_xlabel(on.axis_label)
    ax.set_ylabel("loss per sample")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def comparison_figure(a: dict[str, Band], b: dict[str, Band], a_name: str, b_name: str) -> Figure:
    """Mean curves and bands of two sides (validation and eval-mode training loss).

    Raises
    ------
    ValueError
        If neither side has a band to draw.
    """
    if not a and not b:
        raise ValueError("comparison_figure: no bands to draw")
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    axis = None
    for side, name, color in ((a, a_name, _SIDE_COLORS[0]), (b, b_name, _SIDE_COLORS[1])):
        for kind, style in (("validation", "-"), ("eval_clean", "--")):
            band = side.get(kind)
            if band is None:
                continue
            axis = band.aligned
            ok = np.isfinite(band.lo) & np.isfinite(band.hi)
            ax.fill_between(band.x[ok], band.lo[ok], band.hi[ok], color=color, alpha=0.2, lw=0)
            okm = np.isfinite(band.mean)
            what = "validation loss" if kind == "validation" else "eval-mode training loss"
            ax.plot(band.x[okm], band.mean[okm], style, color=color, lw=2, label=f"{name}: {what}")
    if axis is not None:
        ax.set_xlabel(axis.axis_label)
    ax.set_ylabel("loss per sample")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _num(x: Any, signed: bool = False) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(f):
        return "n/a"
    return f"{f:+.4g}" if signed else f"{f:.4g}"


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_ENV.filters["num"] = _num
_ENV.filters["snum"] = lambda x: _num(x, True)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .5em;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.f{border-left:4px solid #999;padding:.3em .8em;margin:.6em 0;background:#fafafa}
.f.warning{border-color:#E69F00}.f.error{border-color:#D55E00}.f.info{border-color:#56B4E9}
.code{font-family:monospace;color:#555;font-size:.85em}.yes{font-weight:bold;color:#b34000}
figure{margin:1em 0}figcaption{font-size:.85em;color:#444}img{max-width:100%}
.note{font-size:.85em;color:#555}
"""

_FINDINGS = """
{% for f in findings %}
<div class="f {{ f.severity }}"><b>{{ f.title }}</b> <span class="code">{{ f.code }}</span>
<p>{{ f.message }}</p>{% if f.recommendation %}<p><i>What to do:</i> {{ f.recommendation }}</p>{% endif %}</div>
{% endfor %}
"""

_EXPERIMENT_TEMPLATE = _ENV.from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>losslens experiment: {{ name }}</title>
<style>{{ css }}</style></head><body>
<h1>Experiment {{ name }}</h1>
<p>{{ runs|length }} run(s), generated {{ generated }} by losslens. Losses are per sample. Each run is one sample of
the configuration: the verdicts below are judged against both each run's measurement noise and the spread between
runs.</p>
<h2>Verdicts</h2>
""" + _FINDINGS + """
<h2>Curves</h2>
{% for fig in figures %}
<figure><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">
<figcaption><b>{{ fig.title }}.</b> {{ fig.caption }}</figcaption></figure>
{% endfor %}
{% if few_runs %}<p class="note">With fewer than 5 runs the bootstrap band is too narrow (measured coverage of
the mean about 78 % for a nominal 95 % with 3 runs); read it as a rough guide.</p>{% endif %}
<h2>Decomposition terms across seeds</h2>
<table><tr><th class="l">term</th><th>mean over runs</th><th>{{ level }} % interval</th><th>SD between runs</th>
<th>within-run SE (RMS)</th><th>seed spread τ</th><th>runs beyond noise</th><th class="l">verdict</th></tr>
{% for t in terms %}<tr><td class="l">{{ t.name }}</td><td>{{ t.mean|snum }}</td><td>[{{ t.lo|snum }},
{{ t.hi|snum }}]</td><td>{{ t.sd_between|num }}</td><td>{{ t.within_se|num }}</td><td>{{ t.tau|num }}</td>
<td>{{ t.n_beyond }} / {{ t.k }}</td><td class="l">{{ t.status }}</td></tr>{% endfor %}</table>
<p class="note">Interval: t over seeds with SE² = SD² between runs / k (the between-run SD already contains each
run's independent measurement noise; random-effects reading, DerSimonian &amp; Laird 1986) + the sampling error of
the evaluation samples shared by every run (estimated from the per-sample losses averaged over runs). A term beyond
noise in some runs but not across seeds is "uncertain".</p>
<h2>Runs</h2>
<table><tr><th class="l">run</th><th>seed</th><th>epochs</th><th>best epoch</th><th>lowest validation loss</th>
<th>generalization gap (V − C)</th><th class="l">regime</th></tr>
{% for r in run_rows %}<tr><td class="l">{{ r.label }}</td><td>{{ r.seed }}</td><td>{{ r.n_epochs }}</td>
<td>{{ r.best_epoch }}</td><td>{{ r.best_val|num }} ± {{ r.best_val_se|num }}</td><td>{{ r.gap|snum }} ±
{{ r.gap_se|num }}</td><td class="l">{{ r.regime }}</td></tr>{% endfor %}</table>
</body></html>
""")

_COMPARISON_TEMPLATE = _ENV.from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>losslens comparison: {{ a_name }} vs {{ b_name }}</title>
<style>{{ css }}</style></head><body>
<h1>{{ a_name }} (A) vs {{ b_name }} (B)</h1>
<p>A: {{ a_runs|length }} run(s); B: {{ b_runs|length }} run(s). Generated {{ generated }} by losslens. Differences
are B − A in loss per sample, with their {{ level }} % confidence interval; a difference is beyond noise when the
interval excludes 0.</p>
""" + _FINDINGS + """
<table><tr><th class="l">quantity</th><th>A</th><th>B</th><th>B − A</th><th>{{ level }} % interval</th>
<th>beyond noise</th><th class="l">basis</th></tr>
{% for d in diffs %}<tr><td class="l" title="{{ d.label }}">{{ d.name }}</td><td>{{ d.a_mean|num }}</td>
<td>{{ d.b_mean|num }}</td><td>{{ d.diff|snum }}</td><td>[{{ d.lo|snum }}, {{ d.hi|snum }}]</td>
<td>{% if d.beyond_noise %}<span class="yes">yes</span>{% else %}no{% endif %}</td><td class="l">{{ d.basis }}</td>
</tr>{% endfor %}</table>
<p class="note">{% for d in diffs %}<b>{{ d.name }}</b>: {{ d.label }}. {% endfor %}</p>
<p class="note">Intervals: Welch's t over seeds when each side has at least 2 runs (the between-run variance contains
each run's measurement noise); a single run against several borrows the other side's seed spread; two single runs
use the within-run standard errors only.</p>
{% for fig in figures %}
<figure><img alt="{{ fig.title }}" src="data:image/png;base64,{{ fig.png }}">
<figcaption><b>{{ fig.title }}.</b> {{ fig.caption }}</figcaption></figure>
{% endfor %}
<h2>Runs</h2>
<table><tr><th class="l">side</th><th class="l">run</th><th>best epoch</th><th>lowest validation loss</th>
<th>generalization gap</th><th class="l">regime</th></tr>
{% for side, rows in (("A", a_runs), ("B", b_runs)) %}{% for r in rows %}<tr><td class="l">{{ side }}</td>
<td class="l">{{ r.label }}</td><td>{{ r.best_epoch }}</td><td>{{ r.best_val|num }}</td><td>{{ r.gap|snum }}</td>
<td class="l">{{ r.regime }}</td></tr>{% endfor %}{% endfor %}</table>
</body></html>
""")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _band_caption(b: dict[str, Band]) -> str:
    some = next(iter(b.values()))
    meth = {"expanded": "expanded percentile bootstrap (Hesterberg 2015)",
            "percentile": "percentile bootstrap (Efron & Tibshirani 1993)", "t": "Student t interval"}[some.method]
    res = f", B = {some.B} resamples of the runs" if some.B else ""
    return (f"Thin lines: individual runs. Thick line: mean over runs. Shaded: pointwise "
            f"{int(round(100 * some.level))} % confidence band of the mean, {meth}{res}. The band is for the mean "
            "curve, so individual runs are expected to leave it.")


def render_experiment_html(exp: "Experiment", on: str = "epoch", at: str = "last") -> str:
    """The HTML page of an experiment (str).

    Parameters
    ----------
    exp : Experiment
    on : str
        Axis of the band figure: ``"epoch"``, ``"samples"`` or ``"steps"``; a
        second figure on samples seen is added when ``on="epoch"`` and the runs
        recorded their sample counts.
    at : str
        Epoch of the decomposition terms (``"last"`` or ``"best"``).
    """
    figs = []
    for axis in ([on, "samples"] if on == "epoch" else [on]):
        try:
            bm = bands(exp.runs, ("validation", "eval_clean", "train_loss"), on=axis)
        except ValueError:
            continue
        if bm:
            figs.append({"title": f"Loss curves of every run with the mean and its band, against "
                                  f"{'epochs' if axis == 'epoch' else axis + ' seen' if axis == 'samples' else axis}",
                         "png": to_png_base64(band_figure(bm)), "caption": _band_caption(bm)})
    sums = exp.summaries(at)
    terms = exp.terms(at)
    run_rows = [{"label": s.label, "seed": r.meta.get("seed", ""), "n_epochs": s.n_epochs, "best_epoch": s.best_epoch,
                 "best_val": s.best_val, "best_val_se": s.best_val_se, "gap": s.gap, "gap_se": s.gap_se,
                 "regime": s.regime or ""} for s, r in zip(sums, exp.runs)]
    term_rows = [{"name": t.name, "mean": t.mean, "lo": t.lo, "hi": t.hi, "sd_between": t.sd_between,
                  "within_se": t.within_se, "tau": t.tau, "status": t.status, "k": t.k,
                  "n_beyond": int(t.per_seed_beyond.sum())} for t in terms.values()]
    return _EXPERIMENT_TEMPLATE.render(
        name=exp.name, runs=exp.runs, generated=_now(), findings=exp.verdicts(at), figures=figs,
        few_runs=len(exp.runs) < 5, terms=term_rows, run_rows=run_rows, level=95, css=Markup(_CSS))


def render_comparison_html(comp: Comparison, a_runs: list | None = None, b_runs: list | None = None) -> str:
    """The HTML page of a comparison (str); band figures are drawn when the runs are given."""
    figs = []
    if a_runs and b_runs:
        try:
            ba = bands(a_runs, ("validation", "eval_clean")) if len(a_runs) else {}
            bb = bands(b_runs, ("validation", "eval_clean")) if len(b_runs) else {}
            if ba or bb:
                figs.append({"title": "Mean curves of A and B with their bands",
                             "png": to_png_base64(comparison_figure(ba, bb, comp.a_name, comp.b_name)),
                             "caption": "Solid: validation loss; dashed: eval-mode training loss; shaded: pointwise "
                                        "95 % bootstrap band of the mean over runs (none for a single run)."})
        except ValueError:
            pass
    diffs = [{"name": d.name, "label": d.label, "a_mean": d.a_mean, "b_mean": d.b_mean, "diff": d.diff,
              "lo": d.lo, "hi": d.hi, "beyond_noise": d.beyond_noise, "basis": d.basis}
             for d in comp.differences.values()]
    return _COMPARISON_TEMPLATE.render(
        a_name=comp.a_name, b_name=comp.b_name, a_runs=comp.a_runs, b_runs=comp.b_runs, generated=_now(),
        level=int(round(100 * comp.level)), findings=comp.findings, diffs=diffs, figures=figs, css=Markup(_CSS))


def _write(path: str | os.PathLike[str], text: str) -> None:
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {os.fspath(path)!r}: directory {parent!r} does not exist")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_experiment_html(exp: "Experiment", path: str | os.PathLike[str], on: str = "epoch") -> None:
    """Write :func:`render_experiment_html` to ``path`` (UTF-8).

    Raises
    ------
    FileNotFoundError
        If the directory of ``path`` does not exist.
    """
    _write(path, render_experiment_html(exp, on=on))


def save_comparison_html(comp: Comparison, path: str | os.PathLike[str], a_runs: list | None = None,
                         b_runs: list | None = None) -> None:
    """Write :func:`render_comparison_html` to ``path`` (UTF-8).

    Raises
    ------
    FileNotFoundError
        If the directory of ``path`` does not exist.
    """
    _write(path, render_comparison_html(comp, a_runs, b_runs))
