"""Exact duplicates of validation inputs among the training inputs, for in-memory arrays.

The check every adapter runs once when recording starts (``run.meta["split_exact_duplicates"]``), and the
array path of :func:`losslens.audit.exact_duplicates`: one normalized copy of the inputs, a 64-bit hash per
sample (:func:`losslens.recording.hashing.row_hashes`), a join of the two hash tables, and every candidate pair
verified by comparing contents, so a hash collision can never report a false pair. Numbers: when the two
splits have different dtypes both are cast to float64 (``uint8`` 3 equals ``float32`` 3.0); ``-0.0`` counts
as ``0.0`` and every NaN as the same NaN.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .hashing import row_hashes

__all__ = ["ExactDuplicates", "DUPLICATE_PAIRS_KEPT", "canonical_numbers", "canonical_row_hashes", "match_hashes",
           "verify_rows", "array_duplicates", "input_duplicates"]

#: Index pairs kept in ``run.meta["split_exact_duplicates"]`` (the counts stay exact).
DUPLICATE_PAIRS_KEPT = 100


@dataclass
class ExactDuplicates:
    """Validation samples whose normalized content also occurs in the training set.

    Attributes
    ----------
    pairs : numpy.ndarray
        Shape ``(m, 2)``, int64: ``[train_index, val_index]`` for every pair of
        identical samples, sorted by validation then training index (capped at
        ``max_pairs``; see ``n_pairs``).
    n_pairs : int
        Number of identical (train, val) pairs before the cap.
    n_train, n_val : int
        Sizes of the splits.
    seconds : float
        Wall time of the hashing and matching.
    val_indices : numpy.ndarray
        Sorted unique validation indices with a copy in the training set.
    train_indices : numpy.ndarray
        Sorted unique training indices with a copy in the validation set.
    """

    pairs: np.ndarray
    n_pairs: int
    n_train: int
    n_val: int
    seconds: float = 0.0
    val_indices: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    train_indices: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    @property
    def n_val_duplicated(self) -> int:
        """Number of validation samples with an identical training sample."""
        return int(len(self.val_indices))

    @property
    def fraction_val(self) -> float:
        """``n_val_duplicated / n_val`` (fraction of the validation set)."""
        return self.n_val_duplicated / self.n_val if self.n_val else 0.0

    @property
    def truncated(self) -> bool:
        """True when ``pairs`` holds fewer rows than ``n_pairs``."""
        return len(self.pairs) < self.n_pairs

    def to_dict(self, max_pairs: int = 1000) -> dict[str, Any]:
        """JSON-safe summary (suitable for ``Run.meta``) with at most ``max_pairs`` pairs."""
        return {
            "n_train": self.n_train, "n_val": self.n_val,
            "n_val_duplicated": self.n_val_duplicated, "n_train_duplicated": int(len(self.train_indices)),
            "fraction_val": self.fraction_val, "n_pairs": int(self.n_pairs),
            "pairs": self.pairs[:max_pairs].tolist(), "pairs_truncated": bool(len(self.pairs) > max_pairs
                                                                              or self.truncated),
            "seconds": self.seconds,
            "method": "hash of normalized content (losslens.recording.hashing), every pair verified by comparison",
        }


def canonical_numbers(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    out = np.ascontiguousarray(a, dtype=dtype)
    if out.dtype.kind == "f":
        out = out + out.dtype.type(0.0)  # -0.0 + 0.0 == +0.0
        nan = np.isnan(out)
        if nan.any():
            out[nan] = np.nan  # one NaN bit pattern
    return out.reshape(len(out), -1)


#: Canonical bytes converted and hashed at a time by :func:`canonical_row_hashes` (they stay in the CPU caches).
_CHUNK_BYTES = 4 * 1024 * 1024


def canonical_row_hashes(a: np.ndarray, dtype: np.dtype, lanes: int = 1) -> np.ndarray:
    """:func:`~losslens.recording.hashing.row_hashes` of ``canonical_numbers(a, dtype)``, computed a few MiB of
    rows at a time, so a large array (images) is never converted as a whole (shape ``(n, lanes)``, uint64).

    One 64-bit lane by default: every candidate pair is verified by comparing contents, so a collision (about
    ``n_train · n_val / 2**64`` of them expected) costs one comparison, never a false pair, and the narrow rows'
    column-wise hash costs half of two lanes."""
    n = len(a)
    width = max(1, int(np.prod(a.shape[1:])) * np.dtype(dtype).itemsize)
    chunk = max(1, _CHUNK_BYTES // width)
    if n <= chunk:
        return row_hashes(canonical_numbers(a, dtype), lanes)
    return np.concatenate([row_hashes(canonical_numbers(a[i:i + chunk], dtype), lanes)
                           for i in range(0, n, chunk)])


def verify_rows(a: np.ndarray, b: np.ndarray, ti: np.ndarray, vi: np.ndarray) -> np.ndarray:
    """Exact comparison of candidate row pairs (guards against hash collisions); NaN equals NaN."""
    ok = np.empty(len(ti), bool)
    step = 65536
    for s in range(0, len(ti), step):
        x, y = a[ti[s:s + step]], b[vi[s:s + step]]
        ok[s:s + step] = ((x == y) | ((x != x) & (y != y))).all(axis=1)
    return ok


def _equal_keys(ka: np.ndarray, kb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every index pair ``(i, j)`` with ``ka[i] == kb[j]`` (whole rows of uint64), as two int64 arrays.

    A sort-merge join in NumPy (a sort of the first table by its first word, a binary search of the
    second's, the matching ranges expanded, the other words compared): O((n + m) log n + pairs), and no pandas
    import (0.7 s) at the start of every recorded run.
    """
    order = np.argsort(ka[:, 0])
    first = ka[order, 0]
    lo = np.searchsorted(first, kb[:, 0], side="left")
    hi = np.searchsorted(first, kb[:, 0], side="right")
    counts = hi - lo
    vi = np.repeat(np.arange(len(kb), dtype=np.int64), counts)
    if not len(vi):
        return np.empty(0, np.int64), vi
    starts = np.repeat(lo - np.cumsum(counts) + counts, counts)     # lo of each pair's validation row
    ti = order[starts + np.arange(len(vi))].astype(np.int64)
    same = (ka[ti, 1:] == kb[vi, 1:]).all(axis=1)
    return ti[same], vi[same]


def match_hashes(ka: np.ndarray, kb: np.ndarray, verify: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 *, max_pairs: int = 1_000_000, t0: float | None = None) -> ExactDuplicates:
    """Join two tables of sample hashes and keep the verified pairs.

    Parameters
    ----------
    ka, kb : numpy.ndarray of uint64, shape (n_train, w) and (n_val, w)
        Sample hashes of ``w`` 64-bit words (pairs must be equal in every word).
    verify : callable
        ``verify(train_indices, val_indices) -> bool array``: whether each candidate pair is truly identical.
    max_pairs : int
        At most this many pairs are kept (``n_pairs`` stays exact).
    """
    t0 = time.perf_counter() if t0 is None else t0
    ti, vi = _equal_keys(np.asarray(ka, np.uint64), np.asarray(kb, np.uint64))
    if len(ti):
        ok = verify(ti, vi)
        ti, vi = ti[ok], vi[ok]
    order = np.lexsort((ti, vi))
    pairs = np.stack([ti[order], vi[order]], axis=1) if len(ti) else np.empty((0, 2), np.int64)
    return ExactDuplicates(pairs=pairs[:max_pairs], n_pairs=int(len(pairs)), n_train=len(ka), n_val=len(kb),
                           seconds=time.perf_counter() - t0, val_indices=np.unique(vi), train_indices=np.unique(ti))


def array_duplicates(train: np.ndarray, val: np.ndarray, *, max_pairs: int = 1_000_000) -> ExactDuplicates:
    """Exact duplicates between two numeric arrays, one sample per row of the first axis.

    Parameters
    ----------
    train, val : numpy.ndarray, shapes (n_train, ...) and (n_val, ...)
        The trailing shapes must hold the same number of values per sample.

    Raises
    ------
    ValueError
        If the samples of the two arrays differ in size.
    """
    t0 = time.perf_counter()
    a, b = np.asarray(train), np.asarray(val)
    dtype = a.dtype if a.dtype == b.dtype else np.dtype(np.float64)
    if dtype.kind == "b":
        dtype = np.dtype(np.uint8)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"training samples have {a.shape[1]} values and validation samples {b.shape[1]}")
    # candidate rows are compared as values (NaN equals NaN, -0.0 equals 0.0), as their canonical bytes are
    return match_hashes(canonical_row_hashes(a, dtype), canonical_row_hashes(b, dtype),
                        lambda ti, vi: verify_rows(a, b, ti, vi), max_pairs=max_pairs, t0=t0)


def _joined_rows(parts: list[np.ndarray], dtypes: list[np.dtype]) -> np.ndarray:
    """The bytes of each sample's arrays side by side (one row per sample), numbers canonicalized."""
    for p in parts:
        if np.asarray(p).dtype.kind not in "biufc":
            raise ValueError(f"inputs of dtype {np.asarray(p).dtype} are not compared in multi-input structures")
    rows = [canonical_numbers(np.asarray(p), d).view(np.uint8).reshape(len(p), -1) for p, d in zip(parts, dtypes)]
    return np.concatenate(rows, axis=1)


def input_duplicates(train: list[np.ndarray], val: list[np.ndarray]) -> dict[str, Any]:
    """The check the adapters store in ``run.meta["split_exact_duplicates"]``: never raises.

    Parameters
    ----------
    train, val : list of numpy.ndarray
        The model inputs of the training and validation sets, one array per model input (one sample per row).
        Several inputs are compared on the concatenated bytes of each sample's arrays, both sides cast to
        float64 where their dtypes differ.

    Returns
    -------
    dict
        :meth:`ExactDuplicates.to_dict` with at most :data:`DUPLICATE_PAIRS_KEPT` pairs, or ``{"error": ...}``
        when the check failed (recording goes on).
    """
    try:
        if len(train) != len(val):
            raise ValueError(f"the training inputs have {len(train)} arrays and the validation inputs {len(val)}")
        if len(train) == 1:
            res = array_duplicates(train[0], val[0])
        else:
            dts = [a.dtype if a.dtype == b.dtype and a.dtype.kind != "b" else np.dtype(np.float64)
                   for a, b in zip(train, val)]
            res = array_duplicates(_joined_rows(train, dts), _joined_rows(val, dts))
        return res.to_dict(max_pairs=DUPLICATE_PAIRS_KEPT)
    except Exception as exc:  # noqa: BLE001 - the check never stops training
        return {"error": f"{type(exc).__name__}: {exc}"}
