"""The ``losslens`` command line.

Sub-commands live in the module of their concern and are loaded lazily, so
``losslens --help`` stays fast and a missing optional dependency only affects
the command that needs it:

==========  =====================================  =========================================
command     module                                 what it does
==========  =====================================  =========================================
demo        losslens.demo:demo                     train a small net on scikit-learn digits, diagnose it
runs        losslens.report.cli:runs               list the runs in a store
report      losslens.report.cli:report             rebuild the report of a stored run
diagnose    losslens.importers.cli:diagnose        diagnose existing logs (TensorBoard, CSV, JSON)
audit       losslens.audit.cli:audit               audit a train/validation split
compare     losslens.experiment.cli:compare        compare two experiments or runs
merge       losslens.cli:merge                     copy the runs of several stores into one (per-node stores)
watch       losslens.report.watch:watch            follow a log or a store while training writes it
==========  =====================================  =========================================
"""

from __future__ import annotations

import importlib

import click

_COMMANDS = {
    "demo": "losslens.demo:demo",
    "runs": "losslens.report.cli:runs",
    "report": "losslens.report.cli:report",
    "diagnose": "losslens.importers.cli:diagnose",
    "audit": "losslens.audit.cli:audit",
    "compare": "losslens.experiment.cli:compare",
    "merge": "losslens.cli:merge",
    "watch": "losslens.report.watch:watch",
}


#: One line per command for ``losslens --help``, so listing the commands imports none of them (``demo`` would
#: import torch): ``--help`` answers in about 0.1 s (``benchmarks/cli_speed.py``). A test checks that each line
#: is the first line of its command's own help.
_SHORT_HELP = {
    "audit": "Audit a train/validation split: exact and near duplicates, group leaks, label and input shift.",
    "compare": "Compare experiments (or runs) A and B: differences B − A with confidence intervals.",
    "demo": "Train a small dropout network with augmentation on scikit-learn's digits, record it, diagnose it.",
    "diagnose": "Diagnose existing training logs: TensorBoard, Keras, Lightning, Hugging Face, fastai, MLflow.",
    "merge": "Copy every run of the SOURCES stores into DEST (created if missing).",
    "report": "Rebuild the report of a stored run.",
    "runs": "List the runs in a store: id, name, experiment, status, epochs, last validation loss.",
    "watch": "Follow a training log or a losslens store while training writes it, and refresh the verdict as "
             "epochs arrive (terminal, and an HTML page that reloads itself).",
}


class _LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use (not to list them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # depends on the installation
            reason = str(exc)  # `exc` is unbound once the except block ends

            @click.command(name=name, help=f"(unavailable: {reason})",
                           context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
            def _unavailable() -> None:
                raise click.ClickException(f"'losslens {name}' is unavailable in this installation: {reason}")

            return _unavailable


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="losslens")
def main() -> None:
    """losslens: what your loss curves really mean."""


@click.command()
@click.argument("dest", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def merge(dest: str, sources: tuple[str, ...]) -> None:
    """Copy every run of the SOURCES stores into DEST (created if missing).

    For multi-node jobs that wrote one store per node (docs/distributed.md):
    runs get new ids in DEST; names, experiments, status, creation time and
    every epoch, measurement and step are kept. A run already in DEST (same
    name, experiment and creation time) is not copied again. DEST changes
    only when every source merged.
    """
    import contextlib
    import os
    import sqlite3
    import tempfile

    from .store import Store, StoreError

    for src in sources:
        if os.path.exists(dest) and os.path.samefile(dest, src):   # also a hard link to the same file
            raise click.ClickException(f"cannot merge {src} into itself: it is the same file as {dest}")
    # merge into a temporary copy beside DEST and move it into place only when every source went in:
    # a failing source leaves DEST as it was (or absent)
    fd, tmp = tempfile.mkstemp(prefix=".losslens-merge-", suffix=".db", dir=os.path.dirname(os.path.abspath(dest)))
    os.close(fd)
    os.unlink(tmp)
    try:
        if os.path.exists(dest):
            with contextlib.closing(sqlite3.connect(dest)) as a, contextlib.closing(sqlite3.connect(tmp)) as b:
                a.backup(b)
        lines = []
        with Store(tmp) as target:
            for src in sources:
                with Store(src, read_only=True) as store:
                    n_src = len(store.list_runs())
                    ids = target.merge_from(store)
                lines.append(f"{src}: {len(ids)} run(s) copied into {dest}"
                             + (f" ({n_src - len(ids)} already there)" if n_src > len(ids) else ""))
        os.replace(tmp, dest)
        for line in lines:
            click.echo(line)
    except (StoreError, sqlite3.Error) as exc:
        raise click.ClickException(f"{exc}; {dest} is unchanged") from exc
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(tmp + suffix)
