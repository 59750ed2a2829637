"""Figures of a report (matplotlib, Agg canvas, no pyplot state).

Two figures:

* :func:`loss_curves`: every series at its real time, in fractional epochs
  (epoch ``e`` spans ``[e, e + 1]``): step losses at their
  :attr:`~losslens.record.Steps.position`, the reported epoch mean ``R`` at the
  epoch centre, the end-of-epoch passes ``T``, ``A``, ``C`` and the validation
  loss ``V`` at :attr:`~losslens.record.Epoch.position`, with ±2·SE bands.
* :func:`decomposition_bars`: the gap decomposition as stacked bars per epoch.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so
they never open a window and never touch pyplot's global state (safe in
threads, notebooks and headless CI). :func:`to_png_base64` and
:func:`to_svg` encode a figure for inline embedding.

Long step series are thinned by :func:`decimate`, which keeps every bucket's
minimum, maximum, first and last point, so a spike of one step in a
1 000 000-step run is still drawn.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..diagnose.timing import epoch_starts
from ..record import Run, measurement_label
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

if TYPE_CHECKING:  # pragma: no cover
    from ..experiment.bands import Band

__all__ = [
    "DECIMATE_THRESHOLD",
    "decimate",
    "loss_curves",
    "decomposition_bars",
    "band_figure",
    "comparison_figure",
    "to_png_base64",
    "to_svg",
    "SERIES",
    "SERIES_LABELS",
    "TERM_COLORS",
]



_F = TypeVar("_F", bound=Callable[..., Any])


def _quiet(func: _F) -> _F:
    """Draw without floating-point warnings: a loss of 1e308 overflows matplotlib's axis transforms
    (``exp`` of the log-scale limits), which is a drawing detail, not something to tell the user."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _new_figure(width: float = 9.0, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finite(a: np.ndarray) -> np.ndarray:
    return np.isfinite(a)


def _source_suffix(source: str) -> str:
    return {"estimated": " — estimated (not measured)", "imported": " — imported from the log"}.get(source, "")


@_quiet
def loss_curves(run: Run, max_points: int = DECIMATE_THRESHOLD) -> Figure:
    """Loss curves with every series at its real time.

    Parameters
    ----------
    run : Run
        Any run: empty, without validation, without probes, with non-finite
        values (those are not drawn; non-finite step losses are marked with
        ``x`` at the top of the axes).
    max_points : int
        Step series longer than this are thinned with :func:`decimate`.

    Returns
    -------
    matplotlib.figure.Figure
        x axis: time in epochs (epoch ``e`` spans ``[e, e + 1]``); y axis: loss
        per sample. Measurements with ``source == "estimated"`` are dashed and
        labelled "estimated"; bands are ±2 standard errors of the per-sample
        mean where it is known.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    drawn: list[np.ndarray] = []

    st = run.steps
    if len(st):
        windows = bool(np.nanmax(st.span) > 1) if st.span.size else False
        label = SERIES_LABELS["windows" if windows else "steps"]
        xs, ys = decimate(st.position, st.loss, max_points)
        if xs.size:
            ax.plot(xs, ys, color="#7f7f7f", lw=0.6, alpha=0.55, label=label, zorder=1)
            drawn.append(ys)
        bad = ~np.isfinite(st.loss) & np.isfinite(st.position)
        if bad.any():
            bx = st.position[bad]
            if bx.size > max_points:
                bx = bx[np.linspace(0, bx.size - 1, max_points).astype(int)]
            ax.plot(bx, np.full_like(bx, 0.97), ls="none", marker="x", color="#B00000", ms=6,
                    transform=ax.get_xaxis_transform(), clip_on=False,
                    label=f"{SERIES_LABELS['non_finite']} ({int(bad.sum())} steps)", zorder=5)

    if run.epochs:
        dots = len(run.epochs) <= MAX_MARKERS  # markers on every epoch only while they can be told apart
        end = np.array([e.position for e in run.epochs], dtype=np.float64)
        centre = (epoch_starts(run) + end) / 2.0  # evaluation intervals of imported logs need not be epochs
        r = np.array([e.train_loss for e in run.epochs], dtype=np.float64)
        ok = _finite(r) & _finite(centre)
        if ok.any():
            ax.plot(centre[ok], r[ok], color="#0072B2", lw=1.8, marker="o" if dots else None, ms=4,
                    label=SERIES_LABELS["train_loss"],
                    zorder=3)
            drawn.append(r[ok])
        pen = np.array([e.penalty for e in run.epochs], dtype=np.float64)
        if np.any(np.isfinite(pen) & (pen != 0)):
            rp = r + pen
            ok = _finite(rp) & _finite(centre)
            if ok.any():
                ax.plot(centre[ok], rp[ok], color="#0072B2", lw=1.2, ls=":", marker="o" if dots else None, ms=3,
                        label=SERIES_LABELS["reported_loss"], zorder=3)
                drawn.append(rp[ok])
        for kind, (sym, color, marker) in _KIND_STYLE.items():
            for source, (px, py, ps) in measurement_series(run, kind).items():
                estimated = source == "estimated"
                ax.plot(px, py, color=color, lw=1.6, ls="--" if estimated else "-",
                        marker=marker if dots else None, ms=4,
                        mfc="white" if estimated else color,
                        label=f"{sym}: {measurement_label(kind, source)}, at the epoch end{_source_suffix(source)}",
                        zorder=4)
                drawn.append(py)
                band = np.isfinite(ps)
                if band.any():
                    lo, hi = py - 2 * ps, py + 2 * ps
                    ax.fill_between(px, np.where(band, lo, py), np.where(band, hi, py), color=color, alpha=0.18,
                                    lw=0, zorder=2)

    baseline = run.meta.get("baseline_loss")
    if isinstance(baseline, (int, float)) and math.isfinite(baseline):
        ax.axhline(baseline, color="black", lw=0.8, ls=":", label=SERIES_LABELS["baseline"], zorder=1)

    ax.set_xlabel("time in epochs (epoch e spans [e, e+1]; end-of-epoch passes at e+1)")
    ax.set_ylabel("loss per sample")
    ax.set_title("Loss curves, every series at its real time (bands: ±2 standard errors)", fontsize=10)
    ax.grid(True, alpha=0.3)
    values = np.concatenate(drawn) if drawn else np.zeros(0)
    values = values[np.isfinite(values)]
    # Log scale when the drawn losses span more than two decades (divergence, or a loss falling towards 0):
    # on a linear axis everything but the extremes would be a flat line.
    if values.size and values.min() > 0 and values.max() / values.min() > 100:
        ax.set_yscale("log")
    if not values.size:
        ax.text(0.5, 0.5, "no finite losses recorded", ha="center", va="center", transform=ax.transAxes,
                color="#555555")
        ax.set_xlim(0, max(1, len(run.epochs)))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7.5, frameon=False, ncol=1)
    fig.set_size_inches(9.0, 4.8 + 0.16 * len(ax.get_legend_handles_labels()[0]))
    return fig


@_quiet
def decomposition_bars(decomposition: Sequence[Any]) -> Figure:
    """The gap decomposition as stacked bars, one bar per epoch.

    Parameters
    ----------
    decomposition : sequence of losslens.diagnose.gap.EpochDecomposition
        Per-epoch terms (loss per sample), drawn as their contributions to
        reported − validation (the generalization gap V − C with a minus sign).
        Positive contributions stack upwards from 0, negative ones downwards;
        non-finite terms are left out. A black diamond marks reported −
        validation, the sum of the contributions.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = _new_figure(9.0, 4.6)
    ax = fig.add_subplot()
    names: list[str] = []
    for d in decomposition:
        for n in d.terms:
            if n not in names:
                names.append(n)
    if not decomposition:
        ax.text(0.5, 0.5, "no epoch with both a training and a validation loss", ha="center", va="center",
                transform=ax.transAxes, color="#555555")
    thinned = " (evenly spaced epochs shown)" if len(decomposition) > MAX_BARS else ""
    if len(decomposition) > MAX_BARS:  # one bar per epoch per term stops being readable (and costs O(patches))
        decomposition = [decomposition[i] for i in _thin_index(len(decomposition), MAX_BARS)]
    epochs = np.array([d.epoch for d in decomposition], dtype=np.float64)
    width = 0.8 * (float(np.min(np.diff(epochs))) if epochs.size > 1 else 1.0)
    pos_base = np.zeros(len(decomposition))
    neg_base = np.zeros(len(decomposition))
    for n in names:
        vals = np.array([d.terms[n].contribution if n in d.terms else 0.0 for d in decomposition],
                        dtype=np.float64)
        vals = np.where(np.isfinite(vals), vals, 0.0)
        if not np.any(vals != 0):
            continue
        pos = np.where(vals > 0, vals, 0.0)
        neg = np.where(vals < 0, vals, 0.0)
        estimated = any(n in d.terms and d.terms[n].status == "estimated" for d in decomposition)
        sign = next((d.terms[n].sign for d in decomposition if n in d.terms), 1.0)
        label = ("− " if sign < 0 else "") + n.replace("_", " ") + (" (estimated)" if estimated else "")
        color = TERM_COLORS.get(n, "#444444")
        ax.bar(epochs, pos, width, bottom=pos_base, color=color, label=label, hatch="//" if estimated else None,
               edgecolor="white", lw=0.3)
        ax.bar(epochs, neg, width, bottom=neg_base, color=color, hatch="//" if estimated else None,
               edgecolor="white", lw=0.3)
        pos_base += pos
        neg_base += neg
    if decomposition:
        diff = np.array([d.reported - d.validation for d in decomposition], dtype=np.float64)
        ok = np.isfinite(diff)
        ax.plot(epochs[ok], diff[ok], ls="none", marker="D", color="black", ms=5,
                label="reported − validation (sum of the terms)", zorder=5)
        bad = [d.epoch for d in decomposition
               if not math.isfinite(d.reported - d.validation) or not all(math.isfinite(t.value)
                                                                           for t in d.terms.values())]
        if bad:
            ax.plot(bad, np.zeros(len(bad)), ls="none", marker="X", color="#B00000", ms=9,
                    label="non-finite loss: terms not drawn", zorder=6)
        ax.use_sticky_edges = False
        ax.margins(x=0.03, y=0.08)
        ax.axhline(0, color="black", lw=0.7)
        ax.set_xticks(epochs if epochs.size <= 30 else epochs[:: math.ceil(epochs.size / 30)])
    ax.set_xlabel("epoch (terms measured at the end of the epoch)" + thinned)
    ax.set_ylabel("loss per sample")
    ax.set_title("Reported training loss − validation loss, split into measured parts", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


#: Series drawn in band figures (several runs of one experiment): kind -> (label, colour); Okabe-Ito
#: colour-blind-safe palette.
SERIES = {
    "validation": ("validation loss V (eval mode, end of epoch)", "#D55E00"),
    "eval_clean": ("eval-mode training loss C (probe set, end of epoch)", "#009E73"),
    "train_loss": ("reported training loss R (train mode, mean over the epoch)", "#0072B2"),
    "train_mode": ("train-mode probe loss T (dropout/BN on, end of epoch)", "#E69F00"),
}
_SIDE_COLORS = ("#0072B2", "#D55E00")


@_quiet
def band_figure(band_map: dict[str, Band], title: str = "") -> Figure:
    """Individual runs, mean curve and confidence band of each quantity.

    Parameters
    ----------
    band_map : dict of str -> Band
        From :func:`losslens.experiment.bands.bands` (all on the same axis).
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


@_quiet
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


@_quiet
def to_png_base64(fig: Figure, dpi: int = 110) -> str:
    """Encode a figure as base64 PNG (for ``<img src="data:image/png;base64,...">``).

    The figure is rendered with its Agg canvas; it is not closed (it holds no
    pyplot reference, so it is freed when no longer referenced).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")  # long legends below the axes stay whole
    return base64.b64encode(buf.getvalue()).decode("ascii")


@_quiet
def to_svg(fig: Figure) -> str:
    """Encode a figure as an inline SVG document (text, fonts as paths, no external references)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()
