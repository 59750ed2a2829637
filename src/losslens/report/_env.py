"""The one jinja environment of every losslens page (run, audit, experiment, comparison, overview).

Autoescaping is on, so every user string (run and file names, metadata, finding messages, text samples) is
escaped; undefined variables raise (a template bug never renders as an empty cell). Templates live in
``losslens/report/templates`` and extend ``base.html.j2``; numbers go through the one formatter of
:mod:`._model`.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import jinja2

from ._model import epochs_text, fmt, fmt_pm, fmt_signed

__all__ = ["ENV", "OutputPathError", "check_output_file", "check_output_folder", "check_outputs", "inside", "render",
           "write_page"]

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
    context.setdefault("refresh", None)   # seconds: the page reloads itself (losslens watch)
    context.setdefault("generated", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return ENV.get_template(template).render(**context)


class OutputPathError(OSError):
    """An output path losslens will not write: a folder where a file is expected, a missing or unwritable
    folder, or a symbolic link leading out of the output folder. The message names the path and the reason."""


def _probe_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise OutputPathError(f"cannot write {what}: folder {str(folder)!r} {why}")
    try:  # access() lies for root and on read-only mounts; creating a file does not
        fd, tmp = tempfile.mkstemp(prefix=".losslens-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputPathError(f"cannot write {what}: folder {str(folder)!r} is not writable "
                              f"({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Refuse, before any work, an output file path that :func:`write_page` could not write.

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, or its folder does not exist or is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputPathError(f"cannot write {str(p)!r}: it is a folder")
    _probe_folder(p.parent if str(p.parent) else Path("."), repr(str(p)))
    return p


def check_outputs(options: dict[str, str | None]) -> None:
    """:func:`check_output_file` on each given path of ``{"--html": path, ...}``, before any work; the error
    names the option."""
    for option, path in options.items():
        if path:
            try:
                check_output_file(path)
            except OutputPathError as exc:
                raise OutputPathError(f"{option}: {exc}") from None


def check_output_folder(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises
    ------
    OutputPathError
        If it cannot be created (a file of that name, an unwritable parent) or written to.
    """
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the output folder {str(p)!r}: {exc.strerror or exc}") from None
    _probe_folder(p, f"into {str(p)!r}")
    return p


def inside(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` resolves (symbolic links followed) to a place inside ``folder``."""
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def write_page(path: str | os.PathLike[str], text: str | Iterable[str]) -> Path:
    """Write a page or a JSON document (UTF-8) atomically and return its path.

    ``text`` is a string or an iterable of string chunks (``json.JSONEncoder.iterencode``), written as they
    come so a long document is never held whole in memory.

    The text goes to a temporary file beside ``path`` that then replaces it, so a reader never sees half a
    page, a failed write leaves the old file, and a symbolic link at ``path`` is replaced, never written
    through (a link planted in an output folder cannot make losslens write elsewhere).

    Raises
    ------
    OutputPathError
        If ``path`` is a folder, or its folder does not exist or cannot be written (the message names it).
    """
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        raise OutputPathError(f"cannot write {str(p)!r}: it is a folder")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {str(p)!r}: folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if isinstance(text, str):
                fh.write(text)
            else:
                fh.writelines(text)
        os.chmod(tmp, p.stat().st_mode & 0o777 if p.is_file() and not p.is_symlink() else 0o644)
        os.replace(tmp, p)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise OutputPathError(f"cannot write {str(p)!r}: {exc.strerror or exc}") from None
        raise
    return p

