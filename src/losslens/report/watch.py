"""``losslens watch PATH``: follow a training log or a losslens store while training writes it, and refresh the
verdict as epochs arrive: in the terminal, and in an HTML page that reloads itself.

The path is polled (``--interval`` seconds; by size and modification time, so an unchanged file costs one
``stat``); when it changed, the run is read again (a log through :func:`losslens.importers.load_log`, a store
read-only, so the training process is never blocked), diagnosed, printed and written to ``--html``. A file caught
half-written is reported in one line and read again at the next change; watching never stops on it. A stored run
that finishes ends the watch; so does ``--max-updates`` (for scripts) or Ctrl-C.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import click

__all__ = ["watch", "signature", "Watcher"]


def signature(path: str) -> tuple:
    """What changes when training writes ``path``: ``(name, size, mtime_ns)`` of the file, of a store's
    write-ahead log beside it, or of every file in a folder (sorted)."""
    files: list[str] = []
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files += [os.path.join(root, n) for n in sorted(names)]
    else:
        files = [path, path + "-wal"]
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            continue
        out.append((f, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _is_store(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


class Watcher:
    """Reads the run at ``path`` whenever it changed (:meth:`poll`).

    Parameters
    ----------
    path : str
        A log file or run folder (any format :func:`losslens.importers.load_log` reads; one run), or a store file.
    run : str, optional
        For a store: the run id or name (default: the newest run).
    """

    def __init__(self, path: str, run: str | None = None) -> None:
        self.path = path
        self.run_ref = run
        self._seen: tuple | None = None

    def poll(self) -> Any:
        """The run when ``path`` changed since the last poll (None otherwise).

        Raises
        ------
        ValueError
            When the changed file cannot be read as a run (a half-written line, no loss yet): the message says
            why; the next change is read again.
        """
        sig = signature(self.path)
        if sig == self._seen:
            return None
        self._seen = sig
        if not sig:
            raise ValueError(f"{self.path}: no such file or folder yet")
        if _is_store(self.path):
            from ..store import Store, StoreError

            try:
                with Store(self.path, read_only=True) as store:
                    ref: Any = self.run_ref
                    if ref is None:
                        rows = store.list_runs()
                        if not rows:
                            raise ValueError(f"{self.path}: no run in the store yet")
                        ref = rows[-1]["id"]
                    return store.load_run(ref)
            except StoreError as exc:
                raise ValueError(str(exc)) from None
        from ..importers import LogFormatError, load_log

        try:
            got = load_log(self.path)
        except LogFormatError as exc:
            raise ValueError(str(exc)) from None
        if isinstance(got, list):
            if not got:
                raise ValueError(f"{self.path}: no run found yet")
            got = got[-1]
        return got


def follow(watcher: Watcher, show: Callable[[Any], None], say: Callable[[str], None], interval: float,
           max_updates: int | None, sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll ``watcher`` every ``interval`` seconds and ``show`` each new run; the number of runs shown.

    Stops after ``max_updates`` runs shown, or when a stored run's status is ``finished``."""
    shown = 0
    last_error = None
    while True:
        try:
            run = watcher.poll()
        except ValueError as exc:
            if str(exc) != last_error:
                say(f"waiting: {exc}")
                last_error = str(exc)
            run = None
        if run is not None:
            last_error = None
            show(run)
            shown += 1
            if max_updates is not None and shown >= max_updates:
                return shown
            if run.status == "finished":
                say(f"run {run.name!r} finished")
                return shown
        sleep(interval)


@click.command("watch")
@click.argument("path", type=click.Path(exists=False))
@click.option("--run", "run_ref", default=None, metavar="RUN", help="For a store: the run (id or name); default "
                                                                     "the newest.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between two looks at PATH.")
@click.option("--html", "html_path", default=None, type=click.Path(dir_okay=False),
              help="Also keep this HTML page up to date; it reloads itself every --interval seconds.")
@click.option("--max-updates", type=click.IntRange(min=1), default=None,
              help="Stop after showing this many updates (default: until the run finishes or Ctrl-C).")
def watch(path: str, run_ref: str | None, interval: float, html_path: str | None, max_updates: int | None) -> None:
    """Follow a training log or a losslens store while training writes it, and refresh the verdict as epochs
    arrive (terminal, and an HTML page that reloads itself)."""
    from rich.console import Console

    from ..diagnose import diagnose
    from . import Report
    from ._env import OutputPathError, check_outputs, write_page
    from .html import render_html

    try:
        check_outputs({"--html": html_path})
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None
    console = Console()

    def show(run: Any) -> None:
        rep = Report(diagnose(run))
        if console.is_terminal:
            console.clear()
        console.print(f"losslens watch {path}: {len(run.epochs)} epoch(s), {time.strftime('%H:%M:%S')}",
                      style="dim", markup=False, highlight=False)
        rep.print(console)
        if html_path:
            try:
                write_page(html_path, render_html(rep, refresh=interval))
            except OutputPathError as exc:
                raise click.ClickException(str(exc)) from None

    try:
        follow(Watcher(path, run_ref), show, lambda m: click.echo(m, err=True), interval, max_updates)
    except KeyboardInterrupt:
        sys.exit(0)
