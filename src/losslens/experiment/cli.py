"""``losslens compare A B``: two experiments (or runs) side by side.

A and B are experiment names, or run ids / run names of a store. For each of
the lowest validation loss, the generalization gap and each decomposition
term the command prints both sides, the difference B − A with its confidence
interval (:mod:`.compare`) and whether it is beyond noise.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from ..record import Run, _jsonable
from ..store import Store, StoreError

__all__ = ["compare", "resolve_side"]


def resolve_side(store: Store, ref: str) -> tuple[str, list[Run]]:
    """Runs named by ``ref``: an experiment name first, else a run id or run name.

    Returns
    -------
    name, runs : str, list of Run

    Raises
    ------
    LookupError
        If ``ref`` is neither an experiment nor a run; the message lists what the store holds.
    """
    rows = store.list_runs()
    experiments = sorted({r["experiment"] for r in rows if r["experiment"]})
    if ref in experiments:
        return ref, store.load_experiment(ref)
    try:
        run = store.load_run(ref)
    except StoreError:
        runs = ", ".join(f"{r['id']}:{r['name']}" for r in rows[-20:]) or "none"
        if len(rows) > 20:
            runs = f"{len(rows)} runs, the newest: " + runs
        raise LookupError(f"{ref!r} is neither an experiment nor a run in store {str(store.path)!r} "
                          f"(experiments: {', '.join(experiments) or 'none'}; runs: {runs})") from None
    return f"{run.name} (id {run.id})", [run]


@click.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--store", "store_path", default="losslens.db", show_default=True,
              type=click.Path(dir_okay=False), help="losslens store (SQLite file) holding the runs.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML page of the comparison.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the comparison as JSON.")
@click.option("--at", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="Epoch of the gap and decomposition terms per run: the last epoch, or the best (lowest "
                   "validation loss).")
@click.option("--level", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True,
              help="Confidence level of the intervals of the difference.")
@click.option("--format", "out_format", type=click.Choice(["text", "json", "markdown"]), default="text",
              show_default=True, help="What to print: the table, the JSON document, or Markdown.")
def compare(a: str, b: str, store_path: str, html_path: str | None, json_path: str | None, at: str,
            level: float, out_format: str) -> None:
    """Compare experiments (or runs) A and B: differences B − A with confidence intervals.

    A and B are experiment names, run ids or run names in the store. With at
    least 2 runs on each side the intervals are Welch t intervals over seeds;
    single runs use their within-run standard errors.
    """
    from ..report._env import OutputPathError, check_outputs, write_page
    from ..report.experiment import save_comparison_html
    from .compare import compare as _compare

    try:
        check_outputs({"--html": html_path, "--json": json_path})
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None

    if not os.path.exists(store_path):
        raise click.ClickException(f"store file {store_path!r} does not exist (pass --store PATH)")
    try:
        store = Store(store_path, read_only=True)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    with store:
        sides: list[Any] = []
        for ref, which in ((a, "A"), (b, "B")):
            try:
                sides.append(resolve_side(store, ref))
            except LookupError as exc:
                raise click.ClickException(f"{which}: {exc.args[0]}") from exc
            except StoreError as exc:
                raise click.ClickException(str(exc)) from exc
    (a_name, a_runs), (b_name, b_runs) = sides
    result = _compare(a_runs, b_runs, a_name=a_name, b_name=b_name, level=level, at=at)
    if out_format == "json":
        click.echo(json.dumps(_jsonable(result.to_dict()), indent=2, allow_nan=False))
    elif out_format == "markdown":  # GitHub renders a fenced block as is: the aligned table stays aligned
        click.echo(f"### losslens compare: {a_name} vs {b_name}\n\n```text\n{result.to_text().rstrip()}\n```")
    else:
        click.echo(result.to_text())
    say = click.echo if out_format == "text" else (lambda m: click.echo(m, err=True))
    if json_path:
        try:
            write_page(json_path, json.dumps(_jsonable(result.to_dict()), indent=2, allow_nan=False))
        except OSError as exc:
            raise click.ClickException(f"cannot write --json {json_path!r}: {exc}") from exc
        say(f"JSON written to {json_path}")
    if html_path:
        try:
            save_comparison_html(result, html_path, a_runs, b_runs)
        except OSError as exc:
            raise click.ClickException(f"cannot write --html {html_path!r}: {exc}") from exc
        say(f"HTML written to {html_path}")
