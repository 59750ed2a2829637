"""Fast per-sample content hashes (framework-free).

One primitive serves the exact-duplicate search of the split audit and the
split fingerprints of experiments: a 128-bit hash of each row's bytes,
computed column-wise in NumPy instead of one hashlib call per row.

Each row of ``width`` bytes is zero-padded to whole 64-bit words
``w_0 … w_{m−1}``; two independent lanes (different seeds) compute::

    h ← seed ⊕ width
    h ← mix((h ⊕ mix(w_j + (j + 1)·φ)) · M)      for j = 0 … m−1

where ``mix`` is the SplitMix64 finalizer (Steele, Lea & Flood 2014, "Fast
splittable pseudorandom number generators", OOPSLA), φ = 0x9E3779B97F4A7C15 and
M an odd constant; arithmetic is modulo 2⁶⁴. The width enters the seed, so rows
of different lengths differ even when their padded words agree. It is not a
cryptographic hash: equal hashes are candidates, and the duplicate search
confirms every pair by comparing contents.

Rows of :data:`WIDE_ROW_BYTES` or more (images, long feature vectors) are hashed
instead with one BLAKE2b call per row (``hashlib.blake2b``, 16-byte digest, the
width as its personalization): the per-row call costs about 1 µs, the bytes
about 0.0015 µs each, against about 0.004 µs per byte column-wise. Measured here
on one core: 20 000 rows of 12 KiB (32×32×3 float32 images) in 0.36 s instead
of 1.04 s; rows of 64 bytes stay about 4× faster column-wise.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["row_hashes", "wide_row_hashes", "WIDE_ROW_BYTES"]

#: Row width (bytes) from which :func:`row_hashes` uses one BLAKE2b call per row (module docstring: the crossover
#: of the two costs measured here is about 370 bytes).
WIDE_ROW_BYTES = 512

_PHI = np.uint64(0x9E3779B97F4A7C15)
_M = np.uint64(0xD6E8FEB86659FD93)
_SEEDS = (np.uint64(0x243F6A8885A308D3), np.uint64(0x13198A2E03707344))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer, element-wise on uint64 (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def wide_row_hashes(parts: list[np.ndarray]) -> np.ndarray:
    """The BLAKE2b path of :func:`row_hashes`: row ``i`` is the parts' rows ``i`` side by side, fed to one BLAKE2b
    (16-byte digest, the total width as its personalization) part by part, so the parts are never copied together.

    Parameters
    ----------
    parts : list of numpy.ndarray of uint8, each shape (n, width_k), rows C-contiguous

    Returns
    -------
    numpy.ndarray of uint64, shape (n, 2)
    """
    n = parts[0].shape[0]
    person = sum(p.shape[1] for p in parts).to_bytes(8, "little")
    digests = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16, person=person)
        for p in parts:
            h.update(p[i].data)
        digests.append(h.digest())
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64).reshape(n, 2)


def row_hashes(rows: np.ndarray, lanes: int = 2) -> np.ndarray:
    """128-bit hash of each row's bytes (or its first 64 bits, ``lanes=1``, at half the cost).

    Parameters
    ----------
    rows : numpy.ndarray, shape (n, ...)
        Any fixed-width dtype; row ``i`` is ``rows[i]``'s bytes in C order. Make
        equal contents equal bytes first (canonical dtype, -0.0 → +0.0, one NaN).
    lanes : {1, 2}
        64-bit lanes computed: the first lane is the same either way.

    Returns
    -------
    numpy.ndarray of uint64, shape (n, lanes)
    """
    a = np.ascontiguousarray(rows)
    n = a.shape[0] if a.ndim else 0
    if n == 0:
        return np.empty((0, lanes), np.uint64)
    b = a.reshape(n, -1).view(np.uint8) if a.dtype != np.uint8 else a.reshape(n, -1)
    width = b.shape[1]
    if width >= WIDE_ROW_BYTES:
        return wide_row_hashes([np.ascontiguousarray(b)])[:, :lanes]
    pad = (-width) % 8
    if pad:
        b = np.concatenate([b, np.zeros((n, pad), np.uint8)], axis=1)
    words = np.ascontiguousarray(b).view("<u8")  # (n, m)
    out = np.empty((n, lanes), np.uint64)
    with np.errstate(over="ignore"):
        for lane, seed in enumerate(_SEEDS[:lanes]):
            h = np.full(n, seed ^ np.uint64(width), dtype=np.uint64)
            for j in range(words.shape[1]):
                h = _mix((h ^ _mix(words[:, j] + np.uint64(j + 1) * _PHI)) * _M)
            out[:, lane] = h
    return out
