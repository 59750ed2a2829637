"""Reports of a diagnosed run: terminal (rich), self-contained HTML, JSON.

>>> from losslens.report import Report               # doctest: +SKIP
>>> report = Report.from_run(run)                    # runs losslens.diagnose.diagnose(run)
>>> report.print()                                   # rich summary on stdout
>>> report.save_html("report.html")                  # one file, opens offline, figures inline
>>> report.save_json("report.json")                  # machine-readable, NaN written as null

No deep-learning framework is imported; matplotlib is used with its Agg
canvas only (see :mod:`losslens.report.figures`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..diagnose import Diagnosis, diagnose
from ..record import Run
from ._env import write_page
from ._model import to_jsonable

__all__ = ["Report", "AuditLike", "REPORT_FORMAT_VERSION"]

#: Version of the JSON layout written by :meth:`Report.to_dict`.
REPORT_FORMAT_VERSION = 1


@runtime_checkable
class AuditLike(Protocol):
    """What a report needs from a split audit (``losslens.audit``)."""

    def to_dict(self) -> dict[str, Any]:
        ...

    def summary_lines(self) -> list[str]:
        ...


class Report:
    """The report of one diagnosed run.

    Parameters
    ----------
    diagnosis : losslens.diagnose.Diagnosis
        The run, its findings and its per-epoch gap decomposition.
    audit : object, optional
        A split audit: a :class:`losslens.audit.AuditResult`, or any object with
        ``to_dict() -> dict`` and ``summary_lines() -> list[str]`` (and optionally
        ``to_html() -> str``, an already-escaped fragment); when given, every
        output gets a "Split audit" section (:func:`losslens.report.audit.audit_fragment`).

    Raises
    ------
    TypeError
        If ``diagnosis`` is not a :class:`~losslens.diagnose.Diagnosis`, or
        ``audit`` lacks one of the two methods.
    """

    def __init__(self, diagnosis: Diagnosis, audit: Any = None) -> None:
        if not isinstance(diagnosis, Diagnosis):
            raise TypeError(
                f"Report(diagnosis=...) expects a losslens.diagnose.Diagnosis, got {type(diagnosis).__name__}; "
                "use Report.from_run(run) for a Run"
            )
        if audit is not None:
            missing = [m for m in ("to_dict", "summary_lines") if not callable(getattr(audit, m, None))]
            if missing:
                raise TypeError(f"Report(audit=...): {type(audit).__name__} lacks {', '.join(missing)}")
        self.diagnosis = diagnosis
        self.audit = audit

    @classmethod
    def from_run(cls, run: Any, audit: Any = None) -> "Report":
        """Diagnose ``run`` (:func:`losslens.diagnose.diagnose`) and wrap the result.

        Parameters
        ----------
        run : losslens.record.Run, or a recorder with a ``run`` attribute
            A run, or any losslens adapter (``losslens.torch.LossLens``, the Keras, Lightning and Hugging Face
            callbacks): ``Report.from_run(lens)``.

        Raises
        ------
        TypeError
            If ``run`` is neither a :class:`~losslens.record.Run` nor holds one (e.g. a callback before training).
        """
        if not isinstance(run, Run) and isinstance(getattr(run, "run", None), Run):
            run = run.run
        elif not isinstance(run, Run) and isinstance(getattr(getattr(run, "lens", None), "run", None), Run):
            run = run.lens.run   # the fastai callback (fastai's Callback.run is its on/off flag)
        if not isinstance(run, Run):
            raise TypeError(f"Report.from_run(run=...) expects a losslens.record.Run or a recorder holding one, got "
                            f"{type(run).__name__}")
        return cls(diagnose(run, audit=audit), audit=audit)

    @property
    def run(self) -> Run:
        """The diagnosed run."""
        return self.diagnosis.run

    @property
    def findings(self) -> list:
        """The findings of the diagnosis, in order."""
        return self.diagnosis.findings

    def __repr__(self) -> str:
        return (f"Report(run={self.run.name!r}, epochs={len(self.run.epochs)}, "
                f"findings={self.diagnosis.codes()!r})")

    # -- terminal ---------------------------------------------------------------------------
    def print(self, console: Any = None) -> None:
        """Print the terminal summary.

        Parameters
        ----------
        console : rich.console.Console, optional
            Where to print; a new console on stdout when None.
        """
        from .terminal import print_report

        print_report(self, console)

    def to_text(self, width: int = 100) -> str:
        """The terminal summary as plain text (no colour codes), ``width`` characters wide."""
        from .terminal import to_text

        return to_text(self, width=width)

    def to_markdown(self, level: int = 3) -> str:
        """The report as GitHub-flavoured Markdown (verdict, findings table, last epoch's decomposition), for
        ``$GITHUB_STEP_SUMMARY`` or a pull-request comment; headings at ``level``."""
        from .markdown import report_markdown

        return report_markdown(self, level=level)

    # -- HTML ---------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        """Jupyter shows the report inline (the same self-contained page as :meth:`to_html`)."""
        return self.to_html()

    def to_html(self, plotly_src: str | None = None) -> str:
        """The report as one self-contained HTML document (no external resources, figures inline).

        ``plotly_src``: a URL (relative to the page) of plotly.js to load instead of inlining it (4.8 MB); the
        page is then no longer self-contained. ``losslens diagnose`` uses it for many runs in one folder.
        """
        from .html import render_html

        return render_html(self, plotly_src=plotly_src)

    def save_html(self, path: str | os.PathLike[str], plotly_src: str | None = None) -> Path:
        """Write :meth:`to_html` to ``path`` (UTF-8) and return the path.

        Raises
        ------
        OutputPathError
            If ``path`` is a folder, or its folder is missing or not writable (the message names it).
        """
        return write_page(path, self.to_html(plotly_src=plotly_src))

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: the diagnosis' ``to_dict()`` plus report metadata.

        Keys: ``report`` (format version, losslens version, creation time,
        whether the run finished), ``run``, ``findings``, ``decomposition`` and,
        with an audit, ``audit``. Non-finite numbers are ``None`` (JSON null).
        """
        from .. import __version__

        d: dict[str, Any] = {
            "report": to_jsonable({
                "format_version": REPORT_FORMAT_VERSION,
                "losslens_version": __version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "finished": self.run.status != "running",
                "codes": self.diagnosis.codes(),
            }),
            **self.diagnosis.to_dict(),  # already JSON-safe: not converted a second time
        }
        if self.audit is not None:
            d["audit"] = to_jsonable(self.audit.to_dict())
        return d

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON text (no NaN/Infinity tokens)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False, default=str)

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` (UTF-8) and return the path.

        Raises
        ------
        OutputPathError
            If ``path`` is a folder, or its folder is missing or not writable (the message names it).
        """
        encoder = json.JSONEncoder(indent=2, allow_nan=False, ensure_ascii=False, default=str)
        return write_page(path, encoder.iterencode(self.to_dict()))  # streamed: no second copy as one string

