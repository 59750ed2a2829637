"""HTML of the split audit: a fragment for the report's "Split audit" section, and a page.

Rendered with the report layer's one jinja environment (:mod:`._env`; templates ``audit_fragment.html.j2`` and
``audit.html.j2``) and autoescaping on, so every user string (file names,
column names, text samples, cell values, class names) is escaped. Duplicate
pairs are shown side by side: images as inline base64 PNG thumbnails
(matplotlib ``imsave``), text as snippets, rows as small tables. No JavaScript,
no external reference.
"""

from __future__ import annotations

import base64
import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._env import render, write_page
from ._model import fmt

if TYPE_CHECKING:  # pragma: no cover
    from ..audit.core import AuditResult

__all__ = ["render_fragment", "render_page", "save_page", "audit_fragment", "thumbnail_png"]

_SNIPPET = 160
_MAX_COLS = 12
_THUMB = 96



def _g(x: Any) -> str:
    return fmt(x) if isinstance(x, (float, np.floating)) else str(x)


def thumbnail_png(img: np.ndarray) -> str:
    """Base64 PNG of one image ``(H, W)`` or ``(H, W, C)``, scaled to its own min–max range.

    Images larger than 96 pixels on a side are average-pooled first, so that a
    page of pairs stays small.

    Parameters
    ----------
    img : numpy.ndarray

    Returns
    -------
    str
        Base64 (ASCII) of the PNG bytes.
    """
    from matplotlib import image as mpimg

    from ..audit.near import _pool_images

    a = np.asarray(img, dtype=np.float64)
    a = np.nan_to_num(a)
    if max(a.shape[:2]) > _THUMB:
        a = _pool_images(a[None], _THUMB)[0]
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    buf = io.BytesIO()
    if a.ndim == 2:
        mpimg.imsave(buf, a, cmap="gray_r" if a.mean() < 0.5 else "gray", vmin=0, vmax=1, format="png")
    else:
        mpimg.imsave(buf, a[..., :4] if a.shape[-1] in (3, 4) else a[..., 0], format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _snippet(s: str) -> str:
    return s if len(s) <= _SNIPPET else s[:_SNIPPET - 1] + "…"


def _pair_view(res: "AuditResult", t: int, v: int, dist: float, exact: bool) -> dict[str, Any]:
    tr, va = res._train, res._val
    p: dict[str, Any] = {"train": int(t), "val": int(v), "distance": _g(dist), "exact": exact, "kind": tr.kind}
    if tr.kind == "image":
        p["a"], p["b"] = thumbnail_png(tr.data[t]), thumbnail_png(va.data[v])
    elif tr.kind == "text":
        p["a"], p["b"] = _snippet(tr.data[t]), _snippet(va.data[v])
    elif tr.kind == "table":
        cols = list(tr.data.columns)[:_MAX_COLS]
        p["columns"] = [str(c) for c in cols]
        p["a"] = [_g(x) for x in tr.data.iloc[t][cols].tolist()]
        p["b"] = [_g(x) for x in va.data.iloc[v][cols].tolist()]
    else:
        n = min(_MAX_COLS, tr.data.shape[1])
        p["columns"] = [f"{i}" for i in range(n)]
        p["a"] = [_g(x) for x in np.asarray(tr.data[t])[:n]]
        p["b"] = [_g(x) for x in np.asarray(va.data[v])[:n]]
    return p


def _blocks(res: "AuditResult", max_pairs: int) -> list[dict[str, Any]]:
    blocks = []
    if res._train is None or res._val is None:
        return blocks
    e = res.exact
    if len(e.pairs):
        shown = [_pair_view(res, t, v, 0.0, True) for t, v in e.pairs[:max_pairs]]
        blocks.append({"title": "Exact duplicates", "caption": "Identical after normalization (training left, "
                       "validation right).", "pairs": shown, "more": max(0, e.n_pairs - len(shown))})
    nd = res.near
    if nd is not None:
        idx = np.nonzero(~nd.pair_exact)[0]
        idx = idx[np.argsort(nd.pair_dist[idx], kind="stable")]
        if len(idx):
            shown = [_pair_view(res, nd.pairs[i, 0], nd.pairs[i, 1], float(nd.pair_dist[i]), False)
                     for i in idx[:max_pairs]]
            blocks.append({"title": "Near duplicates", "caption": f"Within distance {nd.radius:.3g} in "
                           f"{nd.feature_space}, nearest first.", "pairs": shown,
                           "more": max(0, len(idx) - len(shown))})
    return blocks


def _shift_rows(res: "AuditResult") -> tuple[list | None, list | None]:
    """Rows of the label-share table and of the most separating features (None when not measured)."""
    label = None
    ls = res.label_shift
    if ls is not None and ls.kind == "classes":
        label = [(c, f"{100 * a:.1f} % ({n})", f"{100 * b:.1f} % ({m})", f"{100 * (b - a):+.1f} points")
                 for c, a, b, n, m in zip(ls.classes, ls.train_shares, ls.val_shares, ls.train_counts,
                                          ls.val_counts)][:50]
    feats = None
    fs = res.feature_shift
    if fs is not None and fs.top_features:
        feats = [{k: _g(v) for k, v in f.items()} for f in fs.top_features]
    return label, feats


def render_fragment(res: "AuditResult", max_pairs: int = 12, include_findings: bool = True) -> str:
    """HTML fragment (no document or body element) of an audit, every user string escaped.

    Parameters
    ----------
    res : AuditResult
    max_pairs : int
        Pairs shown per kind (exact, near); the rest are counted.
    include_findings : bool
        List the audit's findings (off inside a full report, whose findings
        section already has them).

    Returns
    -------
    str
    """
    label, feats = _shift_rows(res)
    return render("audit_fragment.html.j2", r=res, findings=res.findings() if include_findings else [],
                  lines=res.summary_lines()[1:], blocks=_blocks(res, max_pairs), label=label, features=feats)


def render_page(res: "AuditResult", title: str = "losslens split audit") -> str:
    """A self-contained HTML page around :func:`render_fragment` (every finding listed)."""
    label, feats = _shift_rows(res)
    return render("audit.html.j2", title=title, r=res, findings=res.findings(), lines=res.summary_lines()[1:],
                  blocks=_blocks(res, 12), label=label, features=feats)


def audit_fragment(audit: Any, include_findings: bool = True) -> str:
    """The escaped HTML fragment of any audit a :class:`~losslens.report.Report` holds: a
    :class:`losslens.audit.AuditResult` is rendered here; another object by its own ``to_html()`` (already
    escaped) when it has one, else as its escaped ``summary_lines()``."""
    from ..audit.core import AuditResult

    if isinstance(audit, AuditResult):
        return render_fragment(audit, include_findings=include_findings)
    if callable(getattr(audit, "to_html", None)):
        return str(audit.to_html())
    import html

    return "<ul>" + "".join(f"<li>{html.escape(str(line))}</li>" for line in audit.summary_lines()) + "</ul>"


def save_page(res: "AuditResult", path: str | os.PathLike[str], title: str = "losslens split audit") -> None:
    """Write :func:`render_page` to ``path`` (UTF-8).

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, or its folder is missing or not writable (the message names it).
    """
    write_page(path, render_page(res, title=title))
