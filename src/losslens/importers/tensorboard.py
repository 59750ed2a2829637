"""TensorBoard event files: Keras (TF1 and TF2), ``torch.utils.tensorboard``, Lightning, Hugging Face.

Every scalar is read — no reservoir sampling: tensorboard's
``EventAccumulator`` with ``size_guidance`` 0 for scalars and tensors. Scalars
come as ``simple_value`` (TF1, torch, Lightning, HF) or as rank-0 tensors with
the ``scalars`` plugin (TF2 / Keras 3, written by ``tf.summary.scalar``); both
are read.

Writers and what their numbers mean:

* **Keras TF2 / Keras 3** ``TensorBoard`` callback: a run folder with ``train/``
  and ``validation/`` sub-folders; ``epoch_loss`` at step = epoch (0-based) is the
  epoch mean (train) or the validation loss; ``batch_loss`` (``update_freq`` set)
  at step = global batch count (1-based) is the *running mean since the start
  of the epoch*; ``validation/evaluation_loss_vs_iterations`` at step =
  optimizer iterations gives the epoch ends in steps. Running means are turned
  back into window means: ``(k m_k − j m_j) / (k − j)`` over batches ``(j, k]``.
* **Keras TF1**: ``loss`` per batch at step = samples (or batches) seen,
  ``val_loss`` at the epoch ends in the same units.
* **Lightning** ``TensorBoardLogger``: tags as logged plus an ``epoch`` tag at
  every logged step; read like :mod:`.lightning_csv`.
* **Hugging Face**: ``train/loss`` (window means), ``train/epoch`` (fractional
  epoch at each step), ``eval/loss``; read like :mod:`.trainer_state`.
* **torch.utils.tensorboard** (user tags): the validation tag's steps are the
  epoch ends in the training tag's step units when the training tag has more
  points; with equal counts, both are per-epoch values.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import tempfile
import warnings
from typing import Any, Iterable

import numpy as np

from ..record import Run, Steps
from ._common import (
    MAX_EPOCHS_PER_RECORD,
    LogFormatError,
    build_epochs,
    finish_run,
    place_in_epochs,
    read_bytes,
    run_name,
)
from .roles import assign_roles

__all__ = ["read", "read_files", "event_files", "is_event_file", "load_scalars"]

#: Event files are read into memory only to skip damaged records; above this size they are refused.
MAX_EVENT_BYTES = 1 << 30

_SUBDIRS = ("train", "validation")


def is_event_file(path: Any) -> bool:
    """True for a TensorBoard event file (by name, or by its first record holding ``brain.Event``)."""
    p = str(path)
    if not os.path.isfile(p):   # never open a FIFO or a device to sniff it
        return False
    if "tfevents" in os.path.basename(p):
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    return b"brain.Event" in head


def event_files(folder: Any) -> dict[str, list[str]]:
    """Event files of one run folder, by tag prefix ('' for the folder itself, 'train', 'validation')."""
    out: dict[str, list[str]] = {}
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise LogFormatError(folder, f"cannot list the folder: {exc.strerror or exc}") from None
    for name in entries:
        p = os.path.join(folder, name)
        if os.path.isfile(p) and "tfevents" in name:
            out.setdefault("", []).append(p)
    for sub in _SUBDIRS:
        d = os.path.join(folder, sub)
        if os.path.isdir(d):
            files = sorted(os.path.join(d, n) for n in os.listdir(d) if "tfevents" in n)
            if files:
                out[sub] = files
    return out


class _DataLoss(logging.Handler):
    """Catches the reader's note that it stopped at a record that failed its length or CRC check (it logs that
    at debug level and silently drops the rest of the file)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hit = False

    def emit(self, record: logging.LogRecord) -> None:
        if "Truncated record" in record.getMessage():
            self.hit = True


def valid_records(data: bytes) -> tuple[bytes, int, bool]:
    """The records of a TFRecord event file whose length and data CRCs hold, re-framed as one byte string.

    A record whose data fails its CRC (its length is intact) is skipped; after a damaged length the scan moves
    byte by byte to the next offset whose length CRC holds. Format: ``uint64 length, uint32 masked CRC-32C of
    the length, data, uint32 masked CRC-32C of the data`` (TensorFlow ``core/lib/io/record_writer``).

    Returns
    -------
    (bytes, int, bool)
        The valid records; the number of damaged records skipped (runs of bytes between two valid records count
        as one); whether the file ends in an incomplete record (normal while a writer is still running).
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    out, skipped, off, n_bytes, resyncing = [], 0, 0, len(data), False
    while off + 12 <= n_bytes:
        head = data[off:off + 8]
        if masked_crc32c(head) != struct.unpack_from("<I", data, off + 8)[0]:
            if not resyncing:
                skipped += 1
                resyncing = True
            off += 1
            continue
        length = struct.unpack_from("<Q", head)[0]
        end = off + 12 + length + 4
        if end > n_bytes:
            return b"".join(out), skipped, True
        payload = data[off + 12:end - 4]
        if masked_crc32c(payload) != struct.unpack_from("<I", data, end - 4)[0]:
            if not resyncing:
                skipped += 1
            resyncing = True
            off = end
            continue
        resyncing = False
        out.append(data[off:end])
        off = end
    return b"".join(out), skipped, off < n_bytes and not resyncing


def load_scalars(path: Any, notes: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of one event file (or folder of files): tag -> (steps, values), in file order.

    A file with damaged records (a failed CRC mid-file) is read past them: the valid records are kept, and a
    line saying how many were skipped goes into ``notes`` (the run's import notes).

    Raises
    ------
    LogFormatError
        When the file is not a readable event file (bad record length, CRC, protobuf).
    """
    catcher = _DataLoss()
    acc = _accumulate(path, catcher)
    if catcher.hit and os.path.isfile(str(path)):
        data = read_bytes(path, MAX_EVENT_BYTES)
        good, skipped, truncated = valid_records(data)
        with tempfile.TemporaryDirectory(prefix="losslens-tb-") as tmp:
            clean = os.path.join(tmp, os.path.basename(str(path)))
            with open(clean, "wb") as fh:
                fh.write(good)
            acc = _accumulate(clean, _DataLoss(), shown=path)
            out = _scalars(acc)
        if notes is not None:
            if skipped:
                notes.append(f"{os.path.basename(str(path))}: {skipped} damaged record(s) (failed CRC check) "
                             "skipped; the values after them were read")
            if truncated:
                notes.append(f"{os.path.basename(str(path))}: the last record is incomplete (a writer still "
                             "running, or a copy cut short); it was not read")
        return out
    return _scalars(acc)


def _accumulate(path: Any, catcher: logging.Handler, shown: Any = None) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError as exc:  # pragma: no cover - tensorboard is a dependency of the extra
        raise LogFormatError(path, f"reading TensorBoard files needs the 'tensorboard' package "
                                   f"(pip install 'losslens[tensorboard]'): {exc}") from None
    guidance = {ea.SCALARS: 0, ea.TENSORS: 0, ea.HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1,
                ea.COMPRESSED_HISTOGRAMS: 1}
    log = logging.getLogger("tensorboard")  # tensorboard.util.tb_logging
    level, propagate = log.level, log.propagate
    log.addHandler(catcher)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # the reader's debug lines stay out of the user's logs
    try:
        acc = ea.EventAccumulator(str(path), size_guidance=guidance, purge_orphaned_data=True)
        acc.Reload()
    except Exception as exc:  # the reader raises many types on corrupt input
        raise LogFormatError(shown if shown is not None else path,
                             f"not a readable TensorBoard event file: {type(exc).__name__}: {exc}") from None
    finally:
        log.removeHandler(catcher)
        log.setLevel(level)
        log.propagate = propagate
    return acc


def _scalars(acc: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.util import tensor_util

    tags = acc.Tags()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag in tags.get("scalars", []):
        evs = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in evs], dtype=np.float64),
                    np.array([e.value for e in evs], dtype=np.float64))
    for tag in tags.get("tensors", []):
        steps, vals = [], []
        for e in acc.Tensors(tag):
            try:
                arr = tensor_util.make_ndarray(e.tensor_proto)
            except Exception:
                break
            if arr.size != 1 or arr.dtype.kind not in "fiu":
                break
            steps.append(e.step)
            vals.append(float(arr.reshape(())))
        else:
            if steps:
                out[tag] = (np.array(steps, dtype=np.float64), np.array(vals, dtype=np.float64))
    return out


def _merge(series: Iterable[dict[str, tuple[np.ndarray, np.ndarray]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Concatenate the tags of several files, stable-sorted by step (repeated steps kept)."""
    out: dict[str, list] = {}
    for d in series:
        for k, (s, v) in d.items():
            out.setdefault(k, []).append((s, v))
    merged = {}
    for k, parts in out.items():
        s = np.concatenate([p[0] for p in parts])
        v = np.concatenate([p[1] for p in parts])
        order = np.argsort(s, kind="stable")
        merged[k] = (s[order], v[order])
    return merged


def _dedupe(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One value per step: the last one written (a restarted run rewrites its steps)."""
    keep = np.ones(s.size, dtype=bool)
    keep[:-1] = s[1:] != s[:-1]
    return s[keep], v[keep]


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None,
         steps_per_epoch: float | None = None) -> Run:
    """Import one TensorBoard run: an event file, or a run folder (with ``train/``/``validation/`` for Keras).

    Returns
    -------
    Run
        See the module docstring for what each writer's numbers become.

    Raises
    ------
    LogFormatError
        Unreadable files, no scalars, no loss tag, ambiguous tags.
    """
    if os.path.isdir(path):
        groups = event_files(path)
        if not groups:
            raise LogFormatError(path, "no TensorBoard event files (events.out.tfevents.*) in this folder")
        files = [(prefix, f) for prefix, fs in groups.items() for f in fs]
    else:
        parent = os.path.basename(os.path.dirname(os.path.abspath(str(path))))
        files = [(parent if parent in _SUBDIRS else "", str(path))]
    return read_files(files, train_loss=train_loss, val_loss=val_loss, steps_per_epoch=steps_per_epoch,
                      source=path)


def read_files(files: list[tuple[str, str]], train_loss: str | None = None, val_loss: str | None = None,
               steps_per_epoch: float | None = None, source: Any = None, name: str | None = None) -> Run:
    """Import event files that form one run; each is given with its tag prefix ('' / 'train' / 'validation').

    Raises
    ------
    LogFormatError
        As :func:`read`.
    """
    source = source if source is not None else files[0][1]
    parts = []
    damage: list[str] = []
    for prefix, f in files:
        sc = load_scalars(f, damage)
        if not prefix and "epoch_loss" in sc:
            # a Keras TF2 file given on its own: its writer is told by its tags
            prefix = "validation" if any(k.startswith("evaluation_") for k in sc) else "train"
        parts.append({(f"{prefix}/{k}" if prefix else k): v for k, v in sc.items()})
    data = _merge(parts)
    if not data:
        raise LogFormatError(source, "no scalar values in the event file(s)" + (f" ({'; '.join(damage)})"
                                                                                if damage else ""))
    run = _read_data(source, data, train_loss, val_loss, steps_per_epoch, name)
    run.meta.setdefault("import_notes", []).extend(damage)
    if damage:
        run.meta["damaged_records"] = damage  # the diagnosis reports it (recording.damaged_log)
    return run


def _read_data(source: Any, data: dict[str, tuple[np.ndarray, np.ndarray]], train_loss: str | None,
               val_loss: str | None, steps_per_epoch: float | None, name: str | None) -> Run:
    tags = list(data)
    rname = name or (run_name(source) if not os.path.isdir(source) else os.path.basename(os.path.abspath(source)))
    tf1_epoch_means: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not any(t in data for t in ("train/epoch_loss", "validation/epoch_loss", "train/epoch", "epoch")):
        # Keras TF1 writes the epoch mean of each metric at the epoch-end step, right after the last
        # batch's value at the same step: the second value of a repeated step is the epoch's value.
        for t, (st, v) in data.items():
            rep = np.flatnonzero(st[1:] == st[:-1]) + 1
            if rep.size:
                tf1_epoch_means[t] = (st[rep], v[rep])
    data = {t: _dedupe(*sv) if t not in tf1_epoch_means else _first(*sv) for t, sv in data.items()}
    if any(t in data for t in ("train/epoch_loss", "validation/epoch_loss")):
        return _keras_tf2(source, data, train_loss, val_loss, rname)
    if "train/epoch" in data and any(t.startswith("train/") for t in tags):
        return _huggingface(source, data, train_loss, val_loss, rname)
    if "epoch" in data:
        return _lightning(source, data, train_loss, val_loss, rname)
    return _generic(source, data, train_loss, val_loss, steps_per_epoch, rname, tf1_epoch_means)


def _first(s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One value per step: the first one written (the batch value, before an epoch-end value at the same step)."""
    keep = np.ones(s.size, dtype=bool)
    keep[1:] = s[1:] != s[:-1]
    return s[keep], v[keep]


def _keras_tf2(path, data, train_loss, val_loss, name) -> Run:
    names = [t for t in data if not t.startswith("validation/evaluation_")]
    names = [t for t in names if not t.endswith("batch_loss")] + [t for t in names if t.endswith("batch_loss")]
    roles = assign_roles(names, path, train_loss, val_loss)
    notes: list[str] = []
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    if roles.train_loss:
        s, v = data[roles.train_loss]
        train = {int(a): float(b) for a, b in zip(s, v)}
    if roles.val_loss:
        s, v = data[roles.val_loss]
        val = {int(a): float(b) for a, b in zip(s, v)}
    metrics: dict[int, dict[str, float]] = {}
    for t, (s, v) in data.items():
        if t in (roles.train_loss, roles.val_loss) or "batch_" in t or "evaluation_" in t:
            continue
        for a, b in zip(s, v):
            metrics.setdefault(int(a), {})[t] = float(b)
    indices = sorted(set(train) | set(val))
    if not indices:
        raise LogFormatError(path, "no epoch_loss values")
    # epoch ends in optimizer steps, from the validation writer's "evaluation_loss_vs_iterations"
    bounds = None
    ev = data.get("validation/evaluation_loss_vs_iterations")
    if ev is not None and ev[0].size == len(val) and ev[0].size:
        ends = dict(zip(sorted(val), ev[0]))
        if all(e in ends for e in indices):
            bounds = np.concatenate([[0.0], [ends[e] for e in indices]])
    steps = Steps()
    batch = data.get("train/batch_loss")
    if batch is not None and batch[0].size:
        g, m = batch
        if bounds is None and len(train):
            total = g.max()
            per = total / len(train)
            if abs(per - round(per)) < 1e-9:
                bounds = np.arange(len(train) + 1, dtype=np.float64) * per + 0.0
                notes.append(f"epoch length {per:g} steps from the batch count")
        if bounds is not None:
            ep, _ = place_in_epochs(g, bounds, np.ones_like(g), extend=False)
            first = bounds[ep]
            k = g - first  # batches into the epoch (1-based)
            prev_k = np.zeros_like(k)
            prev_m = np.zeros_like(m)
            same = np.zeros(k.size, dtype=bool)
            same[1:] = ep[1:] == ep[:-1]
            prev_k[same] = k[:-1][same[1:]]
            prev_m[same] = m[:-1][same[1:]]
            width = k - prev_k
            with np.errstate(invalid="ignore", divide="ignore"):
                win = (k * m - prev_k * prev_m) / np.where(width > 0, width, np.nan)
            epi, pos = place_in_epochs(g, bounds, width, extend=False)
            steps = Steps.build(np.asarray(indices)[np.clip(epi, 0, len(indices) - 1)], win, position=pos,
                                span=width)
            notes.append("batch_loss (a running mean since the epoch start) converted to window means")
        else:
            notes.append("batch_loss present but the epoch length is unknown: not used")
    epochs = build_epochs(indices, train=train, val=val, metrics=metrics)
    return finish_run(path, epochs=epochs, steps=steps, importer="tensorboard", framework="keras",
                      reported_loss_kind="epoch_mean", roles=roles.to_dict(), notes=notes, name=name,
                      extra_meta={"writer": "keras-tf2"})


def _huggingface(path, data, train_loss, val_loss, name) -> Run:
    from .trainer_state import read as read_state

    rows: dict[float, dict[str, float]] = {}
    for tag, (s, v) in data.items():
        key = tag.split("/", 1)[1] if "/" in tag else tag
        if tag.startswith("eval/"):
            key = "eval_" + key
        elif not tag.startswith("train/"):
            continue
        for a, b in zip(s, v):
            rows.setdefault(float(a), {})[key] = float(b)
    # evaluation rows carry the epoch of the nearest training stamp
    es, evv = data["train/epoch"]
    hist = []
    for step in sorted(rows):
        ent = dict(rows[step])
        if "epoch" not in ent and es.size:
            j = int(np.argmin(np.abs(es - step)))
            ent["epoch"] = float(evv[j] * step / es[j]) if es[j] > 0 else float(evv[j])
        ent["step"] = step
        hist.append(ent)
    run = read_state(path, train_loss, val_loss, obj={"log_history": hist})
    run.meta["importer"] = "tensorboard"
    run.meta["writer"] = "transformers"
    run.name = name
    return run


def _lightning(path, data, train_loss, val_loss, name) -> Run:
    from .lightning_csv import read as read_csv_log

    es, ev = data["epoch"]
    order = np.argsort(es, kind="stable")
    es, ev = es[order], ev[order]
    steps = sorted(set(float(x) for s, _ in data.values() for x in s))
    tags = [t for t in data if t != "epoch"]
    if not tags:
        raise LogFormatError(path, "only an 'epoch' tag, no values")
    # one CSV row per (step, tag group)
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["epoch", "step"] + tags)
    index = {t: dict(zip(*data[t])) for t in tags}
    for st in steps:
        j = int(np.searchsorted(es, st, side="right")) - 1
        e = ev[j] if j >= 0 else (ev[0] if ev.size else 0.0)
        cells = []
        for t in tags:
            x = index[t].get(st)
            cells.append("" if x is None else repr(float(x)))
        if any(cells):
            w.writerow([repr(float(int(e))), repr(st)] + cells)
    run = read_csv_log(path, train_loss, val_loss, text=buf.getvalue())
    run.meta["importer"] = "tensorboard"
    run.meta["writer"] = "lightning"
    run.name = name
    return run


def _generic(path, data, train_loss, val_loss, steps_per_epoch, name, epoch_values=None) -> Run:
    roles = assign_roles(list(data), path, train_loss, val_loss)
    notes: list[str] = []
    tr = data.get(roles.train_loss) if roles.train_loss else None
    va = data.get(roles.val_loss) if roles.val_loss else None
    n_tr = tr[0].size if tr is not None else 0
    n_va = va[0].size if va is not None else 0
    steps = Steps()
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    positions: dict[int, float] = {}
    metrics: dict[int, dict[str, float]] = {}
    if tr is not None and n_va and n_tr > n_va and np.any(va[0] > 0):
        # per-step training values; the validation steps are the epoch ends (same step units)
        bounds = np.concatenate([[0.0], np.unique(va[0])])
        if np.any(np.diff(bounds) <= 0):
            bounds = np.unique(bounds)
        s, v = tr
        width = np.diff(np.concatenate([[0.0], s]))
        width = np.where(width > 0, width, 1.0)
        ep, pos = place_in_epochs(s, bounds, width)
        steps = Steps.build(ep, v, position=pos, span=np.ones_like(v))
        for e in np.unique(ep):
            sel = v[ep == e]
            fin = sel[np.isfinite(sel)]
            train[int(e)] = float(fin.mean()) if fin.size == sel.size else float(sel[~np.isfinite(sel)][0])
        vs = np.unique(va[0])
        for i, st in enumerate(vs):
            val[i] = float(va[1][va[0] == st][-1])
        em = (epoch_values or {}).get(roles.train_loss)
        if em is not None and set(em[0]) <= set(vs):
            for st, x in zip(*em):
                train[int(np.searchsorted(vs, st))] = float(x)
            notes.append(f"{roles.train_loss!r} read as per-batch values; the second value at each epoch-end step "
                         "is the epoch mean (Keras TF1); the steps of "
                         f"{roles.val_loss!r} mark the epoch ends")
        else:
            notes.append(f"{roles.train_loss!r} read as per-step values; the steps of {roles.val_loss!r} mark the "
                         "epoch ends; each epoch's training loss is the mean of its logged step values")
    elif tr is not None and (n_va == 0 and steps_per_epoch):
        s, v = tr
        width = np.diff(np.concatenate([[0.0], s]))
        width = np.where(width > 0, width, 1.0)
        n_ep = max(1, int(math.ceil(s.max() / steps_per_epoch)))
        if n_ep > MAX_EPOCHS_PER_RECORD * s.size + 1:  # memory follows the file's size, not the values in it
            raise LogFormatError(path, f"step {s.max():.0f} at {steps_per_epoch:g} steps per epoch gives {n_ep} "
                                       f"epochs for {s.size} records: check --steps-per-epoch and the steps")
        bounds = np.arange(n_ep + 1, dtype=np.float64) * float(steps_per_epoch)
        ep, pos = place_in_epochs(s, bounds, width)
        steps = Steps.build(ep, v, position=pos)
        for e in np.unique(ep):
            train[int(e)] = float(np.nanmean(v[ep == e]))
    else:
        # one value per epoch (steps are epoch numbers or counters): rank order gives the epoch
        if tr is not None:
            for i, (a, b) in enumerate(zip(*tr)):
                train[i] = float(b)
        if va is not None:
            for i, (a, b) in enumerate(zip(*va)):
                val[i] = float(b)
        if tr is not None and va is not None and n_tr != n_va:
            notes.append(f"{roles.train_loss!r} has {n_tr} values and {roles.val_loss!r} {n_va}: aligned by order")
        notes.append("one value per epoch assumed (the i-th value of each tag is epoch i); training values read as "
                     "epoch means; if they are per-step values, pass steps_per_epoch (--steps-per-epoch)")
    for t, (s, v) in data.items():
        if t in (roles.train_loss, roles.val_loss) or s.size != max(len(val), len(train)):
            continue
        for i, b in enumerate(v):
            metrics.setdefault(i, {})[t] = float(b)
    indices = sorted(set(train) | set(val))
    if not indices:
        raise LogFormatError(path, "no loss values")
    epochs = build_epochs(indices, train=train, val=val, positions=positions, metrics=metrics)
    keras_tf1 = any("Keras TF1" in n for n in notes)
    return finish_run(path, epochs=epochs, steps=steps, importer="tensorboard",
                      framework="keras" if keras_tf1 else "tensorboard", reported_loss_kind="epoch_mean",
                      roles=roles.to_dict(), notes=notes, name=name,
                      extra_meta={"writer": "keras-tf1" if keras_tf1 else "generic"})
