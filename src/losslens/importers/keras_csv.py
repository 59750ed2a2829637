"""Keras ``CSVLogger`` files.

Format (Keras 2 and 3): a header ``epoch,<metric>,...,val_<metric>,...`` with
the keys sorted, one row per epoch, ``epoch`` 0-based, ``NA`` in a column with
no value that epoch (``val_`` columns on epochs without validation,
``validation_freq > 1``). ``append=True`` after a resume repeats the header.
``loss`` is the epoch's running mean of the batch losses (train mode, weights
changing, penalties from ``model.losses`` included); ``val_loss`` is computed
after the epoch with the end-of-epoch weights (eval mode, penalties included
as well in Keras 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import LogFormatError, keras_checkpoints, numeric_columns, read_csv, read_text, run_name
from ._epochs import run_from_epoch_columns

__all__ = ["read", "sniff", "split_restarts"]


def sniff(header: list[str]) -> bool:
    """True for a CSV header that looks like a Keras ``CSVLogger`` file."""
    h = [c.strip() for c in header]
    if not h or "step" in h or "created_at" in h:
        return False
    if h[0] == "epoch":
        return any("loss" in c for c in h)
    # a CSV written from History.history (pandas.DataFrame(history.history).to_csv(index=False)): no epoch
    # column, the row index is the epoch; Keras's own names tell it
    return "epoch" not in h and ("loss" in h or "val_loss" in h)


def _checkpoint_meta(ckpts: dict[int, str] | None) -> dict[str, Any]:
    """Checkpoints beside the log as :mod:`losslens.diagnose.checkpoints` reads them: Keras names files by the
    1-based epoch, which is the end of that epoch in time (a "step" of one epoch)."""
    if not ckpts:
        return {}
    return {"checkpoints_on_disk": sorted(ckpts), "checkpoint_names": {str(k): v for k, v in ckpts.items()},
            "checkpoint_steps_per_epoch": 1, "checkpoint_unit": "epoch"}


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None, text: str | None = None):
    """Import a Keras ``CSVLogger`` file.

    Returns
    -------
    Run, or list of Run
        A list when several training runs were appended to the file (the epoch
        restarts at 0: :func:`split_restarts`). One epoch per row; ``train_loss`` = Keras ``loss`` (an epoch mean,
        ``meta["reported_loss_kind"] = "epoch_mean"``), ``VALIDATION`` =
        ``val_loss`` (imported, no standard error), the other columns in
        ``Epoch.metrics``; the end-of-epoch training loss estimated from the
        trend between epoch means (:mod:`losslens.diagnose.timing`).

    Raises
    ------
    LogFormatError
        No ``epoch`` column, a non-numeric cell in a loss or epoch column,
        inconsistent rows, ambiguous loss columns.
    """
    table = read_csv(path, text if text is not None else read_text(path))
    no_epoch = not table.has("epoch")
    if no_epoch and not ("loss" in table.names or "val_loss" in table.names):
        raise LogFormatError(path, f"no 'epoch' column (header: {', '.join(table.names)}); not a Keras CSVLogger file")
    if len(table) == 0:
        raise LogFormatError(path, "header only: no epoch rows")
    epoch = np.arange(len(table), dtype=np.float64) if no_epoch else table.floats("epoch", path)
    cols, notes = numeric_columns(table, path)
    if no_epoch:
        notes.append("no 'epoch' column: row k is epoch k (a History saved as CSV)")
    segments = split_restarts(epoch)
    ckpts = keras_checkpoints(path) if len(segments) == 1 else None   # files of appended runs cannot be told apart
    runs = []
    for k, (a, b) in enumerate(segments):
        seg_notes = list(notes)
        name = None
        if len(segments) > 1:
            name = f"{run_name(path)}[run {k + 1}]"
            seg_notes.append(f"rows {a + 1}–{b} of {len(epoch)}: training run {k + 1} of {len(segments)} appended to "
                             "the same file (the epoch count restarts at 0)")
        runs.append(run_from_epoch_columns(path, epoch[a:b], {c: v[a:b] for c, v in cols.items()},
                                           importer="keras_csv", framework="keras", train_loss=train_loss,
                                           val_loss=val_loss, notes=seg_notes, name=name,
                                           extra_meta={"penalty_in_validation": None, "rows": [a + 1, b],
                                                       **_checkpoint_meta(ckpts)}))
    return runs[0] if len(runs) == 1 else runs


def split_restarts(epoch: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges ``[a, b)`` of the training runs in one file: a new run starts where the epoch drops back to 0.

    ``CSVLogger(append=True)`` appends a fresh ``fit`` (epochs from 0) to the same
    file; a resume from a checkpoint restarts at its epoch k > 0 instead, which
    stays in the same run (the later rows replace the earlier ones).
    """
    starts = [0]
    for i in range(1, len(epoch)):
        if epoch[i] == 0 and epoch[i - 1] > 0:
            starts.append(i)
    bounds = starts + [len(epoch)]
    return [(bounds[j], bounds[j + 1]) for j in range(len(starts))]
