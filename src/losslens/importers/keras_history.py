"""Keras ``History.history`` saved as JSON (or, only on request, as a pickle).

``model.fit`` returns a ``History`` whose ``history`` attribute is a dict
``{metric: [value per epoch]}`` (``loss``, ``val_loss``, ``accuracy``, ...).
Users save it with ``json.dump(h.history, f)`` — sometimes nested one level
(``{"0": {...}}``, one history per fold or stage) — or with
``pickle.dump(h.history, f)``. A pickle can execute arbitrary code when loaded,
so it is refused unless the caller passes ``allow_pickle=True``; even then it is
loaded with an unpickler that accepts only plain containers, numbers and NumPy
scalars/arrays, and a warning is emitted.

With ``validation_freq = k`` Keras appends a ``val_`` value only every k-th
epoch, so the ``val_`` lists are shorter; they are aligned to epochs
``k − 1, 2k − 1, …`` when the lengths divide, and refused otherwise.
"""

from __future__ import annotations

import io
import pickle
import warnings
from typing import Any

import numpy as np

from ._common import LogFormatError, PickleRefusedError, read_bytes, read_json, run_name, to_float
from ._epochs import run_from_epoch_columns

__all__ = ["read", "read_pickle", "looks_like_history", "is_pickle"]

_PICKLE_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "float"), ("builtins", "int"), ("builtins", "tuple"),
    ("collections", "OrderedDict"), ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "float32"), ("numpy", "float64"), ("numpy", "int64"), ("numpy", "int32"),
    # protocol 5 arrays are rebuilt from a buffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of NumPy arrays use it (their raw bytes as a latin-1 string),
    and nothing else: other codecs are refused."""
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors)


def is_pickle(data: bytes) -> bool:
    """True when the bytes start like a pickle (protocol 2+ opcode ``\\x80`` or protocol-0/1 dict openers)."""
    return data[:1] == b"\x80" or data[:2] in (b"(d", b"}q", b"}(") or data[:3] == b"(dp"


def looks_like_history(obj: Any) -> bool:
    """A dict of equal-or-shorter lists of numbers with a loss key, possibly nested one level."""
    if not isinstance(obj, dict) or not obj:
        return False
    if all(isinstance(v, list) for v in obj.values()):
        return any("loss" in str(k).lower() for k in obj)
    return all(isinstance(v, dict) and looks_like_history(v) for v in obj.values())


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only containers and numbers are allowed)")


def _columns(path: Any, hist: dict, where: str) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    notes: list[str] = []
    lists: dict[str, list] = {}
    for k, v in hist.items():
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise LogFormatError(path, f"{where}key {k!r}: expected a list of per-epoch values, got {type(v).__name__}")
        lists[str(k)] = list(v)
    if not lists:
        raise LogFormatError(path, f"{where}empty history")
    n = max(len(v) for v in lists.values())
    if n == 0:
        raise LogFormatError(path, f"{where}every list is empty")
    cols: dict[str, np.ndarray] = {}
    for k, v in lists.items():
        arr = np.array([to_float(x, path, f"{where}key {k!r}, epoch {i}") for i, x in enumerate(v)], dtype=np.float64)
        if arr.size == n:
            cols[k] = arr
        elif arr.size and n % arr.size == 0:
            freq = n // arr.size
            full = np.full(n, np.nan)
            full[freq - 1::freq] = arr
            cols[k] = full
            notes.append(f"{k!r} has {arr.size} values for {n} epochs: placed every {freq} epochs "
                         f"(validation_freq={freq})")
        elif arr.size == 0:
            cols[k] = np.full(n, np.nan)
        else:
            raise LogFormatError(path, f"{where}key {k!r} has {arr.size} values but the history has {n} epochs "
                                       "and the lengths do not divide")
    return np.arange(n, dtype=np.float64), cols, notes


def _runs_from_obj(path: Any, obj: Any, train_loss: str | None, val_loss: str | None, importer: str):
    if not isinstance(obj, dict) or not obj:
        raise LogFormatError(path, "expected a JSON object mapping metric names to per-epoch lists "
                                   f"(Keras History.history), got {type(obj).__name__}")
    if all(isinstance(v, dict) for v in obj.values()):
        runs = []
        for key, sub in obj.items():
            epoch, cols, notes = _columns(path, sub, f"[{key!r}] ")
            runs.append(run_from_epoch_columns(path, epoch, cols, importer=importer, framework="keras",
                                               train_loss=train_loss, val_loss=val_loss, notes=notes,
                                               name=f"{run_name(path)}[{key}]", extra_meta={"history_key": key}))
        return runs[0] if len(runs) == 1 else runs
    epoch, cols, notes = _columns(path, obj, "")
    return run_from_epoch_columns(path, epoch, cols, importer=importer, framework="keras",
                                  train_loss=train_loss, val_loss=val_loss, notes=notes)


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None, obj: Any = None):
    """Import a Keras ``History.history`` saved as JSON.

    Returns
    -------
    Run, or list of Run
        One run (epochs from the list positions, 0-based); a list when the
        JSON nests several histories one level deep.

    Raises
    ------
    LogFormatError
        Invalid JSON, not a dict of lists, non-numeric values, lists whose
        lengths do not align.
    """
    if obj is None:
        obj = read_json(path)
    return _runs_from_obj(path, obj, train_loss, val_loss, "keras_history")


def read_pickle(path: Any, train_loss: str | None = None, val_loss: str | None = None,
                allow_pickle: bool = False):
    """Import a pickled Keras ``History.history``; refused unless ``allow_pickle``.

    Raises
    ------
    PickleRefusedError
        When ``allow_pickle`` is false (the default): unpickling can execute code.
    LogFormatError
        When the pickle holds anything but containers and numbers, or is not a history.

    Warns
    -----
    UserWarning
        When loading a pickle (``allow_pickle=True``).
    """
    if not allow_pickle:
        raise PickleRefusedError(path, "this is a Python pickle; loading a pickle can execute arbitrary code, so it "
                                       "is refused. If you trust the file, pass --allow-pickle (CLI) or "
                                       "allow_pickle=True, or convert it: json.dump(pickle.load(f), out)")
    warnings.warn(f"{path}: loading a pickle (allow_pickle=True); only plain containers and numbers are accepted",
                  UserWarning, stacklevel=3)
    data = read_bytes(path)
    try:
        obj = _SafeUnpickler(io.BytesIO(data)).load()
    except (Exception, MemoryError, RecursionError) as exc:  # any unpickling failure is a format error of this file
        raise LogFormatError(path, f"cannot load the pickle: {str(exc) or type(exc).__name__}") from None
    if hasattr(obj, "history") and isinstance(obj.history, dict):
        obj = obj.history
    return _runs_from_obj(path, obj, train_loss, val_loss, "keras_history_pickle")
