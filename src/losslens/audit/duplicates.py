"""Exact duplicates across a train/validation split, by content hashes.

Each sample is normalized, hashed once (a 128-bit hash: :func:`losslens.recording.hashing.row_hashes`
for arrays, computed column-wise in NumPy; BLAKE2b-128 from :mod:`hashlib` for
texts), the hashes of the two splits are joined (a sort-merge join in NumPy,
:func:`losslens.recording.duplicates.match_hashes`)
and every candidate pair is then verified by comparing the normalized contents,
so a hash collision can never report a false pair.

Normalization
-------------
* numbers (arrays, images): when the two splits have different dtypes both are
  cast to float64 (so ``uint8`` 3 equals ``float32`` 3.0); ``-0.0`` counts as
  ``0.0`` and every NaN as the same NaN;
* text: :func:`~losslens.audit.inputs.normalize_text` (Unicode NFKC, case fold,
  whitespace collapsed);
* table rows: numeric columns as float64 (same rules), text cells normalized as
  text, and the row hashed with :func:`pandas.util.hash_pandas_object`.

Cost: one pass over the data (about 0.03 µs per byte for the array hash on
one core, plus the normalization copy), memory of one normalized copy of the
inputs, no model compute. ``benchmarks/audit.py`` measures 1 000 000 × 64
float32 samples.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import pandas as pd

from ..recording.duplicates import ExactDuplicates, canonical_numbers, match_hashes, verify_rows
from ..recording.hashing import row_hashes
from .inputs import SplitData, as_split, check_compatible, normalize_text

__all__ = ["ExactDuplicates", "exact_duplicates", "find_exact_duplicates"]


def _hash_texts(texts: list[str]) -> np.ndarray:
    blake = hashlib.blake2b
    digests = b"".join([blake(t.encode("utf-8"), digest_size=16).digest() for t in texts])
    return np.frombuffer(digests, dtype="<u8").reshape(len(texts), 2)


def _normalize_table(df: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan) + 0.0
            out[c] = v
        else:
            out[c] = s.map(lambda x: normalize_text(x) if isinstance(x, str) else x).astype(object)
    return pd.DataFrame(out, columns=df.columns)


def _normalized(train: SplitData, val: SplitData) -> tuple[Any, Any]:
    if train.kind == "text":
        return [normalize_text(t) for t in train.data], [normalize_text(t) for t in val.data]
    if train.kind == "table":
        return _normalize_table(train.data), _normalize_table(val.data)
    a, b = np.asarray(train.data), np.asarray(val.data)
    dtype = a.dtype if a.dtype == b.dtype else np.dtype(np.float64)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    return canonical_numbers(a, dtype), canonical_numbers(b, dtype)


def _keys(x: Any, kind: str) -> np.ndarray:
    if kind == "text":
        return _hash_texts(x)
    if kind == "table":
        h = pd.util.hash_pandas_object(x, index=False).to_numpy(dtype=np.uint64)
        return np.stack([h, np.zeros_like(h)], axis=1)
    return row_hashes(x)


def _verify(a: Any, b: Any, kind: str, ti: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """Exact comparison of candidate pairs (guards against hash collisions)."""
    if len(ti) == 0:
        return np.zeros(0, bool)
    if kind == "text":
        return np.fromiter((a[i] == b[j] for i, j in zip(ti, vi)), bool, len(ti))
    if kind == "table":
        ok = np.ones(len(ti), bool)
        for c in a.columns:
            x = a[c].to_numpy()[ti]
            y = b[c].to_numpy()[vi]
            same = pd.Series(x).eq(pd.Series(y)).to_numpy() | (pd.isna(x) & pd.isna(y))
            ok &= same
        return ok
    return verify_rows(a, b, ti, vi)


def find_exact_duplicates(train: SplitData, val: SplitData, *, max_pairs: int = 1_000_000) -> ExactDuplicates:
    """Exact duplicates between two converted splits (see :func:`exact_duplicates`)."""
    t0 = time.perf_counter()
    check_compatible(train, val)
    a, b = _normalized(train, val)
    return match_hashes(_keys(a, train.kind), _keys(b, val.kind), lambda ti, vi: _verify(a, b, train.kind, ti, vi),
                        max_pairs=max_pairs, t0=t0)


def exact_duplicates(train: Any, val: Any, *, kind: str = "auto", max_pairs: int = 1_000_000) -> ExactDuplicates:
    """Find validation samples that also occur, exactly, in the training set.

    Cheap enough to run once at the start of training: one pass of hashing over
    both splits, no model compute (about 2 s per million 256-byte samples on
    one core; see the module docstring for the normalization). For a torch
    dataset the pass reads every item through ``__getitem__``: if the dataset
    applies random augmentation, pass the un-augmented data (e.g. the
    underlying arrays), since augmented copies are no longer identical.

    Parameters
    ----------
    train, val : array-like, DataFrame, list of str, or torch tensor/dataset
        The two splits, of the same kind (see :func:`losslens.audit.audit_split`).
        Arrays: one sample per row of the first axis.
    kind : {"auto", "array", "image", "table", "text"}
        Force how samples are read.
    max_pairs : int
        At most this many pairs are kept in ``pairs`` (the count ``n_pairs`` is exact).

    Returns
    -------
    ExactDuplicates
        Index pairs ``[train_index, val_index]`` and counts.

    Raises
    ------
    TypeError, ValueError
        If an input cannot be read, or the splits differ in kind or sample shape.

    Examples
    --------
    >>> import numpy as np
    >>> from losslens.audit import exact_duplicates
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> exact_duplicates(x[:4], x[3:]).pairs.tolist()
    [[3, 0]]
    """
    tr = as_split(train, "train", kind=kind)
    va = as_split(val, "val", kind=kind)
    return find_exact_duplicates(tr, va, max_pairs=max_pairs)
