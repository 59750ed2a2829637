"""Self-contained HTML pages for an experiment and for a comparison.

One file that opens offline: inline CSS, no JavaScript, figures as inline
base64 PNG (matplotlib, Agg canvas, no pyplot state). The templates
(``experiment.html.j2``, ``comparison.html.j2``) are rendered by the report layer's one jinja environment with
autoescaping on, so every user string (run and experiment names, metadata, finding messages) is escaped.

Figures (:mod:`losslens.report.figures`):

* :func:`~losslens.report.figures.band_figure`: each run as a thin line, the mean over runs as a thick
  line and the pointwise bootstrap confidence band of the mean
  (:mod:`losslens.experiment.bands`) as a shaded area, for the validation loss, the eval-mode
  training loss and the reported training loss;
* :func:`~losslens.report.figures.comparison_figure`: the mean validation and eval-mode training loss
  of the two sides, each with its band.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..experiment.bands import Band, bands
from ..experiment.compare import Comparison
from ._env import render, write_page
from .figures import band_figure, comparison_figure, to_png_base64

if TYPE_CHECKING:  # pragma: no cover
    from ..experiment import Experiment

__all__ = ["render_experiment_html", "render_comparison_html", "save_experiment_html", "save_comparison_html"]


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
    return render("experiment.html.j2", name=exp.name, runs=exp.runs, findings=exp.verdicts(at), figures=figs,
                  few_runs=len(exp.runs) < 5, terms=term_rows, run_rows=run_rows, level=95)


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
    return render("comparison.html.j2", a_name=comp.a_name, b_name=comp.b_name, a_runs=comp.a_runs,
                  b_runs=comp.b_runs, level=int(round(100 * comp.level)), findings=comp.findings, diffs=diffs,
                  figures=figs)


def save_experiment_html(exp: "Experiment", path: str | os.PathLike[str], on: str = "epoch") -> None:
    """Write :func:`render_experiment_html` to ``path`` (UTF-8).

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, or its folder is missing or not writable (the message names it).
    """
    write_page(path, render_experiment_html(exp, on=on))


def save_comparison_html(comp: Comparison, path: str | os.PathLike[str], a_runs: list | None = None,
                         b_runs: list | None = None) -> None:
    """Write :func:`render_comparison_html` to ``path`` (UTF-8).

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, or its folder is missing or not writable (the message names it).
    """
    write_page(path, render_comparison_html(comp, a_runs, b_runs))
