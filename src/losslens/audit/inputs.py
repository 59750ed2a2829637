"""Converting the caller's training and validation inputs into one internal form.

Accepted inputs (the same kind for both splits):

* NumPy arrays: 1-D of strings (text), 2-D ``(n, d)`` (feature rows), 3-D
  ``(n, H, W)`` or 4-D ``(n, H, W, C)`` / ``(n, C, H, W)`` with ``C`` in
  {1, 3, 4} (images);
* pandas DataFrames (tabular rows; label and group columns can be named);
* lists or tuples of strings (text);
* PyTorch tensors and datasets (``torch.utils.data.Dataset``; items ``(x, y, ...)``,
  ``x`` or a dict with an input and a label key). torch is never imported here:
  torch objects are recognised by their class's module and converted with their
  own methods, so losslens without torch works for everything else.

No framework is imported at module import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["SplitData", "as_split", "KINDS", "normalize_text", "pair_argument"]

#: Kinds of samples the audit knows how to compare.
KINDS = ("array", "image", "table", "text")

_INPUT_KEYS = ("input", "inputs", "x", "image", "images", "pixel_values", "text", "features")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


@dataclass
class SplitData:
    """One split (training or validation) in the audit's internal form.

    Attributes
    ----------
    name : str
        ``"train"`` or ``"val"`` (used in error messages).
    kind : str
        One of :data:`KINDS`.
    data : numpy.ndarray, pandas.DataFrame or list of str
        ``array``: ``(n, d)``; ``image``: ``(n, H, W)`` or ``(n, H, W, C)``;
        ``table``: a DataFrame without label/group columns; ``text``: list of str.
    labels : numpy.ndarray or None
        Shape ``(n,)``.
    groups : numpy.ndarray or None
        Shape ``(n,)``.
    source : str
        What the caller passed, in words (type and shape).
    """

    name: str
    kind: str
    data: Any
    labels: np.ndarray | None = None
    groups: np.ndarray | None = None
    source: str = ""

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.data)


def normalize_text(s: str) -> str:
    """Normalize a text for exact-duplicate hashing.

    Unicode NFKC normalization (compatibility forms, e.g. full-width letters and
    ligatures, fold to their plain form), case folding (``str.casefold``) and
    whitespace collapsed to single spaces with the ends stripped.

    Parameters
    ----------
    s : str

    Returns
    -------
    str
    """
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def _is_torch(obj: Any) -> bool:
    return any(getattr(c, "__module__", "").split(".")[0] == "torch" for c in type(obj).__mro__)


def _tensor_to_numpy(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def _to_numpy_item(x: Any, where: str) -> Any:
    if isinstance(x, str):
        return x
    if _is_torch(x) and hasattr(x, "detach"):
        return _tensor_to_numpy(x)
    if hasattr(x, "__array__") or isinstance(x, (int, float, bool, np.generic, list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{where}: cannot convert an item of type {type(x).__name__} to an array "
                    "(expected a tensor, an array, a number or a string)")


def _from_torch(obj: Any, name: str) -> tuple[Any, np.ndarray | None, str]:
    """Convert a torch tensor or dataset to (inputs, labels or None, description)."""
    if hasattr(obj, "detach"):  # a tensor
        arr = _tensor_to_numpy(obj)
        return arr, None, f"torch tensor {tuple(arr.shape)}"
    tensors = getattr(obj, "tensors", None)
    if tensors is not None and len(tensors) >= 1 and all(hasattr(t, "detach") for t in tensors):  # TensorDataset
        x = _tensor_to_numpy(tensors[0])
        y = _tensor_to_numpy(tensors[1]) if len(tensors) > 1 else None
        return x, y, f"torch TensorDataset {tuple(x.shape)}"
    try:
        n = len(obj)
    except TypeError as exc:
        raise TypeError(f"{name}: torch object {type(obj).__name__} has no len(); pass a map-style Dataset, "
                        "a tensor, or the inputs as a NumPy array") from exc
    xs: list[Any] = []
    ys: list[Any] = []
    for i in range(n):
        item = obj[i]
        where = f"{name}[{i}]"
        if isinstance(item, dict):
            xk = next((k for k in _INPUT_KEYS if k in item), None)
            if xk is None:
                raise ValueError(f"{where}: dict item without an input key (one of {_INPUT_KEYS}); "
                                 f"keys are {sorted(item)}")
            xs.append(_to_numpy_item(item[xk], where))
            yk = next((k for k in _LABEL_KEYS if k in item), None)
            ys.append(_to_numpy_item(item[yk], where) if yk is not None else None)
        elif isinstance(item, (tuple, list)):
            xs.append(_to_numpy_item(item[0], where))
            ys.append(_to_numpy_item(item[1], where) if len(item) > 1 else None)
        else:
            xs.append(_to_numpy_item(item, where))
            ys.append(None)
    if xs and all(isinstance(x, str) for x in xs):
        x_out: Any = list(xs)
    else:
        shapes = {np.shape(x) for x in xs}
        if len(shapes) > 1:
            raise ValueError(f"{name}: dataset items have different shapes {sorted(shapes)[:4]}; "
                             "pass fixed-size inputs or embeddings=")
        x_out = np.stack(xs) if xs else np.empty((0, 0))
    y_out = None
    if ys and all(y is not None and np.ndim(y) == 0 for y in ys):
        y_out = np.asarray([np.asarray(y).item() for y in ys])
    return x_out, y_out, f"torch dataset {type(obj).__name__} ({n} items)"


def _image_layout(arr: np.ndarray) -> np.ndarray:
    """(n,H,W) stays; (n,C,H,W) with C in 1,3,4 becomes (n,H,W,C); (n,H,W,1) becomes (n,H,W)."""
    if arr.ndim == 4 and arr.shape[-1] not in (1, 3, 4) and arr.shape[1] in (1, 3, 4):
        arr = np.moveaxis(arr, 1, -1)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def _column(df: pd.DataFrame, col: str, name: str, what: str) -> np.ndarray:
    if col not in df.columns:
        raise KeyError(f"{what} column {col!r} not in the {name} DataFrame; columns are {list(df.columns)[:20]}")
    return df[col].to_numpy()


def pair_argument(value: Any, arg: str) -> tuple[Any, Any] | None:
    """Check that a per-split argument is ``None`` or a ``(train, val)`` pair.

    Raises
    ------
    TypeError
        With the argument's name, if ``value`` is neither.
    """
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value[0], value[1]
    raise TypeError(f"{arg} must be a (train, val) pair of arrays" + (" or a column name" if arg in (
        "labels", "groups") else "") + f", got {type(value).__name__}")


def _per_sample(value: Any, n: int, arg: str, name: str) -> np.ndarray:
    if _is_torch(value) and hasattr(value, "detach"):
        value = _tensor_to_numpy(value)
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{arg} for {name}: expected shape ({n},) (one per {name} sample), got {arr.shape}")
    return arr


def as_split(obj: Any, name: str, *, kind: str = "auto", labels: Any = None, groups: Any = None,
             image_shape: Sequence[int] | None = None) -> SplitData:
    """Convert one split to :class:`SplitData`.

    Parameters
    ----------
    obj : array-like, DataFrame, list of str, torch tensor or dataset
        The samples (see the module docstring).
    name : str
        ``"train"`` or ``"val"``, for error messages.
    kind : {"auto", "array", "image", "table", "text"}
        Force the kind; ``"auto"`` decides from the type and shape.
    labels, groups : str, array-like or None
        A column name (DataFrames only; the column is removed from the
        features) or one value per sample.
    image_shape : tuple of int, optional
        Reshape flat rows ``(n, H*W[*C])`` to images ``(n, *image_shape)``.

    Returns
    -------
    SplitData

    Raises
    ------
    TypeError
        If the input type is not supported.
    ValueError
        If shapes are inconsistent, the split is empty, or ``kind`` is unknown.
    KeyError
        If a named label or group column is missing.
    """
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind must be 'auto' or one of {KINDS}, got {kind!r}")
    torch_labels = None
    if isinstance(obj, pd.DataFrame):
        df = obj.reset_index(drop=True)
        lab = _column(df, labels, name, "label") if isinstance(labels, str) else labels
        grp = _column(df, groups, name, "group") if isinstance(groups, str) else groups
        drop = [c for c in (labels, groups) if isinstance(c, str)]
        df = df.drop(columns=drop)
        if df.shape[1] == 0:
            raise ValueError(f"{name}: no feature columns left after removing {drop}")
        data: Any = df
        source = f"DataFrame ({len(df)} rows × {df.shape[1]} columns)"
        k = "table" if kind == "auto" else kind
        if k != "table":
            raise ValueError(f"{name}: a DataFrame can only be audited as kind='table', got {kind!r}")
        return _finish(SplitData(name, "table", data, None, None, source), lab, grp)
    if isinstance(labels, str) or isinstance(groups, str):
        raise TypeError(f"{name}: labels/groups given as a column name need DataFrame inputs, "
                        f"got {type(obj).__name__}")
    if _is_torch(obj):
        obj, torch_labels, source = _from_torch(obj, name)
    elif isinstance(obj, (list, tuple)) and obj and all(isinstance(s, str) for s in obj):
        source = f"list of {len(obj)} strings"
    elif isinstance(obj, (np.ndarray, list, tuple)):
        source = ""
    elif hasattr(obj, "__array__"):
        source = f"{type(obj).__name__}"
    else:
        raise TypeError(f"{name}: unsupported input type {type(obj).__name__}; pass a NumPy array, a pandas "
                        "DataFrame, a list of strings or a torch tensor/dataset")
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(s, str) for s in obj):
        texts = list(obj)
        if kind not in ("auto", "text"):
            raise ValueError(f"{name}: a list of strings can only be audited as kind='text', got {kind!r}")
        return _finish(SplitData(name, "text", texts, None, None, source or f"{len(texts)} texts"),
                       labels if labels is not None else torch_labels, groups)
    arr = np.asarray(obj)
    source = source or f"array {arr.shape} {arr.dtype}"
    if arr.dtype.kind in "US" or (arr.dtype == object and arr.ndim == 1 and arr.size
                                  and all(isinstance(s, str) for s in arr)):
        if arr.ndim != 1:
            raise ValueError(f"{name}: text must be a 1-D array of strings, got shape {arr.shape}")
        return _finish(SplitData(name, "text", [str(s) for s in arr], None, None, source),
                       labels if labels is not None else torch_labels, groups)
    if arr.dtype == object:
        raise TypeError(f"{name}: object array {arr.shape} is neither text nor numbers; convert it first")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: unsupported dtype {arr.dtype} (expected numbers or strings)")
    if arr.ndim == 0 or len(arr) == 0:
        raise ValueError(f"{name}: empty input {arr.shape}")
    if image_shape is not None:
        try:
            arr = arr.reshape((len(arr), *image_shape))
        except ValueError as exc:
            raise ValueError(f"{name}: cannot reshape {arr.shape} to images of shape {tuple(image_shape)}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    k = kind
    if k == "auto":
        k = "array" if arr.ndim == 2 else "image"
    if k == "image":
        if arr.ndim not in (3, 4):
            raise ValueError(f"{name}: images must be (n, H, W), (n, H, W, C) or (n, C, H, W), got {arr.shape}; "
                             "pass image_shape= for flat rows")
        arr = _image_layout(arr)
        if arr.ndim == 4 and arr.shape[-1] not in (3, 4):
            raise ValueError(f"{name}: image channels must be 1, 3 or 4, got shape {arr.shape}")
    elif k == "array":
        if arr.ndim > 2:
            arr = arr.reshape(len(arr), -1)
    else:
        raise ValueError(f"{name}: a numeric array cannot be audited as kind={k!r}")
    return _finish(SplitData(name, k, arr, None, None, source),
                   labels if labels is not None else torch_labels, groups)


def _finish(split: SplitData, labels: Any, groups: Any) -> SplitData:
    n = split.n
    if n == 0:
        raise ValueError(f"{split.name}: no samples")
    if labels is not None:
        split.labels = _per_sample(labels, n, "labels", split.name)
    if groups is not None:
        split.groups = _per_sample(groups, n, "groups", split.name)
    return split


def check_compatible(train: SplitData, val: SplitData) -> None:
    """Raise ``ValueError`` if the two splits cannot be compared sample by sample."""
    if train.kind != val.kind:
        raise ValueError(f"train is {train.kind} ({train.source}) but val is {val.kind} ({val.source}); "
                         "both splits must be of the same kind")
    if train.kind in ("array", "image") and train.data.shape[1:] != val.data.shape[1:]:
        raise ValueError(f"train samples have shape {train.data.shape[1:]} but val samples "
                         f"{val.data.shape[1:]}")
    if train.kind == "table" and list(train.data.columns) != list(val.data.columns):
        missing = set(map(str, train.data.columns)) ^ set(map(str, val.data.columns))
        if missing:
            raise ValueError(f"train and val DataFrames have different columns: {sorted(missing)[:10]}")
        val.data = val.data[list(train.data.columns)]
