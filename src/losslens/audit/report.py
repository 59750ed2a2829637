"""HTML of the split audit: a fragment for the report's "Split audit" section, and a page.

Rendered with jinja2 and autoescaping on, so every user string (file names,
column names, text samples, cell values, class names) is escaped. Duplicate
pairs are shown side by side: images as inline base64 PNG thumbnails
(matplotlib ``imsave``), text as snippets, rows as small tables. No JavaScript,
no external reference.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .core import AuditResult

__all__ = ["render_fragment", "render_page", "thumbnail_png"]

_SNIPPET = 160
_MAX_COLS = 12
_THUMB = 96

_FRAGMENT = """\
<div class="ll-audit">
<style>
.ll-audit table{border-collapse:collapse;margin:.4em 0}
.ll-audit td,.ll-audit th{border:1px solid #ccc;padding:2px 6px;font-size:90%;vertical-align:top}
.ll-audit .pair{display:inline-block;margin:4px 10px 4px 0;padding:4px;border:1px solid #ddd}
.ll-audit img{image-rendering:pixelated;width:64px;height:64px}
.ll-audit .snippet{font-family:monospace;white-space:pre-wrap;max-width:28em}
.ll-audit .flag{color:#a40000;font-weight:bold}.ll-audit .ok{color:#2a6b2a}
</style>
<p>{{ r.n_train }} training × {{ r.n_val }} validation samples ({{ r.kind }}).
Training: {{ r.train_source }}. Validation: {{ r.val_source }}.</p>
{% if findings %}<h3>Findings</h3>
<ul>
{% for f in findings %}
<li><span class="{{ 'ok' if f.severity == 'info' else 'flag' }}">[{{ f.severity }}] {{ f.title }}</span>
<code>{{ f.code }}</code><br>{{ f.message }}{% if f.recommendation %}<br><em>{{ f.recommendation }}</em>{% endif %}</li>
{% endfor %}
</ul>{% endif %}
<h3>Checks</h3>
<ul>{% for line in lines %}<li>{{ line }}</li>{% endfor %}</ul>
{% for block in blocks %}
<h3>{{ block.title }}</h3>
<p>{{ block.caption }}</p>
{% for p in block.pairs %}
<div class="pair"><div>distance {{ p.distance }}{% if p.exact %} (exact){% endif %}</div>
{% if p.kind == 'image' %}
<table><tr><th>train #{{ p.train }}</th><th>val #{{ p.val }}</th></tr>
<tr><td><img alt="training sample {{ p.train }}" src="data:image/png;base64,{{ p.a }}"></td>
<td><img alt="validation sample {{ p.val }}" src="data:image/png;base64,{{ p.b }}"></td></tr></table>
{% elif p.kind == 'text' %}
<table><tr><th>train #{{ p.train }}</th><th>val #{{ p.val }}</th></tr>
<tr><td class="snippet">{{ p.a }}</td><td class="snippet">{{ p.b }}</td></tr></table>
{% else %}
<table><tr><th></th>{% for c in p.columns %}<th>{{ c }}</th>{% endfor %}</tr>
<tr><th>train #{{ p.train }}</th>{% for v in p.a %}<td>{{ v }}</td>{% endfor %}</tr>
<tr><th>val #{{ p.val }}</th>{% for v in p.b %}<td>{{ v }}</td>{% endfor %}</tr></table>
{% endif %}
</div>
{% endfor %}
{% if block.more %}<p>… and {{ block.more }} more pairs (all in the JSON output).</p>{% endif %}
{% endfor %}
{% if label %}
<h3>Label shares</h3>
<table><tr><th>class</th><th>training</th><th>validation</th><th>change</th></tr>
{% for row in label %}<tr><td>{{ row[0] }}</td><td>{{ row[1] }}</td><td>{{ row[2] }}</td><td>{{ row[3] }}</td></tr>
{% endfor %}</table>
{% endif %}
{% if features %}
<h3>Most separating features (adversarial validation)</h3>
<table><tr><th>feature</th><th>training mean</th><th>validation mean</th><th>KS D</th><th>KS p</th>
<th>importance (drop in ROC AUC)</th></tr>
{% for f in features %}<tr><td>{{ f.name }}</td><td>{{ f.train_mean }}</td><td>{{ f.val_mean }}</td>
<td>{{ f.ks }}</td><td>{{ f.ks_p }}</td><td>{{ f.importance }}</td></tr>
{% endfor %}</table>
{% endif %}
</div>
"""

_PAGE = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:72em}</style></head>
<body><h1>{{ title }}</h1>
<section id="split-audit"><h2>Split audit</h2>
{{ fragment }}
</section></body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True)


def _g(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return "n/a" if not math.isfinite(float(x)) else f"{float(x):.4g}"
    return str(x)


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

    from .near import _pool_images

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


def render_fragment(res: "AuditResult", max_pairs: int = 12, include_findings: bool = True) -> str:
    """HTML fragment (no ``<html>``/``<body>``) of an audit, every user string escaped.

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
    return _ENV.from_string(_FRAGMENT).render(r=res, findings=res.findings() if include_findings else [],
                                              lines=res.summary_lines()[1:],
                                              blocks=_blocks(res, max_pairs), label=label, features=feats)


def render_page(res: "AuditResult", title: str = "losslens split audit") -> str:
    """A self-contained HTML page around :func:`render_fragment`."""
    from markupsafe import Markup

    return _ENV.from_string(_PAGE).render(title=title, fragment=Markup(render_fragment(res)))
