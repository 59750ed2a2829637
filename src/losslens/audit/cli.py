"""``losslens audit TRAIN VAL``: audit a split stored in files.

Readable files (nothing is unpickled or executed):

=================  ============================================================
extension          read as
=================  ============================================================
``.npy``           :func:`numpy.load` with ``allow_pickle=False``
``.npz``           the array named by ``--key`` (default: the only array, or
                   ``x``/``X``/``data``/``images``/``inputs``), ``allow_pickle=False``
``.csv``           :func:`pandas.read_csv` (a table)
``.parquet``       :func:`pandas.read_parquet` (needs pyarrow)
``.txt``           one text per line (UTF-8)
=================  ============================================================

Labels and groups are either a column name (``--label-col``, ``--group-col``,
tables) or files with one value per sample (``--train-labels``/``--val-labels``,
``--train-groups``/``--val-groups``: ``.npy``, ``.txt``, or ``.csv`` with one
column). Embeddings for the near-duplicate search: ``--train-embeddings`` /
``--val-embeddings`` (``.npy``/``.npz``). Per-sample losses: ``--val-losses`` and
``--probe-losses``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import click
import numpy as np

from ..report.cli import EXIT_FINDINGS, OUTPUT_FORMATS, fail_on_option, failing

__all__ = ["audit", "read_split_file", "read_vector_file"]

_NPZ_KEYS = ("x", "X", "data", "images", "inputs", "features", "embeddings")


def _err(path: str, msg: str) -> click.ClickException:
    return click.ClickException(f"{path}: {msg}")


def _check_npy_size(path: str) -> None:
    """Refuse a ``.npy`` whose header declares more data than the file holds (memory follows the file's size,
    not the header's claim)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        have = os.fstat(fh.fileno()).st_size - fh.tell()
    if need > have:
        raise _err(path, f"the header declares an array of shape {tuple(shape)} ({need} bytes) but the file holds "
                         f"{have} bytes of data")


#: Python argument names of :func:`audit_split` as the flags of this command, for its error messages.
_FLAGS = {"image_shape": "--image-shape", "val_losses": "--val-losses", "probe_losses": "--probe-losses",
          "near_threshold": "--threshold", "n_permutations": "--permutations", "embeddings": "--train-embeddings"
          "/--val-embeddings", "labels": "--train-labels/--val-labels (or --label-col)",
          "groups": "--train-groups/--val-groups (or --group-col)"}


def cli_flags(message: str) -> str:
    """An error of :func:`audit_split` in the command's terms: ``image_shape=`` becomes ``--image-shape``,
    ``kind='table'`` becomes ``--kind table``."""
    message = re.sub(r"\bkind=['\"]?(\w+)['\"]?", r"--kind \1", message)
    message = re.sub(r"\bimage_shape=?", "--image-shape", message)
    for name, flag in _FLAGS.items():
        if name in ("embeddings", "labels", "groups"):
            message = re.sub(rf"^{name}\b", flag, message)
        else:
            message = re.sub(rf"\b{name}\b", flag, message)
    return message


def read_split_file(path: str, key: str | None = None) -> Any:
    """Read one split from a file (see the module table).

    Parameters
    ----------
    path : str
    key : str, optional
        Array name inside a ``.npz``.

    Returns
    -------
    numpy.ndarray, pandas.DataFrame or list of str

    Raises
    ------
    click.ClickException
        With the file name: missing file, unknown extension, pickled or
        unreadable content, missing pyarrow for parquet.
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise _err(path, "no such file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            _check_npy_size(path)
            return np.load(path, allow_pickle=False)
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if key is not None:
                    if key not in names:
                        raise _err(path, f"no array {key!r}; arrays are {names}")
                    return z[key]
                if len(names) == 1:
                    return z[names[0]]
                k = next((n for n in _NPZ_KEYS if n in names), None)
                if k is None:
                    raise _err(path, f"several arrays {names}; choose one with --key")
                return z[k]
        if ext == ".csv":
            return pd.read_csv(path)
        if ext == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise _err(path, "reading parquet needs pyarrow (pip install pyarrow)") from None
            return pd.read_parquet(path)
        if ext == ".txt":
            with open(path, encoding="utf-8") as f:
                return [line.rstrip("\n").rstrip("\r") for line in f]
    except click.ClickException:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise _err(path, "contains Python objects (pickled); losslens never unpickles files. Save plain "
                             "numeric or string arrays") from None
        raise _err(path, f"cannot read: {exc}") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise _err(path, f"cannot read: {exc}") from None
    except MemoryError:
        raise _err(path, "the array it declares does not fit in memory") from None
    raise _err(path, f"unsupported extension {ext!r}; use .npy, .npz, .csv, .parquet or .txt")


def read_vector_file(path: str) -> np.ndarray:
    """Read one value per sample (labels, groups, losses) from ``.npy``/``.npz``/``.txt``/``.csv``.

    ``.txt`` files: one value per non-empty line; read as integers or floats
    when every line is a number (so labels ``3`` in a text file equal ``3`` in
    a ``.npy`` file), as strings otherwise.

    Raises
    ------
    click.ClickException
        With the file name, if the content is not one value per line/row.
    """
    x = read_split_file(path)
    if isinstance(x, list):  # text lines: numbers when every line is one, else strings
        x = [line.strip() for line in x if line.strip() != ""]
        try:
            v = np.asarray(x, dtype=np.float64)
        except ValueError:
            return np.asarray(x)
        return v.astype(np.int64) if np.all(np.isfinite(v)) and np.all(v == np.round(v)) else v
    if hasattr(x, "columns"):
        if x.shape[1] != 1:
            raise _err(path, f"expected one column, got {x.shape[1]}: {list(x.columns)[:10]}")
        return x.iloc[:, 0].to_numpy()
    x = np.asarray(x)
    if x.ndim == 2 and 1 in x.shape:
        x = x.ravel()
    if x.ndim != 1:
        raise _err(path, f"expected one value per sample (a 1-D array), got shape {x.shape}")
    return x


def _pair(opt_a: str | None, opt_b: str | None, name: str, reader: Any) -> Any:
    if (opt_a is None) != (opt_b is None):
        raise click.UsageError(f"--train-{name} and --val-{name} must be given together")
    if opt_a is None:
        return None
    return reader(opt_a), reader(opt_b)


@click.command(name="audit")
@click.argument("train", type=click.Path(dir_okay=False))
@click.argument("val", type=click.Path(dir_okay=False))
@click.option("--key", help="Array name inside .npz inputs.")
@click.option("--label-col", help="Label column of CSV/parquet inputs.")
@click.option("--group-col", help="Group-key column (patient, subject, session) of CSV/parquet inputs.")
@click.option("--train-labels", type=click.Path(dir_okay=False), help="Labels of the training samples (file).")
@click.option("--val-labels", type=click.Path(dir_okay=False), help="Labels of the validation samples (file).")
@click.option("--train-groups", type=click.Path(dir_okay=False), help="Group keys of the training samples (file).")
@click.option("--val-groups", type=click.Path(dir_okay=False), help="Group keys of the validation samples (file).")
@click.option("--train-embeddings", type=click.Path(dir_okay=False),
              help="Embeddings of the training samples (.npy/.npz, shape (n, d)) for the near-duplicate search.")
@click.option("--val-embeddings", type=click.Path(dir_okay=False), help="Embeddings of the validation samples.")
@click.option("--val-losses", type=click.Path(dir_okay=False),
              help="Per-sample validation losses, in the order of VAL (eval mode).")
@click.option("--probe-losses", type=click.Path(dir_okay=False),
              help="Per-sample eval-mode losses on the probe set (training samples, clean inputs).")
@click.option("--kind", type=click.Choice(["auto", "array", "image", "table", "text"]), default="auto",
              show_default=True, help="How samples are read.")
@click.option("--image-shape", help="Read flat rows as images, e.g. 8x8 or 28x28x1.")
@click.option("--no-near", is_flag=True, help="Skip the near-duplicate search.")
@click.option("--no-shift", is_flag=True, help="Skip the adversarial-validation feature-shift test.")
@click.option("--threshold", type=float, default=0.13, show_default=True,
              help="Near-duplicate threshold relative to the median nearest-neighbour distance (cleanlab).")
@click.option("--permutations", type=click.IntRange(0, 999), default=19, show_default=True,
              help="Permutations of the feature-shift null.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML page here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the JSON result here.")
@click.option("--format", "out_format", type=click.Choice(OUTPUT_FORMATS), default="text", show_default=True,
              help="What to print: the findings, the JSON document, or Markdown (for $GITHUB_STEP_SUMMARY).")
@fail_on_option
def audit(train: str, val: str, key: str | None, label_col: str | None, group_col: str | None,
          train_labels: str | None, val_labels: str | None, train_groups: str | None, val_groups: str | None,
          train_embeddings: str | None, val_embeddings: str | None, val_losses: str | None,
          probe_losses: str | None, kind: str, image_shape: str | None, no_near: bool, no_shift: bool,
          threshold: float, permutations: int, seed: int, html_path: str | None, json_path: str | None,
          out_format: str, fail_on: str | None) -> None:
    """Audit a train/validation split: exact and near duplicates, group leaks, label and input shift.

    TRAIN and VAL are .npy, .npz, .csv, .parquet or .txt files (one text per line).
    """
    from rich.console import Console
    from rich.markup import escape

    from ..report._env import OutputPathError, check_outputs, write_page
    from ..report.audit import save_page
    from . import audit_split

    try:
        check_outputs({"--html": html_path, "--json": json_path})
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None

    if label_col and (train_labels or val_labels):
        raise click.UsageError("use either --label-col or --train-labels/--val-labels")
    if group_col and (train_groups or val_groups):
        raise click.UsageError("use either --group-col or --train-groups/--val-groups")
    shape = None
    if image_shape:
        try:
            shape = tuple(int(s) for s in image_shape.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"expected e.g. 8x8 or 28x28x3, got {image_shape!r}",
                                     param_hint="--image-shape") from None
    tr, va = read_split_file(train, key), read_split_file(val, key)
    labels: Any = label_col or _pair(train_labels, val_labels, "labels", read_vector_file)
    groups: Any = group_col or _pair(train_groups, val_groups, "groups", read_vector_file)
    emb = _pair(train_embeddings, val_embeddings, "embeddings", lambda p: np.asarray(read_split_file(p)))
    vl = read_vector_file(val_losses) if val_losses else None
    pl = read_vector_file(probe_losses) if probe_losses else None
    if pl is not None and vl is None:
        raise click.UsageError("--probe-losses needs --val-losses")
    try:
        res = audit_split(tr, va, labels=labels, groups=groups, embeddings=emb, val_losses=vl, probe_losses=pl,
                          kind=kind, image_shape=shape, near=not no_near, near_threshold=threshold,
                          shift=not no_shift, n_permutations=permutations, seed=seed)
    except (ValueError, TypeError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise click.ClickException(f"audit of {train} / {val}: {cli_flags(msg)}") from None
    findings = res.findings()
    # with --format json/markdown stdout holds that document alone; the notes go to stderr
    console = Console() if out_format == "text" else Console(file=sys.stderr)
    if out_format == "text":
        for line in res.summary_lines():
            console.print(escape(line))
        for f in findings:
            style = {"info": "green", "warning": "yellow", "error": "red"}[f.severity]
            console.print(f"[{style}]{f.severity}[/] [bold]{escape(f.title)}[/] ({escape(f.code)})")
            if f.recommendation:
                console.print("  " + escape(f.recommendation))
    elif out_format == "json":
        click.echo(json.dumps(res.to_dict(), indent=1, allow_nan=False, default=str))
    else:
        from ..report.markdown import escape as md
        from ..report.markdown import findings_markdown

        click.echo(f"### losslens split audit: {md(os.path.basename(train))} / {md(os.path.basename(val))}\n")
        click.echo("\n".join(f"- {md(line)}" for line in res.summary_lines()) + "\n")
        click.echo(findings_markdown(findings) or "No findings.")
    try:
        if html_path:
            save_page(res, html_path, title=f"losslens split audit: {os.path.basename(train)} / "
                                      f"{os.path.basename(val)}")
            console.print(f"HTML written to {escape(html_path)}")
        if json_path:
            write_page(json_path, json.dumps(res.to_dict(), indent=1, allow_nan=False))
            console.print(f"JSON written to {escape(json_path)}")
    except OutputPathError as exc:
        raise click.ClickException(str(exc)) from None
    if failing(findings, fail_on):
        sys.exit(EXIT_FINDINGS)
