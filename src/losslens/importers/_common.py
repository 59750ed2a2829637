"""Shared parsing helpers of the importers (private).

Every importer reads its file with these helpers so that every failure becomes
a :class:`LogFormatError` naming the file and the reason, and builds its run
with :func:`finish_run`, which places the timing estimate
(:mod:`losslens.diagnose.timing`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..record import VALIDATION, Epoch, Measurement, Run, Steps

#: Largest text log read into memory (bytes). A 1 000 000-step CSV is ~40 MB.
MAX_TEXT_BYTES = 512 * 1024 * 1024

#: Cell values read as "missing" (Keras writes ``NA`` for empty ``val_`` columns).
MISSING = {"", "na", "n/a", "none", "null", "nan"}
#: Cell values meaning "not logged" (as opposed to a logged ``nan``, which records a divergence).
_ABSENT = {"", "na", "n/a", "none", "null"}


#: The largest ``steps_per_epoch`` accepted: far above any real run, and it keeps step positions exact.
MAX_STEPS_PER_EPOCH = 10**9
#: At most this many epochs per logged record when epochs are inferred from steps; more would make memory
#: follow the step values (a 300-byte log with ``step = 1e11``) instead of the file's size.
MAX_EPOCHS_PER_RECORD = 1000


def check_steps_per_epoch(path: Any, steps_per_epoch: float | None) -> None:
    """Refuse a ``steps_per_epoch`` that is not a number from 1 to :data:`MAX_STEPS_PER_EPOCH` (LogFormatError)."""
    if steps_per_epoch is None:
        return
    try:
        ok = math.isfinite(steps_per_epoch) and 1 <= steps_per_epoch <= MAX_STEPS_PER_EPOCH
    except TypeError:
        ok = False
    if not ok:
        raise LogFormatError(path, f"steps_per_epoch must be a number of optimizer steps from 1 to "
                                   f"{MAX_STEPS_PER_EPOCH:.0e}, got {steps_per_epoch!r}")


class LogFormatError(ValueError):
    """A log that cannot be imported: names the file and the reason.

    Attributes
    ----------
    path : str
        The file (or folder).
    reason : str
        What is wrong, with the offending field, line or value.
    """

    def __init__(self, path: Any, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SkippedLogWarning(UserWarning):
    """One log of a folder of runs could not be read; the others were imported. The message names the file and
    the reason (the CLI prints it as an error and exits 1 after diagnosing the rest)."""


class PickleRefusedError(LogFormatError):
    """A pickled log, refused because unpickling can execute code."""


def fail(path: Any, reason: str) -> LogFormatError:
    return LogFormatError(path, reason)


def read_bytes(path: Any, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The file's bytes; :class:`LogFormatError` when unreadable or too large."""
    import stat

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):   # a FIFO or a device (/dev/zero) would block or never end
            raise LogFormatError(path, "not a regular file (a pipe, device or socket): only files are read")
        size = st.st_size
        if size > limit:
            raise LogFormatError(path, f"file is {size} bytes, above the {limit}-byte limit for text logs")
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)   # bounded even if the file grows while it is read
        if len(data) > limit:
            raise LogFormatError(path, f"file grew above the {limit}-byte limit for text logs while read")
        return data
    except LogFormatError:
        raise
    except OSError as exc:
        raise LogFormatError(path, f"cannot read the file: {exc.strerror or exc}") from None


def read_json(path: Any) -> Any:
    """Parse a JSON file (UTF-8, BOM allowed); LogFormatError naming the file when it is not JSON."""

    return parse_json(path, read_bytes(path))


def parse_json(path: Any, data: bytes, what: str = "not valid JSON") -> Any:
    """Parse JSON bytes read from ``path``; LogFormatError naming the file for invalid or absurdly nested JSON."""
    import json

    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise LogFormatError(path, f"{what}: {exc}") from None
    except RecursionError:
        raise LogFormatError(path, "JSON nested too deeply to be a training log") from None


def read_text(path: Any) -> str:
    """The file as text (UTF-8, BOM accepted; newlines normalised)."""
    data = read_bytes(path)
    if b"\x00" in data[:4096]:
        raise LogFormatError(path, "binary content (NUL bytes) where a text log was expected")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LogFormatError(path, f"not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def to_float(value: Any, path: Any, where: str) -> float:
    """A number from a cell or JSON value; missing markers give NaN.

    Raises
    ------
    LogFormatError
        If the value is neither a number nor a missing marker; ``where`` names
        the field and line.
    """
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise LogFormatError(path, f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            return float(value)
        except OverflowError:
            raise LogFormatError(path, f"{where}: integer with {len(str(abs(int(value))))} digits is too large "
                                       "for a float") from None
    if isinstance(value, str):
        s = value.strip()
        if s.lower() in MISSING:
            return math.nan
        try:
            return float(s)
        except ValueError:
            pass
        # "tensor(0.123)" as written by some loggers
        if s.startswith("tensor(") and s.endswith(")"):
            inner = s[7:-1].split(",")[0]
            try:
                return float(inner)
            except ValueError:
                pass
    shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
    raise LogFormatError(path, f"{where}: expected a number, got {shown}")


@dataclass
class Table:
    """A CSV log as columns: ``columns[name][i]`` is the text of row ``i`` (None where absent).

    Tables read by the vectorised path (:func:`read_csv`) carry their numeric
    columns already parsed (``numeric``) and ``columns`` only for the others.
    """

    names: list[str]
    columns: dict[str, Any]
    lines: Any
    notes: list[str] = field(default_factory=list)
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    present_masks: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lines)

    def has(self, name: str) -> bool:
        return name in self.columns or name in self.numeric

    def present(self, name: str) -> np.ndarray:
        """True where the cell holds a value (a number, ``nan`` or ``inf``), false where empty or ``NA``."""
        if name in self.present_masks:
            return self.present_masks[name]
        if name in self.numeric and name not in self.columns:
            return ~np.isnan(self.numeric[name])
        return np.array([c is not None and c.strip().lower() not in _ABSENT for c in self.columns[name]], dtype=bool)

    def floats(self, name: str, path: Any) -> np.ndarray:
        """The column as float64 (NaN where absent).

        Raises
        ------
        LogFormatError
            At the first cell that is not a number, naming the column and line.
        """
        if name in self.numeric:
            return self.numeric[name]
        col = self.columns[name]
        out = np.empty(len(col))
        for i, c in enumerate(col):
            out[i] = to_float(c, path, f"column {name!r}, line {self.lines[i]}") if c is not None else math.nan
        self.numeric[name] = out
        return out

    def text(self, name: str) -> list:
        """The column's cells as text (None where absent)."""
        if name in self.columns:
            return list(self.columns[name])
        return [None if math.isnan(v) else repr(float(v)) for v in self.numeric[name]]


_NAN_LITERAL = re.compile(r"(?im)(?:^|[,;\t])\s*[+-]?nan\s*(?=$|[,;\t])")


def _read_csv_fast(path: Any, text: str, start: int, end: int, delim: str, header: list[str], first_body: str,
                   n_body: int, body_lines: np.ndarray) -> Table | None:
    """Vectorised parse with pandas when the file is plain (one header, no quotes, equal field counts).

    ``text[start:end]`` is the file without leading and trailing newlines; it is never split into Python line
    strings or copied into a ``StringIO`` (4 bytes per character): memory stays a small multiple of the file's
    size (``benchmarks/large_logs.py``)."""
    if n_body < 1000:
        return None
    ncols = len(header)
    if first_body.count(delim) != ncols - 1:
        return None
    if text.count(delim, start, end) != (ncols - 1) * (n_body + 1):
        return None
    import pandas as pd

    try:
        df = pd.read_csv(io.BytesIO(text.encode("utf-8")), sep=delim, header=0, skip_blank_lines=True, engine="c",
                         low_memory=False, encoding="utf-8")
    except Exception:  # any parser complaint: the exact slow path reports it
        return None
    if list(df.columns) != header or len(df) != n_body:
        return None
    numeric: dict[str, np.ndarray] = {}
    columns: dict[str, Any] = {}
    nan_literal = _NAN_LITERAL.search(text) is not None
    present: dict[str, np.ndarray] = {}
    for h in header:
        col = df[h]
        if col.dtype.kind in "fiu":
            # a writable copy: under pandas' copy-on-write (pandas 3) to_numpy() returns a read-only view
            numeric[h] = np.array(col.to_numpy(dtype=np.float64), dtype=np.float64, copy=True)
        else:
            columns[h] = [None if (isinstance(c, float) and math.isnan(c)) else str(c) for c in col.tolist()]
    if nan_literal:
        raw = pd.read_csv(io.BytesIO(text.encode("utf-8")), sep=delim, header=0, dtype=str, keep_default_na=False,
                          skip_blank_lines=True, engine="c")
        for h in numeric:
            cells = raw[h].str.strip().str.lower()
            present[h] = np.array(~cells.isin(list(_ABSENT)).to_numpy(), dtype=bool, copy=True)
    return Table(list(header), columns, body_lines, [], numeric, present)


def _is_number(cell: str) -> bool:
    s = cell.strip().lower()
    if s in MISSING:
        return True
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv(path: Any, text: str | None = None) -> Table:
    """Parse a CSV log whose header may change or repeat.

    Lightning's CSVLogger rewrites the header when new keys appear and Keras's
    ``CSVLogger(append=True)`` repeats it after a resume: a row whose cells are
    all non-numeric names, sharing a name with the current header, starts a
    new header. Blank rows (``\\r\\r\\n`` line endings) are skipped. A shorter
    last row (a file cut while being written) is dropped with a note.

    Raises
    ------
    LogFormatError
        Empty file, no header, or a row (other than the last) whose number of
        fields differs from its header's.
    """
    if text is None:
        text = read_text(path)
    first = text.split("\n", 1)[0]
    delim = ","
    if "," not in first:
        for d in ("\t", ";"):
            if d in first:
                delim = d
                break
    start, end = 0, len(text)
    while start < end and text[start] == "\n":
        start += 1
    while end > start and text[end - 1] == "\n":
        end -= 1
    n_body = text.count("\n", start, end)
    if n_body > 1000 and text.find('"', start, end) < 0 and text.find("\n\n", start, end) < 0:
        head_end = text.find("\n", start, end)
        head_line = text[start:head_end]
        head_cells = [c.strip() for c in head_line.split(delim)]
        if (len(set(head_cells)) == len(head_cells) and all(head_cells)
                and not all(_is_number(c) for c in head_cells)
                and text.find("\n" + head_line + "\n", start, end) < 0):
            second_end = text.find("\n", head_end + 1, end)
            first_body = text[head_end + 1:second_end if second_end >= 0 else end]
            first_line = text.count("\n", 0, start) + 1
            fast = _read_csv_fast(path, text, start, end, delim, head_cells, first_body, n_body,
                                  np.arange(n_body, dtype=np.int64) + first_line + 1)
            if fast is not None:
                return fast
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=delim))
    except csv.Error as exc:
        raise LogFormatError(path, f"not a valid CSV file: {exc}") from None
    numbered = [(i + 1, r) for i, r in enumerate(rows) if r and any(c.strip() for c in r)]
    if not numbered:
        raise LogFormatError(path, "empty file: no header and no rows")
    header = [c.strip() for c in numbered[0][1]]
    if all(_is_number(c) for c in header):
        raise LogFormatError(path, f"line {numbered[0][0]}: expected a header of column names, got numbers")
    if len(set(header)) != len(header) or any(not h for h in header):
        raise LogFormatError(path, f"line {numbered[0][0]}: header has empty or repeated column names: {header}")
    names: list[str] = list(header)
    columns: dict[str, list[str | None]] = {h: [] for h in header}
    lines: list[int] = []
    notes: list[str] = []
    n_rows = 0
    for j, (lineno, row) in enumerate(numbered[1:], start=1):
        cells = [c.strip() for c in row]
        if not all(_is_number(c) for c in cells if c) and set(cells) & set(header) and \
                sum(1 for c in cells if c and not _is_number(c)) == len([c for c in cells if c]):
            if len(set(cells)) != len(cells) or any(not c for c in cells):
                raise LogFormatError(path, f"line {lineno}: header has empty or repeated column names")
            header = cells
            for h in header:
                if h not in columns:
                    names.append(h)
                    columns[h] = [None] * n_rows
            continue
        if len(cells) != len(header):
            if j == len(numbered) - 1 and len(cells) < len(header):
                notes.append(f"line {lineno} has {len(cells)} of {len(header)} fields (file cut while written); "
                             "dropped")
                continue
            raise LogFormatError(path, f"line {lineno}: {len(cells)} fields but the header has {len(header)}")
        present = dict(zip(header, cells))
        for h in names:
            columns[h].append(present.get(h))
        lines.append(lineno)
        n_rows += 1
    return Table(names, columns, lines, notes)


def numeric_columns(table: "Table", path: Any,
                    skip: Sequence[str] = ("epoch",)) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every column of ``table`` but ``skip`` as floats; a non-numeric column is dropped with a note, unless its
    name says it is a loss (then LogFormatError)."""
    cols: dict[str, np.ndarray] = {}
    notes = list(table.notes)
    for name in table.names:
        if name in skip:
            continue
        try:
            cols[name] = table.floats(name, path)
        except LogFormatError:
            if "loss" in name.lower():
                raise
            notes.append(f"column {name!r} is not numeric; ignored")
    return cols, notes


def run_name(path: Any) -> str:
    """A run name from a path: the file name, or its folder for generic file names."""
    p = os.path.abspath(str(path))
    base = os.path.basename(p.rstrip(os.sep))
    generic = {"metrics.csv", "trainer_state.json", "history.csv", "training.log", "log.csv"}
    if base in generic or base.startswith("events.out.tfevents"):
        parent = os.path.basename(os.path.dirname(p))
        return f"{parent}/{base}" if parent else base
    return base


def place_in_epochs(ends_count: np.ndarray, bounds: np.ndarray, widths: np.ndarray | None = None,
                    extend: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Epoch and fractional position of points logged at cumulative counters.

    Parameters
    ----------
    ends_count : numpy.ndarray, shape (n,)
        The counter (steps or samples, "end" convention: the value after the
        point's steps) at which each point was logged.
    bounds : numpy.ndarray, shape (m + 1,)
        Counter at the start of epoch 0 followed by the counter at the end of
        each epoch ``0 … m − 1`` (increasing).
    widths : numpy.ndarray, shape (n,), optional
        How many counter units each point averages (1 for a step); the point
        sits at the centre ``end − width / 2``.
    extend : bool
        Points after the last bound continue into further epochs of the last
        epoch's length.

    Returns
    -------
    epoch : numpy.ndarray of int64, shape (n,)
    position : numpy.ndarray of float64, shape (n,)
        ``e + (centre − bound_e) / (bound_{e+1} − bound_e)``.
    """
    ends_count = np.asarray(ends_count, dtype=np.float64)
    w = np.ones_like(ends_count) if widths is None else np.asarray(widths, dtype=np.float64)
    b = np.asarray(bounds, dtype=np.float64)
    if b.size < 2:
        raise ValueError("place_in_epochs: need at least one epoch")
    if extend:
        last = b[-1] - b[-2]
        if last > 0 and ends_count.size and np.nanmax(ends_count) > b[-1]:
            k = int(math.ceil((np.nanmax(ends_count) - b[-1]) / last))
            b = np.concatenate([b, b[-1] + last * np.arange(1, k + 1)])
    centre = ends_count - w / 2.0
    # a point belongs to the epoch whose interval (b_e, b_{e+1}] holds its end counter
    e = np.searchsorted(b, ends_count, side="left") - 1
    e = np.clip(e, 0, b.size - 2)
    lo, hi = b[e], b[e + 1]
    pos = e + np.clip((centre - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    return e.astype(np.int64), pos


def mean_by_epoch(epoch: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> dict[int, float]:
    """Weighted mean of the finite values of each epoch."""
    out: dict[int, float] = {}
    if epoch.size == 0:
        return out
    w = np.ones_like(values) if weights is None else weights
    ok = np.isfinite(values) & np.isfinite(w)
    for e in np.unique(epoch):
        m = (epoch == e)
        mm = m & ok
        if mm.any():
            out[int(e)] = float(np.sum(values[mm] * w[mm]) / np.sum(w[mm]))
        elif m.any():
            # every value of the epoch is non-finite: keep that (divergence is reported, never hidden)
            v = values[m]
            out[int(e)] = float(v[~np.isnan(v)][-1]) if np.any(~np.isnan(v)) else math.nan
    return out


def build_epochs(indices: Iterable[int], *, train: dict[int, float], val: dict[int, float],
                 positions: dict[int, float] | None = None, metrics: dict[int, dict[str, float]] | None = None,
                 n_steps: dict[int, int] | None = None) -> list[Epoch]:
    """Epoch records from per-epoch dictionaries (validation → imported ``VALIDATION`` measurement)."""
    out = []
    for i in sorted(set(int(x) for x in indices)):
        ep = Epoch(i, train_loss=float(train.get(i, math.nan)),
                   position=float((positions or {}).get(i, i + 1.0)),
                   metrics={k: float(v) for k, v in (metrics or {}).get(i, {}).items()},
                   n_steps=int((n_steps or {}).get(i, 0)))
        v = val.get(i)
        if v is not None and not math.isnan(v):
            ep.measurements[VALIDATION] = Measurement(VALIDATION, float(v), math.nan, 0, None, "imported")
        out.append(ep)
    return out


#: The change to the user's training code that would measure what a log cannot tell (the probe passes).
_HINTS = {
    "keras": "add the losslens callback: model.fit(..., callbacks=[losslens.keras.LossLens()])",
    "lightning": "add the losslens callback: lightning.Trainer(..., callbacks=[losslens.lightning.LossLens()])",
    "transformers": "add the losslens callback: Trainer(..., callbacks=[losslens.transformers.LossLens()])",
    "torch": "record the loop with lens = losslens.torch.LossLens(model, loss_fn, train_data=train_ds, "
             "val_data=val_ds), calling lens.step(loss, batch_size=len(y)) after each step and lens.end_epoch() "
             "after each epoch",
}


def measure_hint(framework: str | None) -> str:
    """One line: what to add to the training code to measure the parts of the gap a log cannot split."""
    fw = str(framework or "")
    if fw in _HINTS:
        return _HINTS[fw]
    adapters = ("record the run with the losslens adapter of the framework that trains it: "
                "losslens.torch.LossLens(model, loss_fn, train_data=train_ds, val_data=val_ds) in a plain PyTorch "
                "loop, or the callbacks losslens.keras.LossLens(), losslens.lightning.LossLens(), "
                "losslens.transformers.LossLens()")
    if fw in ("", "tensorboard", "unknown"):   # a TensorBoard file does not say which framework wrote it
        return adapters
    return f"losslens has no {fw} adapter yet; {adapters}"


def finish_run(path: Any, *, epochs: list[Epoch], steps: Steps | None, importer: str, framework: str,
               reported_loss_kind: str, roles: dict[str, Any], notes: Sequence[str] = (),
               extra_meta: dict[str, Any] | None = None, name: str | None = None) -> Run:
    """Assemble an imported run: what the log says (the diagnosis adds the end-of-epoch estimates,
    :func:`losslens.diagnose.timing.with_end_of_epoch_estimates`).

    Raises
    ------
    LogFormatError
        When the log holds neither a training nor a validation loss value.
    """
    steps = steps if steps is not None else Steps()
    has_train = any(math.isfinite(e.train_loss) or np.isinf(e.train_loss) for e in epochs) or len(steps) > 0
    has_val = any(VALIDATION in e.measurements for e in epochs)
    if not epochs or not (has_train or has_val):
        raise LogFormatError(path, "no training or validation loss values in the log")
    meta = {
        "how_to_measure": measure_hint(framework),
        "framework": framework,
        "importer": importer,
        "source_file": os.path.abspath(str(path)),
        "reported_loss_kind": reported_loss_kind,
        "roles": {k: v for k, v in roles.items() if v is not None},
        "import_notes": list(notes),
    }
    if extra_meta:
        meta.update(extra_meta)
    val_name = roles.get("val_loss")
    if val_name and not has_val:
        meta["val_all_nan"] = val_name
        meta["import_notes"].append(f"the validation loss {val_name!r} is NaN (or empty) in every row")
    if roles.get("quantities_differ"):
        meta["import_notes"].append(f"the training and validation losses measure different quantities "
                                    f"({roles['quantities_differ']}): their difference is not a generalization gap")
    run = Run(name or run_name(path), epochs=sorted(epochs, key=lambda e: e.index), steps=steps, meta=meta,
              status="imported")
    return run


#: Checkpoint file suffixes of Keras' ``ModelCheckpoint`` (a whole model or weights only).
KERAS_CHECKPOINT_SUFFIXES = (".keras", ".h5", ".hdf5", ".weights.h5")


def lightning_checkpoints(metrics_csv: Any, steps_per_epoch: float | None) -> dict[int, str] | None:
    """Lightning ``ModelCheckpoint`` files of the run whose ``metrics.csv`` is given: ``{global step: file name}``
    for ``<version>/checkpoints/*.ckpt`` named with ``step=S`` (or ``epoch=E``: step ``(E + 1) · steps_per_epoch``,
    Lightning saving at an epoch's end); ``last.ckpt`` and names without either are left out. None when there is no
    checkpoints folder (what was saved is then unknown)."""
    folder = os.path.join(os.path.dirname(os.path.abspath(str(metrics_csv))), "checkpoints")
    if not os.path.isdir(folder):
        return None
    out: dict[int, str] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".ckpt"):
            continue
        m = re.search(r"(?:^|[-_])step=(\d+)", name)
        if m:
            out[int(m.group(1))] = name
            continue
        m = re.search(r"(?:^|[-_])epoch=(\d+)", name)
        if m and steps_per_epoch and math.isfinite(steps_per_epoch):
            out[int(round((int(m.group(1)) + 1) * steps_per_epoch))] = name
    return out


def keras_checkpoints(csv_path: Any) -> dict[int, str] | None:
    """Keras ``ModelCheckpoint`` files beside a ``CSVLogger`` file (its folder and a ``checkpoints/`` folder in it):
    ``{epoch (1-based, as Keras formats {epoch}): file name}``. The epoch is the number after ``epoch`` in the name,
    else the first number in it (``model.05-0.42.keras`` is epoch 5). None when no checkpoint file is there."""
    base = os.path.dirname(os.path.abspath(str(csv_path)))
    out: dict[int, str] = {}
    for folder in (base, os.path.join(base, "checkpoints")):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.endswith(KERAS_CHECKPOINT_SUFFIXES):
                continue
            m = re.search(r"epoch[=_-]?(\d+)", name, re.IGNORECASE) or re.search(r"(\d+)", name)
            if m:
                rel = os.path.relpath(os.path.join(folder, name), base)
                out[int(m.group(1))] = rel
    return out or None
