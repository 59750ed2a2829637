"""Split fingerprints: order-independent hashes of the samples of a data set.

A run records *which* samples it trained and validated on, so that runs of one
experiment can be checked for a changed split (seed ``001``: a different random
split between runs silently moves training data into validation).

Per sample, the **content** is hashed: the sample's array(s) are normalised
(C-contiguous, little-endian, integers as int64, floats as float32 when every
float value of the sample is a float32 value and as float64 otherwise, booleans as
uint8; the shape and dtype kind are hashed too, so ``[1, 2]`` and ``[[1], [2]]``
differ) and hashed with :func:`losslens.recording.hashing.row_hashes` (its first
64-bit lane; strings and object arrays: the first 8 bytes of a SHA-256).
For an ``(X, y)`` pair both parts are hashed together, so the same input with
a different label is a different sample. Strings (ids, file paths) are hashed
as UTF-8.

The **fingerprint** of a set is the SHA-256 of the sorted per-sample hashes
(duplicates kept: a multiset), so it does not depend on the order of the
samples, and two sets have the same fingerprint exactly when they hold the
same samples (up to 64-bit hash collisions, probability about
``n² / 2**65``).

Compact storage in :attr:`losslens.record.Run.meta` (:func:`split_fingerprints`):
the sorted hashes are written as base64 of little-endian ``uint64`` (about 11
characters per sample). Above ``max_hashes`` samples only a consistent
hash-based subsample is kept: the hashes below ``rate · 2**64`` with
``rate = max_hashes / n`` (threshold sampling, Broder 1997, "On the
resemblance and containment of documents"). Because every run keeps the same
region of the hash space, a validation sample that another run trained on is
still found with probability ``rate``, and the fraction of validation samples
in another run's training set is estimated without bias from the sampled
hashes.

No deep-learning framework is imported at module import time; torch tensors
are recognised by their type's module name and converted lazily.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Iterable

import numpy as np

from .hashing import WIDE_ROW_BYTES, row_hashes, wide_row_hashes

__all__ = [
    "sample_hashes",
    "fingerprint_samples",
    "fingerprint_hashes",
    "split_fingerprints",
    "auto_fingerprints",
    "in_memory_view",
    "encode_hashes",
    "decode_hashes",
    "stored_hashes",
    "overlap",
    "MAX_STORED_HASHES",
    "FINGERPRINT_META_KEYS",
    "CONTENT_HASH_VERSION",
    "content_hash_version",
]

#: Largest data set (bytes of in-memory arrays) :func:`auto_fingerprints` hashes
#: without being asked: about 1 s of SHA-256 per GiB on one core, so a 2 GiB set
#: costs a few seconds once per run.
AUTO_MAX_BYTES = 2 * 2 ** 30

#: Default largest number of per-sample hashes stored per set in ``run.meta``
#: (about 1.1 MB of JSON); larger sets store a consistent hash-based subsample.
MAX_STORED_HASHES = 100_000

#: Keys :func:`split_fingerprints` writes into ``run.meta``. ``probe_fingerprint``
#: (the index fingerprint written by the adapters) is left alone; the probe's
#: content fingerprint is ``probe_content_fingerprint``.
FINGERPRINT_META_KEYS = {
    "train_fingerprint": "sha256 of the sorted per-sample content hashes of the training set",
    "val_fingerprint": "sha256 of the sorted per-sample content hashes of the validation set",
    "probe_content_fingerprint": "sha256 of the sorted per-sample content hashes of the probe set",
    "train_hashes": "base64 of the sorted uint64 (little-endian) content hashes of the training set (maybe sampled)",
    "val_hashes": "base64 of the sorted uint64 (little-endian) content hashes of the validation set (maybe sampled)",
    "train_hashes_rate": "fraction of the uint64 hash space kept in train_hashes (1.0: every sample)",
    "val_hashes_rate": "fraction of the uint64 hash space kept in val_hashes (1.0: every sample)",
    "content_hash": "version of the per-sample content hash (CONTENT_HASH_VERSION); absent: version 1",
}

#: Version of the per-sample content hash. 2: rows of 512 bytes or more hashed with BLAKE2b
#: (:data:`losslens.recording.hashing.WIDE_ROW_BYTES`). 3: floats as float32 in samples whose float values all are
#: float32 values (:func:`_numeric_row_hashes`). Fingerprints of different versions are not comparable.
CONTENT_HASH_VERSION = 3

_U64_MAX = float(2 ** 64)


def _is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "cpu")


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if _is_torch_tensor(x):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            x = x.float()  # no numpy dtype: the float32 values are exact
        return x.numpy()
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{what}: cannot convert {type(x).__name__} to an array: {exc}") from exc
    raise TypeError(f"{what}: unsupported sample type {type(x).__name__}")


def _target_dtype(a: np.ndarray, what: str) -> Any:
    """The canonical dtype of an array's values (None: hash object/str values as text)."""
    kind = a.dtype.kind
    if kind == "b":
        return np.dtype(np.uint8)
    if kind == "i" or (kind == "u" and a.dtype.itemsize < 8):
        return np.dtype("<i8")
    if kind == "u":
        return np.dtype("<u8")
    if kind == "f":
        return np.dtype("<f8")
    if kind == "c":
        return np.dtype("<c16")
    if kind in "UO":
        return None
    raise TypeError(f"{what}: cannot hash arrays of dtype {a.dtype}")


def _kind_tag(a: np.ndarray) -> bytes:
    k = a.dtype.kind
    tag = "f" if k == "f" else "i" if k in "iub" else k
    return f"{tag}{a.shape[1:]}".encode()


#: Rows converted to the canonical dtype at a time (bounds the memory of widening, e.g. uint8 images to int64).
_CHUNK_ROWS = 65_536

#: Canonical bytes converted at a time: a chunk that stays in the CPU caches is widened, canonicalized and hashed
#: in one sweep. With whole 65 536-row chunks, 20 000 float32 images of 32×32×3 were widened to 491 MB first and
#: their fingerprints took 6.5 s on this machine under load; in 4 MiB chunks, see the commit that set this.
_CHUNK_BYTES = 4 * 1024 * 1024


_F4 = np.dtype("<f4")


def _float32_rows(r: np.ndarray) -> np.ndarray:
    """Which rows of a float array (shape (m, k)) hold only float32 values (NaN and ±inf included)."""
    if r.dtype.itemsize <= 4:
        return np.ones(len(r), bool)
    with np.errstate(over="ignore", invalid="ignore"):
        return ((r.astype(_F4) == r) | np.isnan(r)).all(axis=1)


def _numeric_row_hashes(arrays: list[np.ndarray], targets: list[np.dtype], tags: bytes, n: int) -> np.ndarray:
    """Vectorized path: canonical bytes of every part side by side, hashed with
    :func:`losslens.recording.hashing.row_hashes` (first lane).

    Floats are canonical as float32 in a sample whose float values are all float32 values, and as float64 otherwise
    (content-hash version 3): the same values give the same bytes from any float dtype, and float32 images are
    hashed at their own width instead of widened (20 000 CIFAR-sized images: 1.2 s instead of 2.4 s, measured with
    ``benchmarks/overhead.py``'s CNN data). The parts' kinds and shapes (``tags``, and which float width) enter
    through a constant first word, so equal bytes of different dtypes or shapes do not collide. Wide rows take
    ``row_hashes``'s BLAKE2b path part by part (:func:`~losslens.recording.hashing.wide_row_hashes`), without
    copying the parts side by side.
    """
    floats = [k for k, dt in enumerate(targets) if dt.kind == "f"]
    words = {w: np.frombuffer(hashlib.sha256(tags + (b"|f4" if w == _F4 and floats else b"")).digest()[:8],
                              dtype=np.uint8) for w in (_F4, np.dtype("<f8"))}
    out = np.empty(n, dtype=np.uint64)
    row_bytes = 8 + sum(dt.itemsize * (int(np.prod(a.shape[1:])) if a.ndim > 1 else 1)
                        for a, dt in zip(arrays, targets))
    chunk = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // row_bytes))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = [np.asarray(a[start:stop]).reshape(stop - start, -1) for a in arrays]
        narrow = np.ones(stop - start, bool)
        for k in floats:
            narrow &= _float32_rows(rows[k])
        for width, mask in ((_F4, narrow), (np.dtype("<f8"), ~narrow)):
            if not mask.any():
                continue
            sel = slice(None) if mask.all() else np.flatnonzero(mask)
            m = int(mask.sum())
            cols = [np.broadcast_to(words[width], (m, 8))]
            for r, dt in zip(rows, targets):
                c = np.ascontiguousarray(r[sel], dtype=width if dt.kind == "f" else dt)
                if dt.kind in "fc":
                    c = c + c.dtype.type(0.0)  # -0.0 -> +0.0, so the two zeros hash alike (a copy: data untouched)
                    nan = np.isnan(c)
                    if nan.any():
                        c[nan] = np.nan  # one NaN bit pattern
                cols.append(c.view(np.uint8))
            hashed = (wide_row_hashes(cols)[:, 0] if sum(c.shape[1] for c in cols) >= WIDE_ROW_BYTES
                      else row_hashes(np.concatenate(cols, axis=1), lanes=1)[:, 0])
            out[start:stop][sel] = hashed
    return out


def _row_hashes(arrays: list[np.ndarray], what: str) -> np.ndarray:
    n = arrays[0].shape[0]
    for a in arrays[1:]:
        if a.shape[0] != n:
            raise ValueError(f"{what}: parts have different numbers of samples ({n} and {a.shape[0]})")
    targets = [_target_dtype(a, what) for a in arrays]
    tags = b"|".join(_kind_tag(a) for a in arrays)
    if all(dt is not None for dt in targets):
        return _numeric_row_hashes(arrays, targets, tags, n)
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        h = hashlib.sha256(tags)
        for a, dt in zip(arrays, targets):
            row = a[i]
            if dt is None:
                h.update(repr(row.tolist() if isinstance(row, np.ndarray) else row).encode("utf-8"))
            else:
                # per row, so a large uint8 image array is never widened as a whole
                r = np.ascontiguousarray(row, dtype=dt)
                if dt.kind in "fc":
                    r = r + 0.0  # -0.0 -> +0.0, so the two zeros hash alike
                h.update(r.tobytes())
            h.update(b"\x00")
        out[i] = int.from_bytes(h.digest()[:8], "little")
    return out


def sample_hashes(data: Any) -> np.ndarray:
    """Per-sample content hashes of a data set, in the data's order.

    Parameters
    ----------
    data : array-like, tensor, tuple, sequence of str, or indexable dataset
        * a numpy array or torch tensor of shape ``(n, ...)``: row ``i`` is sample ``i``;
        * a tuple ``(X, y)`` (or ``(X, y, ...)``) of arrays/tensors with the same
          first dimension: the parts of sample ``i`` are hashed together; a dict
          of such arrays is the tuple of its values in key order;
        * a list of strings (sample ids or file paths);
        * an indexable dataset with ``__len__`` whose items are arrays, tensors,
          numbers or tuples of them (e.g. ``torch.utils.data.TensorDataset``).

    Returns
    -------
    numpy.ndarray of uint64, shape (n,)
        Each sample's 64-bit content hash: the first lane of :func:`losslens.recording.hashing.row_hashes` of its
        canonical bytes for numbers (module docstring), the first 8 bytes of a SHA-256 (little-endian) for samples
        with strings or objects.

    Raises
    ------
    TypeError
        If the data (or a sample) cannot be converted to arrays.
    ValueError
        If the parts of a tuple have different numbers of samples, or the data is a scalar.
    """
    what = "sample_hashes(data)"
    if isinstance(data, (str, bytes)):
        raise TypeError(f"{what}: got a single {type(data).__name__}; pass a list of sample ids")
    if isinstance(data, (np.generic, int, float, complex)):
        raise ValueError(f"{what}: got a scalar, expected shape (n, ...)")
    if isinstance(data, dict):
        data = tuple(data[k] for k in sorted(data))
    if isinstance(data, tuple):
        parts = [_to_numpy(p, f"{what}, part {i}") for i, p in enumerate(data)]
        if not parts:
            raise ValueError(f"{what}: empty tuple")
        for i, p in enumerate(parts):
            if p.ndim == 0:
                raise ValueError(f"{what}: part {i} is a scalar, expected shape (n, ...)")
        return _row_hashes(parts, what)
    if isinstance(data, np.ndarray) or _is_torch_tensor(data):
        a = _to_numpy(data, what)
        if a.ndim == 0:
            raise ValueError(f"{what}: got a scalar, expected shape (n, ...)")
        return _row_hashes([a], what)
    if isinstance(data, list) and all(isinstance(s, str) for s in data):
        return _row_hashes([np.asarray(data, dtype=object)], what)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        n = len(data)
        out = np.empty(n, dtype=np.uint64)
        for i in range(n):
            item = data[i]
            items: Any = item if isinstance(item, (tuple, list)) else (item,)
            arrays = [_to_numpy(p, f"{what}, sample {i}")[None, ...] for p in items]
            out[i] = _row_hashes(arrays, f"{what}, sample {i}")[0]
        return out
    raise TypeError(f"{what}: unsupported type {type(data).__name__}; pass an array, a tensor, an (X, y) tuple, "
                    "a list of sample ids or an indexable dataset")


def fingerprint_hashes(hashes: np.ndarray) -> str:
    """Order-independent fingerprint of a multiset of per-sample hashes.

    Returns
    -------
    str
        ``"sha256:<hex>"`` of the sorted hashes (little-endian uint64) and their count.
    """
    h = np.sort(np.asarray(hashes, dtype=np.uint64)).astype("<u8")
    d = hashlib.sha256(np.int64(h.size).astype("<i8").tobytes())
    d.update(h.tobytes())
    return "sha256:" + d.hexdigest()


def fingerprint_samples(data: Any) -> dict[str, Any]:
    """Order-independent fingerprint of a set of samples and its per-sample hashes.

    Parameters
    ----------
    data
        See :func:`sample_hashes`.

    Returns
    -------
    dict
        ``{"fingerprint": "sha256:<hex>", "hashes": numpy.ndarray of uint64, shape (n,), sorted, "n": n}``.
        Two data sets holding the same samples in any order have the same fingerprint.
    """
    hashes = np.sort(sample_hashes(data))
    return {"fingerprint": fingerprint_hashes(hashes), "hashes": hashes, "n": int(hashes.size)}


def encode_hashes(hashes: np.ndarray) -> str:
    """Base64 text of sorted little-endian uint64 hashes (for JSON metadata)."""
    return base64.b64encode(np.sort(np.asarray(hashes, dtype=np.uint64)).astype("<u8").tobytes()).decode("ascii")


def decode_hashes(text: str, key: str = "hashes") -> np.ndarray:
    """Inverse of :func:`encode_hashes`.

    Raises
    ------
    ValueError
        If ``text`` is not base64 of a whole number of uint64 values (``key`` names the field).
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, AttributeError, UnicodeEncodeError) as exc:
        raise ValueError(f"run.meta[{key!r}] is not base64 text: {exc}") from exc
    if len(raw) % 8:
        raise ValueError(f"run.meta[{key!r}] holds {len(raw)} bytes, not a whole number of uint64 hashes")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def _subsample(hashes: np.ndarray, max_hashes: int | None) -> tuple[np.ndarray, float]:
    n = hashes.size
    if max_hashes is None or n <= max_hashes:
        return hashes, 1.0
    rate = max_hashes / n
    threshold = np.uint64(min(int(rate * _U64_MAX), 2 ** 64 - 1))
    return hashes[hashes < threshold], rate


def split_fingerprints(train: Any = None, val: Any = None, probe: Any = None,
                       max_hashes: int | None = MAX_STORED_HASHES) -> dict[str, Any]:
    """The split metadata of a run, to merge into ``run.meta``.

    Parameters
    ----------
    train, val, probe : data, optional
        The training, validation and probe sets (see :func:`sample_hashes`);
        a set that is None is left out.
    max_hashes : int or None
        Largest number of per-sample hashes stored per set; above it a
        consistent hash-threshold subsample is stored (module docstring).
        None stores every hash.

    Returns
    -------
    dict
        Keys of :data:`FINGERPRINT_META_KEYS` for the sets given, JSON-serialisable.

    Examples
    --------
    >>> meta.update(split_fingerprints(train=(X_train, y_train), val=(X_val, y_val)))   # doctest: +SKIP
    """
    if max_hashes is not None and max_hashes < 1:
        raise ValueError(f"split_fingerprints: max_hashes must be positive or None, got {max_hashes!r}")
    out: dict[str, Any] = {}
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        fp = fingerprint_samples(data)
        kept, rate = _subsample(fp["hashes"], max_hashes)
        out[f"{name}_fingerprint"] = fp["fingerprint"]
        out[f"{name}_hashes"] = encode_hashes(kept)
        out[f"{name}_hashes_rate"] = rate
    if probe is not None:
        out["probe_content_fingerprint"] = fingerprint_samples(probe)["fingerprint"]
    if out:
        out["content_hash"] = CONTENT_HASH_VERSION
    return out


def content_hash_version(meta: dict[str, Any]) -> int:
    """The content-hash version of a run's stored fingerprints (1 for runs recorded before versions were stored)."""
    v = meta.get("content_hash", 1)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 1


def stored_hashes(meta: dict[str, Any], which: str) -> tuple[np.ndarray, float] | None:
    """The stored hashes of ``which`` (``"train"`` or ``"val"``) and their sampling rate, or None.

    Raises
    ------
    ValueError
        If the stored field is malformed (the message names the key).
    """
    text = meta.get(f"{which}_hashes")
    if text is None:
        return None
    rate = float(meta.get(f"{which}_hashes_rate", 1.0))
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"run.meta[{which + '_hashes_rate'!r}] must be in (0, 1], got {rate!r}")
    return decode_hashes(text, f"{which}_hashes"), rate


def overlap(val: tuple[np.ndarray, float], train: tuple[np.ndarray, float],
            exclude: Iterable[tuple[np.ndarray, float]] = ()) -> tuple[int, int, float]:
    """Estimated fraction of validation samples found in a training set.

    Parameters
    ----------
    val, train : (hashes, rate)
        As returned by :func:`stored_hashes`.
    exclude : iterable of (hashes, rate)
        Hash sets not to count (e.g. the run's own training set: duplicates in the
        data are the split audit's concern, not a changed split).

    Returns
    -------
    found, checked, fraction : int, int, float
        ``found`` of the ``checked`` validation hashes lying in the region both
        sets kept are in the training set; ``fraction = found / checked`` (0 when nothing was checked).
    """
    exclude = list(exclude)
    v, rv = val
    t, rt = train
    rate = min([rv, rt] + [r for _, r in exclude])
    if rate < 1.0:
        thr = np.uint64(min(int(rate * _U64_MAX), 2 ** 64 - 1))
        v = v[v < thr]
    for ex, _ in exclude:
        v = v[~np.isin(v, ex)]
    if v.size == 0:
        return 0, 0, 0.0
    found = int(np.isin(v, t).sum())
    return found, int(v.size), found / v.size


def _nbytes(x: Any) -> int:
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    if _is_torch_tensor(x):
        return int(x.numel() * x.element_size())
    if isinstance(x, tuple):
        return sum(_nbytes(p) for p in x)
    return 0


def in_memory_view(data: Any) -> Any:
    """A view of ``data`` that can be hashed without loading or transforming samples, or None.

    Recognised (duck-typed, no framework import): numpy arrays, torch tensors,
    tuples/lists/dicts of them, lists of sample ids (str), ``TensorDataset`` (``.tensors``), ``Subset``
    (``.dataset`` + ``.indices``), ``DataLoader`` (``.dataset``), and
    folder datasets with a ``.samples`` list of ``(path, class)`` pairs
    (torchvision ``ImageFolder``/``DatasetFolder``: the sample ids are hashed,
    not the image bytes). Anything else (a map-style dataset that decodes files
    in ``__getitem__``) returns None: hashing it would read the whole data set.
    """
    if data is None:
        return None
    if isinstance(data, np.ndarray) or _is_torch_tensor(data):
        return data
    if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
        return data  # sample ids
    if isinstance(data, dict):
        data = tuple(data[k] for k in sorted(data))
    if isinstance(data, (tuple, list)) and data and all(
            isinstance(p, (np.ndarray, dict, tuple, list)) or _is_torch_tensor(p) for p in data):
        parts: list[Any] = []
        for p in data:
            v = in_memory_view(p)
            if v is None:
                return None
            parts.extend(v if isinstance(v, tuple) else (v,))
        n = {int(p.shape[0]) for p in parts if hasattr(p, "shape") and len(p.shape)}
        return tuple(parts) if len(n) == 1 else None
    tensors = getattr(data, "tensors", None)
    if isinstance(tensors, tuple) and tensors and all(_is_torch_tensor(t) for t in tensors):
        return tensors
    inner = getattr(data, "dataset", None)
    if inner is not None:
        indices = getattr(data, "indices", None)
        v = in_memory_view(inner)
        if v is None:
            return None
        if indices is None:
            return v
        idx = np.asarray(list(indices), dtype=np.int64)
        if isinstance(v, list):
            return [v[i] for i in idx]
        return tuple(p[idx] for p in v) if isinstance(v, tuple) else v[idx]
    samples = getattr(data, "samples", None)
    if isinstance(samples, list) and samples and all(
            isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in samples[:10]):
        return [f"{path}\x00{label}" for path, label in samples]
    return None


def auto_fingerprints(train: Any = None, val: Any = None, probe: Any = None,
                      max_hashes: int | None = MAX_STORED_HASHES,
                      max_bytes: int = AUTO_MAX_BYTES) -> dict[str, Any]:
    """:func:`split_fingerprints` of the sets that are cheap to hash (the call for adapters).

    Each set is hashed through :func:`in_memory_view`; a set that is not in
    memory, larger than ``max_bytes``, or not hashable (an unsupported dtype) is
    left out, never raised, and listed under
    ``run.meta["fingerprint_skipped"]`` with the reason (pass its fingerprints
    yourself, e.g. ``meta=split_fingerprints(train=ids_train, val=ids_val)``).

    Returns
    -------
    dict
        Keys of :data:`FINGERPRINT_META_KEYS` for the sets hashed, plus
        ``fingerprint_skipped`` when a set given was skipped.
    """
    views: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, data in (("train", train), ("val", val), ("probe", probe)):
        if data is None:
            continue
        v = in_memory_view(data)
        if v is None:
            skipped[name] = (f"{type(data).__name__} is not an in-memory array/tensor data set; hashing it would "
                             "read every sample")
        elif _nbytes(v) > max_bytes:
            skipped[name] = f"{_nbytes(v)} bytes, above the automatic limit of {max_bytes}"
        else:
            views[name] = v
    out: dict[str, Any] = {}
    for name, v in views.items():
        try:
            part = split_fingerprints(**{name: v}, max_hashes=max_hashes)
        except (TypeError, ValueError) as exc:  # recording never fails because of a fingerprint
            skipped[name] = f"cannot hash: {exc}"
            continue
        out.update(part)
    if skipped:
        out["fingerprint_skipped"] = skipped
    return out
