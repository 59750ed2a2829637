"""``losslens diagnose PATH [PATH ...]``: diagnose existing training logs.

Each path (a log file, a run folder, or a folder of runs) is imported with
:func:`losslens.importers.load_log`, diagnosed, printed, and written as
``report.html`` and ``report.json``. One path with one run: the two files go
in ``--out``. Several paths or runs: one sub-folder per run in ``--out`` plus ``overview.html`` and
``overview.json``, and an overview table is printed. A path that cannot be
imported is reported (file and reason) and the others go on; the exit status
is 1 when any path failed, 0 otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import warnings
from typing import Any

import click

from ..record import END_OF_EPOCH_ESTIMATE, EVAL_CLEAN, VALIDATION, Run
from ..report.cli import EXIT_FINDINGS, OUTPUT_FORMATS, fail_on_option, failing
from . import FORMATS, LogFormatError, SkippedLogWarning, load_log
from ._common import check_steps_per_epoch
from ._common import measure_hint as _measure_hint

__all__ = ["diagnose", "measure_hint", "overview_rows"]


def measure_hint(run: Run) -> str:
    """One line: what to add to the training code to measure the parts of the gap this log cannot split."""
    return str(run.meta.get("how_to_measure") or _measure_hint(run.meta.get("framework")))


#: The end-of-epoch estimate's method (``run.meta["timing_method"]``) in the user's words.
TIMING_METHOD_WORDS = {
    "steps": "from the trend of the step losses within each epoch",
    "means": "from the trend of the epoch means across epochs",
    "ema": "from the lag of the logged moving average",
    "none": "not possible from this log",
}


def run_kinds(run: Run) -> list[str]:
    """The measured end-of-epoch quantities of ``run``, by their symbols (C, T, A, V)."""
    from ..record import MEASUREMENT_KINDS
    from ..report._model import SYMBOLS

    return [SYMBOLS[k] for k in MEASUREMENT_KINDS if k != END_OF_EPOCH_ESTIMATE and run.has(k)]


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def overview_rows(runs: list[tuple[Run, Any]]) -> list[dict[str, Any]]:
    """One summary dict per (run, diagnosis): name, source, epochs, last R, V and estimated T, verdict."""
    from ..report.tables import verdict

    out = []
    for run, diag in runs:
        last_v = next((e for e in reversed(run.epochs) if VALIDATION in e.measurements), None)
        last_r = next((e for e in reversed(run.epochs) if e.train_loss == e.train_loss), None)
        t = last_r.measurements.get(END_OF_EPOCH_ESTIMATE) if last_r is not None else None
        out.append({
            "run": run.name,
            "source": run.meta.get("source_file"),
            "importer": run.meta.get("importer"),
            "epochs": len(run.epochs),
            "last_train_loss": _num(last_r.train_loss) if last_r else None,
            "last_train_loss_epoch": last_r.index if last_r else None,
            "end_of_epoch_train_loss_estimate": _num(t.mean) if t is not None else None,
            "end_of_epoch_train_loss_se": _num(t.sem) if t is not None else None,
            "last_val_loss": _num(last_v.measurements[VALIDATION].mean) if last_v else None,
            "last_val_loss_epoch": last_v.index if last_v else None,
            "codes": diag.codes(),
            "headline": diag.verdict.code,
            "sentence": diag.verdict.sentence,
            "answer": diag.verdict.answer,
            "verdict": verdict(diag),
        })
    return out


#: Names in ``--out`` that belong to the overview, never to a run's folder.
RESERVED = frozenset({"overview.html", "overview.json", "report.html", "report.json", "plotly.min.js"})

#: The one copy of plotly.js that the pages of a multi-run ``--out`` load (instead of 4.8 MB inlined in each).
PLOTLY_FILE = "plotly.min.js"


def _slug(name: str, used: set[str], out_dir: str | None = None) -> str:
    """A folder name for run ``name`` in ``out_dir``: unique, not an overview file's name, and not the name of
    something already there that is not a real folder inside ``out_dir`` (a file, or a symbolic link that
    leads elsewhere)."""
    from ..report._env import inside

    s = re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("._") or "run"
    s = s[:80]
    base, k = s, 2

    def taken(c: str) -> bool:
        if c in used or c in RESERVED:
            return True
        if out_dir is None:
            return False
        t = os.path.join(out_dir, c)
        return os.path.lexists(t) and (os.path.islink(t) or not os.path.isdir(t) or not inside(out_dir, t))

    while taken(s):
        s = f"{base}_{k}"
        k += 1
    used.add(s)
    return s


def _diagnose_one(job: tuple[Run, str, str | None]) -> Any:
    """Diagnose one imported run and write its report.html/report.json in ``target`` (a process pool's task)."""
    from ..diagnose import diagnose as run_diagnosis
    from ..report import Report

    imported, target, plotly_src = job
    diag = run_diagnosis(imported)
    rep = Report(diag)
    try:
        os.makedirs(target, exist_ok=True)
        rep.save_html(os.path.join(target, "report.html"), plotly_src=plotly_src)
        rep.save_json(os.path.join(target, "report.json"))
    except OSError as exc:
        return exc
    return diag


def _workers(option: int | None, n_runs: int) -> int:
    """``--workers``: 1 for a handful of runs (a process costs more than it saves), else one per CPU."""
    if option is not None:
        return max(1, option)
    return 1 if n_runs < 8 else max(1, min(os.cpu_count() or 1, n_runs // 4))


@click.command("diagnose")
@click.argument("paths", nargs=-1, required=False, type=click.Path(exists=False))
@click.option("--mlflow", "mlflow_uri", default=None, metavar="URI",
              help="Read the runs from an MLflow tracking server (http://host:port, sqlite:///mlflow.db, ...).")
@click.option("--experiment", default=None, metavar="NAME", help="With --mlflow: the experiment whose runs to read.")
@click.option("--run-id", "run_ids", multiple=True, metavar="ID",
              help="With --mlflow: a run to read (repeatable), instead of a whole experiment.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes diagnosing the runs (default: 1 for fewer than 8 runs, else one per CPU core).")
@click.option("--log-format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Log format (default: detected from the content).")
@click.option("--format", "out_format", type=click.Choice(OUTPUT_FORMATS + FORMATS), default="text",
              show_default=True, metavar="[text|json|markdown]",
              help="What to print: the terminal reports, one JSON document, or Markdown (for $GITHUB_STEP_SUMMARY). "
                   "A log format here is read as --log-format (deprecated).")
@fail_on_option
@click.option("--train-loss", default=None, metavar="NAME", help="Metric to use as the training loss.")
@click.option("--val-loss", default=None, metavar="NAME", help="Metric to use as the validation loss.")
@click.option("--allow-pickle", is_flag=True, default=False,
              help="Read pickled Keras histories (unpickling can execute code: only for files you trust).")
@click.option("--steps-per-epoch", type=float, default=None, metavar="N",
              help="Optimizer steps per epoch, for logs that do not record it (fastai history.csv).")
@click.option("--out", "out_dir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder for report.html / report.json (one sub-folder per run when there are several).")
@click.option("--quiet", "-q", is_flag=True, default=False, help="Do not print the per-run reports.")
def diagnose(paths: tuple[str, ...], mlflow_uri: str | None, experiment: str | None, run_ids: tuple[str, ...],
             workers: int | None, fmt: str | None, out_format: str, fail_on: str | None, train_loss: str | None,
             val_loss: str | None, allow_pickle: bool, steps_per_epoch: float | None, out_dir: str,
             quiet: bool) -> None:
    """Diagnose existing training logs: TensorBoard, Keras, Lightning, Hugging Face, fastai, MLflow.

    PATHS are log files, run folders or folders of runs; or, with --mlflow URI, the runs of an MLflow
    experiment (--experiment NAME) or the given runs (--run-id). The end-of-epoch
    training loss is estimated from the logged losses (labelled as an
    estimate); what needs probe passes is stated as not measured, with the
    change to the training code that would measure it.
    """
    from ..report import Report
    from ..report._env import OutputPathError, check_output_folder, render, write_page
    from ..report._model import fmt as fmt_num

    if out_format in FORMATS:  # the option's meaning before 0.2
        click.echo(f"warning: --format {out_format} names a log format: use --log-format {out_format} (--format "
                   "now chooses what is printed: text, json or markdown)", err=True)
        fmt, out_format = fmt or out_format, "text"
    text = out_format == "text"

    def say(message: str) -> None:  # with --format json/markdown stdout holds that document alone
        click.echo(message, err=not text)

    try:  # the importers' one bound, before any file is read
        check_steps_per_epoch("--steps-per-epoch", steps_per_epoch)
    except LogFormatError as exc:
        raise click.BadParameter(exc.reason, param_hint="'--steps-per-epoch'") from None
    try:
        check_output_folder(out_dir)  # before the work, not after printing every report
    except OutputPathError as exc:
        raise click.ClickException(f"--out: {exc}") from None
    if not paths and mlflow_uri is None:
        raise click.UsageError("give log PATHS, or --mlflow URI with --experiment NAME or --run-id ID")
    if mlflow_uri is None and (experiment or run_ids):
        raise click.UsageError("--experiment and --run-id read from an MLflow server: give --mlflow URI")
    runs: list[Run] = []
    failures: list[str] = []
    if mlflow_uri is not None:
        from .mlflow_runs import load_mlflow

        errors: list[str] = []   # runs that cannot be imported are named, the others go on
        try:
            runs.extend(load_mlflow(mlflow_uri, experiment=experiment, run_ids=list(run_ids) or None,
                                    train_loss=train_loss, val_loss=val_loss, steps_per_epoch=steps_per_epoch,
                                    errors=errors))
        except LogFormatError as exc:   # the server, the experiment or a run id: nothing to import
            errors.append(str(exc))
        for f in errors:
            click.echo(f"error: {f}", err=True)
        failures.extend(errors)
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = load_log(p, format=fmt, train_loss=train_loss, val_loss=val_loss, allow_pickle=allow_pickle,
                               steps_per_epoch=steps_per_epoch)
            except LogFormatError as exc:
                failures.append(str(exc))
                click.echo(f"error: {exc}", err=True)
                continue
        for w in caught:
            if issubclass(w.category, SkippedLogWarning):  # one bad log in a folder: report it, keep the rest
                failures.append(str(w.message))
                click.echo(f"error: {w.message}", err=True)
                continue
            if issubclass(w.category, RuntimeWarning):  # numpy's overflow on a 1e308 loss: the value is non-finite
                continue  # and the diagnosis says so; the arithmetic detail is not the user's business
            click.echo(f"warning: {w.message}", err=True)
        got = got if isinstance(got, list) else [got]
        if not got:
            failures.append(f"{p}: no runs found")
            click.echo(f"error: {p}: no runs found", err=True)
        runs.extend(got)
    if not runs:
        raise click.ClickException("nothing imported" + (f" ({len(failures)} error(s) above)" if failures else ""))
    multi = len(runs) > 1 or len(paths) > 1
    diagnosed = []
    reports: list[Any] = []
    used: set[str] = set()
    links = []
    targets = [os.path.join(out_dir, _slug(r.name, used, out_dir)) if multi else out_dir for r in runs]
    plotly_src = None
    if multi:   # many pages, one copy of plotly.js beside them (4.8 MB each otherwise)
        from ..report import interactive

        try:
            write_page(os.path.join(out_dir, PLOTLY_FILE), interactive.plotly_js())
        except OutputPathError as exc:
            raise click.ClickException(f"--out: {exc}") from None
        plotly_src = "../" + PLOTLY_FILE
    jobs = [(r, t, plotly_src) for r, t in zip(runs, targets)]
    n_workers = _workers(workers, len(jobs))
    if n_workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: a fork of a process holding threads (BLAS, OpenMP, the fetch pool) can deadlock
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            # results in the runs' order: deterministic
            results = list(pool.map(_diagnose_one, jobs, chunksize=max(1, len(jobs) // (8 * n_workers))))
    else:
        results = [_diagnose_one(j) for j in jobs]
    for diag, target in zip(results, targets):
        if isinstance(diag, OSError):
            raise click.ClickException(f"--out: {diag}") from None
        run = diag.run   # the run with the diagnosis's end-of-epoch estimates
        diagnosed.append((run, diag))
        rep = Report(diag)
        links.append(os.path.relpath(os.path.join(target, "report.html"), out_dir))
        reports.append(rep)
        if text and not quiet:
            rep.print()
        if not quiet:
            notes = run.meta.get("import_notes") or []
            for n in notes:
                say(f"  import note: {n}")
            if run.has(EVAL_CLEAN):  # a log written with the losslens Keras callback: its columns are measurements
                say(f"  measured by the losslens callback while training: {', '.join(run_kinds(run))}; "
                    f"{measure_hint(run)}")
            else:
                how = "; ".join(TIMING_METHOD_WORDS.get(m, m)
                                for m in str(run.meta.get("timing_method") or "none").split("+"))
                say(f"  estimated: the end-of-epoch training loss ({how}); not measured from a log: "
                    "dropout/batch-norm, augmentation and the generalization gap.")
                say(f"  to measure them, {measure_hint(run)}")
            say(f"  wrote {os.path.join(target, 'report.html')} and {os.path.join(target, 'report.json')}")
    if multi:
        rows = overview_rows(diagnosed)
        try:
            write_page(os.path.join(out_dir, "overview.json"), json.dumps(rows, indent=2, ensure_ascii=False,
                                                                          allow_nan=False))
            from markupsafe import Markup

            from ..report import interactive

            figure = Markup(interactive.embed(interactive.overview_spec([r for r, _ in diagnosed],
                                                                        [str(r["run"]) for r in rows])))
            write_page(os.path.join(out_dir, "overview.html"),
                       render("overview.html.j2", rows=list(zip(rows, links)), figure=figure,
                              plotly_js="", plotly_src=PLOTLY_FILE))
        except OutputPathError as exc:
            raise click.ClickException(f"--out: {exc}") from None
        if text:
            from rich.console import Console
            from rich.table import Table

            table = Table(title=f"losslens overview: {len(rows)} runs", show_lines=False)
            for col in ("run", "verdict", "epochs", "last R", "est. end R", "last V"):
                table.add_column(col, overflow="fold")
            for r in rows:
                est = fmt_num(r["end_of_epoch_train_loss_estimate"])
                if r["end_of_epoch_train_loss_se"] is not None:
                    est += f" ± {r['end_of_epoch_train_loss_se']:.2g}"
                table.add_row(str(r["run"]), r["headline"].replace("_", " "), str(r["epochs"]),
                              fmt_num(r["last_train_loss"]), est, fmt_num(r["last_val_loss"]))
            Console(file=sys.stdout, width=max(100, Console().width), markup=False).print(table)
        say(f"wrote {os.path.join(out_dir, 'overview.html')} and {os.path.join(out_dir, 'overview.json')}")
    if out_format == "json":
        docs = [rep.to_dict() for rep in reports]
        click.echo(json.dumps(docs[0] if not multi else {"runs": docs, "errors": failures}, indent=2,
                              allow_nan=False, ensure_ascii=False, default=str))
    elif out_format == "markdown":
        click.echo("\n".join(rep.to_markdown() for rep in reports), nl=False)
        if failures:
            from ..report.markdown import escape as md

            click.echo("\n**Not read:**\n\n" + "\n".join(f"- {md(f)}" for f in failures))
    if failures:
        sys.exit(1)
    if failing([f for rep in reports for f in rep.findings], fail_on):
        sys.exit(EXIT_FINDINGS)
