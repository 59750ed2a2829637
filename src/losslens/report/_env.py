"""The one jinja environment of every losslens page (run, audit, experiment, comparison, overview).

Autoescaping is on, so every user string (run and file names, metadata, finding messages, text samples) is
escaped; undefined variables raise (a template bug never renders as an empty cell). Templates live in
``losslens/report/templates`` and extend ``base.html.j2``; numbers go through the one formatter of
:mod:`._model`.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import jinja2

from ._model import epochs_text, fmt, fmt_pm, fmt_signed

__all__ = ["ENV", "render", "write_page"]

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("losslens.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters["num"] = fmt
ENV.filters["snum"] = fmt_signed
ENV.filters["pm"] = fmt_pm
ENV.filters["signed_pm"] = lambda x, se: fmt_pm(x, se, signed=True)
ENV.filters["epochs"] = epochs_text


def _version() -> str:
    from .. import __version__

    return __version__


def render(template: str, **context: Any) -> str:
    """Render ``template`` with ``context`` plus ``version`` and ``generated`` (UTC time of the rendering)."""
    context.setdefault("version", _version())
    context.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return ENV.get_template(template).render(**context)


def write_page(path: str | os.PathLike[str], text: str) -> Path:
    """Write a page or a JSON document (UTF-8) and return its path.

    Raises
    ------
    FileNotFoundError
        If the directory of ``path`` does not exist (the message names it).
    """
    p = Path(path)
    if not p.parent.exists():
        raise FileNotFoundError(f"cannot write {str(p)!r}: directory {str(p.parent)!r} does not exist")
    p.write_text(text, encoding="utf-8")
    return p
