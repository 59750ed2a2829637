"""Runs from per-epoch tables (Keras CSV, Keras History, fastai) (private)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..record import LOGGED_NAMES, VALIDATION, Epoch, Measurement, Steps
from ._common import LogFormatError, build_epochs, finish_run
from .roles import assign_roles


def run_from_epoch_columns(path: Any, epoch: np.ndarray, columns: Mapping[str, np.ndarray], *, importer: str,
                           framework: str, train_loss: str | None, val_loss: str | None,
                           reported_loss_kind: str = "epoch_mean", notes: list[str] | None = None,
                           extra_meta: dict[str, Any] | None = None, steps: Steps | None = None,
                           name: str | None = None):
    """A run from one row per epoch.

    Parameters
    ----------
    epoch : numpy.ndarray, shape (n,)
        0-based epoch of each row (float, must be whole numbers ≥ 0).
    columns : mapping name -> numpy.ndarray, shape (n,)
        Numeric columns (NaN where missing).

    Rows that repeat an epoch (a resumed run appended to the same log) are
    resolved by keeping the last row, with a note.
    """
    notes = list(notes or [])
    epoch = np.asarray(epoch, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(epoch) | (epoch < 0) | (np.abs(epoch - np.round(epoch)) > 1e-9)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LogFormatError(path, f"row {i + 1}: epoch {float(epoch[i])!r} is not a whole number ≥ 0")
    if epoch.size and epoch.max() > 10_000_000:
        raise LogFormatError(path, f"epoch {int(epoch.max())} is implausibly large")
    ep = np.round(epoch).astype(np.int64)
    roles = assign_roles(list(columns), path, train_loss, val_loss)
    last: dict[int, int] = {}
    for i, e in enumerate(ep):
        last[int(e)] = i
    if len(last) < ep.size:
        notes.append(f"{ep.size - len(last)} rows repeat an earlier epoch (resumed run?); the last row of each "
                     "epoch is used")
    if np.any(np.diff(ep) < 0):
        notes.append("rows are not in epoch order; sorted by epoch")
    keep = np.array(sorted(last.values(), key=lambda i: ep[i]), dtype=np.int64)
    idx = ep[keep]
    tr = columns[roles.train_loss][keep] if roles.train_loss else np.full(keep.size, np.nan)
    va = columns[roles.val_loss][keep] if roles.val_loss else np.full(keep.size, np.nan)
    metrics: dict[int, dict[str, float]] = {}
    for name_, col in columns.items():
        if name_ in (roles.train_loss, roles.val_loss):
            continue
        vals = col[keep]
        for e, v in zip(idx, vals):
            if not math.isnan(v):
                metrics.setdefault(int(e), {})[name_] = float(v)
    if steps is None and roles.train_loss and np.isnan(tr).any():
        # a NaN in a per-epoch training column is a logged NaN (these writers never leave it empty):
        # record it as a non-finite value at the epoch centre so that it is reported as a divergence
        bad = np.isnan(tr)
        steps = Steps.build(idx[bad], tr[bad], position=idx[bad] + 0.5, span=np.full(int(bad.sum()), np.nan))
        notes.append(f"{roles.train_loss!r} is NaN in {int(bad.sum())} epochs (first: {int(idx[bad][0])})")
    epochs = build_epochs(idx, train={int(e): float(v) for e, v in zip(idx, tr)},
                          val={int(e): float(v) for e, v in zip(idx, va)}, metrics=metrics)
    extra_meta = dict(extra_meta or {})
    if read_losslens_columns(epochs, notes):
        extra_meta.update(framework_adapter="losslens.keras.LossLens", probe_set="measured by the losslens callback",
                          how_to_measure="the losslens callback measured C (and T) each epoch; their standard "
                                         "errors need the store: LossLens(store='losslens.db'), then `losslens "
                                         "report RUN`")
    return finish_run(path, epochs=epochs, steps=steps, importer=importer, framework=framework,
                      reported_loss_kind=reported_loss_kind, roles=roles.to_dict(), notes=notes,
                      extra_meta=extra_meta, name=name)


#: Columns the losslens callbacks add to the framework's logs (so its CSV logger writes them), and what they are.
LOSSLENS_COLUMNS = {name: kind for kind, name in LOGGED_NAMES.items()}


def read_losslens_columns(epochs: list[Epoch], notes: list[str]) -> bool:
    """Read the losslens callback's own columns back as the measurements they are (C, T, the data part of V and
    of R, and Ω), not as metrics of the training loop. True when the log has them."""
    if not any("eval_train_loss" in e.metrics for e in epochs):
        return False
    for e in epochs:
        for col, kind in LOSSLENS_COLUMNS.items():
            v = e.metrics.pop(col, None)
            if v is not None and math.isfinite(v):
                if kind == VALIDATION and VALIDATION in e.measurements:
                    e.metrics["val_loss"] = e.measurements[VALIDATION].mean  # the compiled loss, penalty included
                e.measurements[kind] = Measurement(kind, float(v), math.nan, 0, None, "imported")
        data, penalty = e.metrics.pop("data_loss", None), e.metrics.pop("penalty_loss", None)
        if data is not None and math.isfinite(data):
            e.train_loss = float(data)
            e.penalty = float(penalty) if penalty is not None and math.isfinite(penalty) else 0.0
    notes.append("columns written by the losslens callback read as its measurements: eval_train_loss = C, "
                 "train_mode_loss = T, eval_augmented_loss = A, losslens_val_loss = V (data part), and from Keras "
                 "data_loss = R, penalty_loss = Ω; a log keeps their means only, so they have no standard errors")
    return True
