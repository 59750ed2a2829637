"""Import existing training logs as :class:`~losslens.record.Run` s.

>>> from losslens.importers import load_log          # doctest: +SKIP
>>> run = load_log("lightning_logs/version_0/metrics.csv")
>>> from losslens.diagnose import diagnose
>>> diagnose(run).codes()

Formats (detected from the content; ``format=`` overrides):

==================  ===========================================================  ==========================
format              what                                                         module
==================  ===========================================================  ==========================
``keras_csv``       Keras ``CSVLogger`` file                                     :mod:`.keras_csv`
``keras_history``   Keras ``History.history`` dumped to JSON                     :mod:`.keras_history`
``keras_pickle``    the same, pickled (refused unless ``allow_pickle=True``)      :mod:`.keras_history`
``lightning_csv``   Lightning ``CSVLogger`` ``metrics.csv``                       :mod:`.lightning_csv`
``trainer_state``   Hugging Face ``trainer_state.json``                          :mod:`.trainer_state`
``tensorboard``     event files / run folders (Keras, torch, Lightning, HF)      :mod:`.tensorboard`
``fastai``          fastai ``CSVLogger`` ``history.csv``                          :mod:`.fastai`
==================  ===========================================================  ==========================

What a log cannot tell is never guessed: the only inferred quantity is the
end-of-epoch training loss (:mod:`losslens.diagnose.timing`), stored as an
estimate with its standard error. No input is ever executed: pickles are
refused by default and, when allowed, loaded with an unpickler restricted to
containers and numbers.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from typing import Any, Union

from ..record import Run
from ._common import (
    LogFormatError,
    PickleRefusedError,
    SkippedLogWarning,
    check_steps_per_epoch,
    parse_json,
    read_bytes,
)

__all__ = ["load_log", "load_logs", "detect_format", "FORMATS", "LogFormatError", "PickleRefusedError",
           "SkippedLogWarning", "log_groups"]

FORMATS = ("keras_csv", "keras_history", "keras_pickle", "lightning_csv", "trainer_state", "tensorboard", "fastai")

RunOrRuns = Union[Run, list[Run]]


def _csv_header(data: bytes) -> list[str]:
    text = data[:65536].decode("utf-8-sig", errors="replace").replace("\r", "\n")
    first = next((ln for ln in text.split("\n") if ln.strip()), "")
    for d in (",", "\t", ";"):
        if d in first:
            return [c.strip().strip('"') for c in first.split(d)]
    return [first.strip()]


def detect_format(path: Any) -> str:
    """The format of a log file or folder, from its content.

    Parameters
    ----------
    path : path-like
        A file or a folder.

    Returns
    -------
    str
        One of :data:`FORMATS`, or ``"runs"`` for a folder holding several runs.

    Raises
    ------
    LogFormatError
        When the path does not exist or no format matches (the message says
        what was seen).
    """
    from . import fastai, keras_csv, keras_history, lightning_csv, tensorboard, trainer_state

    p = str(path)
    if os.path.isdir(p):
        if tensorboard.event_files(p):
            return "tensorboard"
        for name, fmt in (("metrics.csv", "lightning_csv"), ("trainer_state.json", "trainer_state"),
                          ("history.csv", "fastai")):
            if os.path.isfile(os.path.join(p, name)):
                return fmt
        if _run_folders(p) or _log_files(p):
            return "runs"
        raise LogFormatError(p, "no training log found in this folder (looked for TensorBoard event files, "
                                "metrics.csv, trainer_state.json, history.csv, sub-folders holding them, and "
                                "log files of a known format)")
    if not os.path.exists(p):
        raise LogFormatError(p, "no such file or folder")
    if not os.path.isfile(p):   # a FIFO or a device (/dev/zero) would block or never end
        raise LogFormatError(p, "not a regular file (a pipe, device or socket): only files are read")
    if tensorboard.is_event_file(p):
        return "tensorboard"
    data = read_bytes(p)
    if not data.strip():
        raise LogFormatError(p, "empty file")
    if keras_history.is_pickle(data):
        return "keras_pickle"
    head = data.lstrip()[:1]
    if head in (b"{", b"["):
        obj = parse_json(p, data, "looks like JSON but is not valid JSON")
        if trainer_state.looks_like_trainer_state(obj):
            return "trainer_state"
        if keras_history.looks_like_history(obj):
            return "keras_history"
        keys = list(obj)[:8] if isinstance(obj, dict) else f"a list of {len(obj)} items"
        raise LogFormatError(p, f"JSON that is neither a trainer_state.json (no 'log_history') nor a Keras "
                                f"History (dict of per-epoch lists with a loss key); top level: {keys}")
    if data.startswith(b"SQLite format 3\x00"):
        raise LogFormatError(p, "a SQLite file (a losslens store?): use `losslens runs --store FILE` and "
                                "`losslens report RUN --store FILE` for recorded runs")
    if b"\x00" in data[:4096]:
        raise LogFormatError(p, "binary file that is not a TensorBoard event file or a pickle")
    header = _csv_header(data)
    if fastai.sniff(header):
        return "fastai"
    if lightning_csv.sniff(header):
        return "lightning_csv"
    if keras_csv.sniff(header):
        return "keras_csv"
    h = [c.strip() for c in header]
    if h and h[0] == "epoch" and not any("loss" in c.lower() for c in h):
        raise LogFormatError(p, f"no loss column (available: {', '.join(h[1:11])}); name one with "
                                "--train-loss/--val-loss if it is called otherwise")
    shown = ", ".join(header[:10])[:200]
    raise LogFormatError(p, f"unrecognised log format (first line: {shown!r}); expected a Keras/Lightning/fastai "
                            "CSV with an 'epoch' column, a trainer_state.json, a Keras History JSON or TensorBoard "
                            "event files; use --format to say which")


def _log_files(folder: str) -> list[str]:
    """Files directly in ``folder`` whose content is a known log format (each one run)."""
    out = []
    for name in sorted(os.listdir(folder)):
        f = os.path.join(folder, name)
        if not os.path.isfile(f) or name.startswith("."):
            continue
        try:
            detect_format(f)
        except LogFormatError:
            continue
        out.append(f)
    return out


def _run_folders(folder: str) -> list[str]:
    """Immediate or nested sub-folders (depth ≤ 3) that each hold one run's log."""
    from .tensorboard import event_files

    found: list[str] = []
    visited: set[str] = set()

    def visit(d: str, depth: int) -> None:
        real = os.path.realpath(d)
        if real in visited:  # a symbolic-link loop, or a second link to one folder
            return
        visited.add(real)
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return
        for n in names:
            sub = os.path.join(d, n)
            if not os.path.isdir(sub):
                continue
            if n in ("train", "validation") and event_files(d):
                continue
            if event_files(sub) or any(os.path.isfile(os.path.join(sub, f))
                                       for f in ("metrics.csv", "trainer_state.json", "history.csv")):
                found.append(sub)
            elif depth < 3:
                visit(sub, depth + 1)

    visit(folder, 1)
    # Symbolic links can reach one folder by many paths (a link to a parent makes a loop): one run per real path.
    seen: set[str] = set()
    unique = []
    for f in found:
        real = os.path.realpath(f)
        if real not in seen:
            seen.add(real)
            unique.append(f)
    found = unique
    # Hugging Face output folders keep a trainer_state.json in every checkpoint-N: each is a prefix of the
    # last one, so only the latest checkpoint of a folder is a run.
    latest: dict[str, tuple[int, str]] = {}
    rest = []
    for f in found:
        m = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(f))
        if m and os.path.isfile(os.path.join(f, "trainer_state.json")):
            parent = os.path.dirname(f)
            if parent not in latest or int(m.group(1)) > latest[parent][0]:
                latest[parent] = (int(m.group(1)), f)
        else:
            rest.append(f)
    return sorted(rest + [f for _, f in latest.values()])


def load_log(path: Any, format: str | None = None, train_loss: str | None = None, val_loss: str | None = None,
             allow_pickle: bool = False, steps_per_epoch: float | None = None) -> RunOrRuns:
    """Import a training log.

    Parameters
    ----------
    path : path-like
        A log file, a run folder (TensorBoard run, Lightning version folder,
        Hugging Face checkpoint folder) or a folder of runs.
    format : str, optional
        One of :data:`FORMATS`; detected from the content when omitted.
    train_loss, val_loss : str, optional
        The metric names to use as training and validation loss
        (:mod:`.roles` chooses otherwise).
    allow_pickle : bool
        Load pickled Keras histories (with a warning). Default False: refused
        with :class:`PickleRefusedError`, because unpickling can execute code.
    steps_per_epoch : float, optional
        Optimizer steps per epoch, for logs that do not record it (fastai's
        EMA lag; TensorBoard logs without validation).

    Returns
    -------
    Run or list of Run
        A list for a folder of runs (or a JSON file nesting several histories).
        Losses are per sample as logged; every run has ``status="imported"``.

    Raises
    ------
    LogFormatError
        A subclass of ``ValueError`` whose message names the file and the
        reason, for every unreadable, unrecognised or inconsistent input. In a
        folder of runs, a log that cannot be read is skipped with a
        :class:`SkippedLogWarning` naming it, and the error is raised only when
        none could be read.
    """
    from . import fastai, keras_csv, keras_history, lightning_csv, tensorboard, trainer_state

    p = str(path)
    if format is not None and format not in FORMATS:
        raise LogFormatError(p, f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    check_steps_per_epoch(p, steps_per_epoch)
    fmt = format or detect_format(p)
    if fmt == "runs":
        runs = []
        subs = _run_folders(p) or _log_files(p)
        bad = 0
        for sub in subs:
            try:
                r = load_log(sub, None, train_loss, val_loss, allow_pickle, steps_per_epoch)
            except LogFormatError as exc:  # one bad log does not cost the others
                bad += 1
                warnings.warn(str(exc), SkippedLogWarning, stacklevel=2)
                continue
            runs.extend(r if isinstance(r, list) else [r])
        if bad and not runs:
            raise LogFormatError(p, f"none of the {len(subs)} logs in this folder could be read")
        return runs
    if os.path.isdir(p) and fmt != "tensorboard":
        name = {"lightning_csv": "metrics.csv", "trainer_state": "trainer_state.json", "fastai": "history.csv"}.get(fmt)
        if name is None or not os.path.isfile(os.path.join(p, name)):
            raise LogFormatError(p, f"format {fmt!r} needs a file, not a folder")
        p = os.path.join(p, name)
    if not os.path.exists(p):
        raise LogFormatError(p, "no such file or folder")
    if fmt == "keras_csv":
        return keras_csv.read(p, train_loss, val_loss)
    if fmt == "keras_history":
        return keras_history.read(p, train_loss, val_loss)
    if fmt == "keras_pickle":
        return keras_history.read_pickle(p, train_loss, val_loss, allow_pickle=allow_pickle)
    if fmt == "lightning_csv":
        return lightning_csv.read(p, train_loss, val_loss)
    if fmt == "trainer_state":
        return trainer_state.read(p, train_loss, val_loss)
    if fmt == "fastai":
        return fastai.read(p, train_loss, val_loss, steps_per_epoch=steps_per_epoch)
    return tensorboard.read(p, train_loss, val_loss, steps_per_epoch=steps_per_epoch)


def load_logs(paths: Any, **kwargs: Any) -> list[Run]:
    """Import several logs (each path as in :func:`load_log`) into one flat list of runs."""
    out: list[Run] = []
    for p in paths:
        r = load_log(p, **kwargs)
        out.extend(r if isinstance(r, list) else [r])
    return out


def log_groups(folder: str) -> list[tuple[str, str, list[str]]]:
    """The runs of a folder of logs described by a ``manifest.tsv`` (columns ``kind``, ``local_file``), in
    manifest order: ``(kind, label, files)``; the train and validation TensorBoard event files of one run (named
    ``<n>__...__train__events...`` and ``<n>__...__validation__events...``) form one group.

    Raises
    ------
    OSError
        If ``manifest.tsv`` cannot be read.
    """
    manifest = os.path.join(folder, "manifest.tsv")
    with open(manifest, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out: list[tuple[str, str, list[str]]] = []
    seen: dict[str, int] = {}
    for r in rows:
        kind, local = r["kind"], r["local_file"]
        base = os.path.basename(local)
        m = re.match(r"(\d+)__", base)
        if kind == "tfevents" and m and re.search(r"__(train|validation)__events", base):
            key = f"{kind}:{m.group(1)}"
            if key in seen:
                out[seen[key]][2].append(local)
                continue
            seen[key] = len(out)
        out.append((kind, local, [local]))
    return out
