"""``losslens runs`` and ``losslens report``: read runs back from a store.

Both commands open an existing store only; a missing file is an error that
names it (a store is never created by reading).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..store import Store, StoreError
from ._model import fmt

__all__ = ["runs", "report"]

_STORE_HELP = "SQLite store file written by losslens."


def _open_store(path: str) -> Store:
    p = Path(path)
    if not p.exists():
        raise click.ClickException(
            f"store file {str(p)!r} does not exist; record a run first (e.g. `losslens demo`) "
            "or pass --store PATH"
        )
    if p.is_dir():
        raise click.ClickException(f"store {str(p)!r} is a directory, not a losslens store file")
    try:
        return Store(p, read_only=True)   # a reader never waits for a writer, nor needs write access
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("runs")
@click.option("--store", "store_path", default="losslens.db", show_default=True, type=click.Path(dir_okay=False),
              help=_STORE_HELP)
def runs(store_path: str) -> None:
    """List the runs in a store: id, name, experiment, status, epochs, last validation loss."""
    with _open_store(store_path) as store:
        try:
            rows = store.list_runs()
        except StoreError as exc:
            raise click.ClickException(str(exc)) from exc
    console = Console()
    if not rows:
        console.print(Text(f"No runs in store {store_path}."))
        return
    table = Table(title=Text(f"runs in {store_path}"), title_justify="left")
    for col, justify in (("id", "right"), ("name", "left"), ("experiment", "left"), ("status", "left"),
                         ("epochs", "right"), ("last validation loss", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        val = r["last_val_loss"]
        table.add_row(str(r["id"]), Text(_printable(r["name"])), Text(_printable(r["experiment"] or "—")),
                      Text(str(r["status"]), style="yellow" if r["status"] == "running" else ""),
                      str(r["n_epochs"]), "—" if val is None or (isinstance(val, float) and math.isnan(val))
                      else fmt(val))
    console.print(table)
    if any(r["status"] == "running" for r in rows):
        console.print(Text("status 'running': the run is in progress, or its process stopped before it finished; "
                           "its committed epochs can still be reported.", style="dim"))


#: Output formats of the reading commands (``--format``).
OUTPUT_FORMATS = ("text", "json", "markdown")
#: ``--fail-on`` levels; a finding of this severity or above makes the command exit with :data:`EXIT_FINDINGS`.
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
#: Exit status for ``--fail-on`` (1 is an error of the command, 2 a usage error, as click uses them).
EXIT_FINDINGS = 3


def fail_on_option(func: Any) -> Any:
    """The ``--fail-on warning|error`` option of diagnose, report and audit."""
    return click.option("--fail-on", "fail_on", type=click.Choice(["warning", "error"]), default=None,
                        help=f"Exit with status {EXIT_FINDINGS} when a finding of this severity or above is "
                             "present (for CI).")(func)


def failing(findings: Any, fail_on: str | None) -> bool:
    """Whether ``findings`` hold one at or above ``fail_on`` (never, when ``fail_on`` is None)."""
    if fail_on is None:
        return False
    return any(SEVERITY_RANK.get(f.severity, 0) >= SEVERITY_RANK[fail_on] for f in findings)



@click.command("report")
@click.argument("run_ref", metavar="RUN")
@click.option("--store", "store_path", default="losslens.db", show_default=True, type=click.Path(dir_okay=False),
              help=_STORE_HELP)
@click.option("--html", "html_path", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="Write the self-contained HTML report here.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the report as JSON here.")
@click.option("--format", "out_format", type=click.Choice(OUTPUT_FORMATS), default="text", show_default=True,
              help="What to print: the terminal report, the JSON document, or Markdown (for $GITHUB_STEP_SUMMARY).")
@fail_on_option
def report(run_ref: str, store_path: str, html_path: str, json_path: str | None, out_format: str,
           fail_on: str | None) -> None:
    """Rebuild the report of a stored run. RUN is a run id or a run name (the newest run of that name)."""
    from . import Report
    from ._env import OutputPathError, check_outputs

    try:
        check_outputs({"--html": html_path, "--json": json_path})
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None
    with _open_store(store_path) as store:
        try:
            run = store.load_run(run_ref)
        except StoreError as exc:
            try:  # a damaged file: show what is still readable, and say what is not
                run = store.load_run(run_ref, salvage=True)
            except StoreError:
                raise click.ClickException(str(exc)) from exc
            click.echo(f"warning: {exc}; the report shows what is still readable", err=True)
    rep = Report.from_run(run)
    # with --format json/markdown stdout holds that document alone; the notes go to stderr
    console = Console() if out_format == "text" else Console(file=sys.stderr)
    if out_format == "text":
        rep.print(console)
    elif out_format == "json":
        click.echo(rep.to_json())
    else:
        click.echo(rep.to_markdown(), nl=False)
    try:
        out = rep.save_html(html_path)
        console.print(Text(f"HTML report written to {out}"), soft_wrap=True)
        if json_path:
            out = rep.save_json(json_path)
            console.print(Text(f"JSON report written to {out}"), soft_wrap=True)
    except OSError as exc:
        raise click.ClickException(str(exc)) from exc
    if run.status == "running":
        console.print(Text(f"Note: run {run.name!r} did not finish (status 'running'); the report covers the "
                           f"{len(run.epochs)} epoch(s) it committed.", style="yellow"))
    if failing(rep.findings, fail_on):
        sys.exit(EXIT_FINDINGS)


def _printable(x: object) -> str:
    """Control characters escaped (``\\x1b``): a run name cannot move the cursor or clear the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(x))
