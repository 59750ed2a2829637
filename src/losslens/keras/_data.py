"""Data and losses for the Keras callback: per-sample losses from ``model.loss``, indexing of array structures
and ``PyDataset`` objects, and the arguments of the running ``fit`` call."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from ..record import Steps

__all__ = ["LossLensError", "per_sample_loss", "resolve_data", "layer_kinds", "tracker_steps"]

#: Keras layer classes whose output differs between training and inference.
_TRAIN_MODE_LAYER_NAMES = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "ActivityRegularization",
)
_BATCHNORM_NAMES = ("BatchNormalization",)

_LOSS_KINDS = {
    "mse": "mse", "mean_squared_error": "mse", "meansquarederror": "mse",
    "mae": "mae", "mean_absolute_error": "mae", "meanabsoluteerror": "mae",
    "categorical_crossentropy": "cross_entropy", "categoricalcrossentropy": "cross_entropy",
    "sparse_categorical_crossentropy": "cross_entropy", "sparsecategoricalcrossentropy": "cross_entropy",
    "binary_crossentropy": "binary_cross_entropy", "binarycrossentropy": "binary_cross_entropy",
}


class LossLensError(ValueError):
    """The callback cannot measure this run as configured (the message says what to pass)."""


# ---------------------------------------------------------------------------------------------
# per-sample losses
# ---------------------------------------------------------------------------------------------
def _loss_name(loss: Any) -> str:
    if isinstance(loss, str):
        return loss
    if isinstance(loss, keras.losses.Loss):
        fn = getattr(loss, "fn", None)
        return getattr(fn, "__name__", None) or type(loss).__name__
    return getattr(loss, "__name__", type(loss).__name__)


def _loss_kind(loss: Any) -> str | None:
    names = {_loss_name(loss).lower()}
    if isinstance(loss, keras.losses.Loss):
        names.add(type(loss).__name__.lower())
    for n in names:
        if n in _LOSS_KINDS:
            return _LOSS_KINDS[n]
    return None


def per_sample_loss(loss: Any) -> Callable[[Any, Any], Any]:
    """A function ``(y_true, y_pred) -> per-sample losses`` equal to a Keras loss.

    Parameters
    ----------
    loss : str, keras.losses.Loss or callable
        What was passed to ``model.compile(loss=...)`` for a single-output model.
        A ``Loss`` instance is copied with ``reduction=None`` (its
        ``from_logits``, ``label_smoothing``, ... are kept); a string is
        resolved with ``keras.losses.get``; a function is called as is.

    Returns
    -------
    callable
        ``f(y_true, y_pred)`` returning a tensor of shape ``(batch,)``: the loss of
        each sample, averaged over any non-batch axes. Its mean over a batch equals
        Keras's default ``"sum_over_batch_size"`` reduction (without sample weights).

    Raises
    ------
    LossLensError
        If ``loss`` is None, a list or dict (multi-output models: pass
        ``loss_fn=`` to :class:`LossLens`), or a ``Loss`` whose config cannot be
        rebuilt with ``reduction=None``.
    """
    if loss is None or isinstance(loss, (list, tuple, dict)):
        raise LossLensError(
            f"LossLens: cannot derive a per-sample loss from compile(loss={loss!r}); for multi-output models or "
            "custom training steps pass loss_fn=callable(y_true, y_pred) -> per-sample losses of shape (batch,)")
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        try:
            cfg = loss.get_config()
            cfg["reduction"] = None
            fn = type(loss).from_config(cfg)
        except Exception as exc:  # noqa: BLE001 - any failure means the copy is not usable
            raise LossLensError(
                f"LossLens: cannot copy the loss {type(loss).__name__} with reduction=None ({exc}); "
                "pass loss_fn=callable(y_true, y_pred) -> per-sample losses") from exc
    elif callable(loss):
        fn = loss
    else:
        raise LossLensError(f"LossLens: compile(loss=...) is {type(loss).__name__}, not a loss")

    def f(y_true: Any, y_pred: Any) -> Any:
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        # Keras squeezes (n,) against (n, 1) and would then average over the batch axis;
        # expanding the target keeps one value per sample with the same mean.
        if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
            y_true = ops.expand_dims(y_true, -1)
        v = fn(y_true, y_pred)
        v = ops.convert_to_tensor(v)
        if len(v.shape) == 0:
            raise LossLensError(
                f"LossLens: the loss {_loss_name(loss)!r} returned a scalar for a batch; pass loss_fn= that returns "
                "one loss per sample")
        if len(v.shape) > 1:
            v = ops.mean(ops.reshape(v, (v.shape[0], -1)), axis=1)
        return v

    return f


# ---------------------------------------------------------------------------------------------
# data handling
# ---------------------------------------------------------------------------------------------
def _is_array(a: Any) -> bool:
    return hasattr(a, "shape") and hasattr(a, "__getitem__") and len(getattr(a, "shape", ())) >= 1


def _n_samples(x: Any) -> int:
    leaves = keras.tree.flatten(x)
    return int(leaves[0].shape[0])


def _input_bytes(x: Any) -> int:
    """Bytes of every array in a (possibly nested) input structure (0 for leaves without ``nbytes``)."""
    return int(sum(int(getattr(a, "nbytes", 0) or 0) for a in keras.tree.flatten(x)))


def _take(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of every array in a (possibly nested) structure, as NumPy."""
    def one(a: Any) -> Any:
        a = keras.ops.convert_to_numpy(a) if not isinstance(a, np.ndarray) else a
        return a[idx]
    return keras.tree.map_structure(one, x)


def _as_numpy(x: Any) -> Any:
    return keras.tree.map_structure(lambda a: a if isinstance(a, np.ndarray) else keras.ops.convert_to_numpy(a), x)


def _indexable(x: Any) -> bool:
    try:
        return all(_is_array(a) for a in keras.tree.flatten(x))
    except Exception:  # noqa: BLE001
        return False


def _materialize_pydataset(ds: Any, what: str) -> tuple[Any, Any, int]:
    """Concatenate every batch of a ``keras.utils.PyDataset``.

    Returns ``(x, y, batch_size)`` as NumPy structures.
    """
    n = ds.num_batches
    if n is None:
        raise LossLensError(f"LossLens: the {what} PyDataset has no num_batches (infinite); pass {what}=(x, y) arrays")
    xs, ys, bs = [], [], 0
    for i in range(n):
        batch = ds[i]
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise LossLensError(f"LossLens: the {what} PyDataset item {i} is not an (x, y) or (x, y, w) tuple")
        xs.append(_as_numpy(batch[0]))
        ys.append(_as_numpy(batch[1]))
        bs = max(bs, _n_samples(batch[0]))
    x = keras.tree.map_structure(lambda *a: np.concatenate(a, axis=0), *xs)
    y = keras.tree.map_structure(lambda *a: np.concatenate(a, axis=0), *ys)
    return x, y, bs


def _to_tensors(x: Any) -> Any:
    """NumPy structure -> backend tensors (floating arrays cast to ``keras.backend.floatx()``)."""
    def one(a: Any) -> Any:
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            a = a.astype(keras.backend.floatx(), copy=False)
        return ops.convert_to_tensor(a)
    return keras.tree.map_structure(one, x)


def _fit_locals(model: Any) -> dict[str, Any] | None:
    """The arguments of the running ``model.fit`` call, read from its stack frame.

    Keras does not hand its training and validation data to callbacks; the
    ``fit`` methods of all three backend trainers (Keras 3) bind them to the
    locals ``x, y, sample_weight`` (the training part, after
    ``validation_split``), ``val_x, val_y``, ``batch_size``,
    ``validation_split``, ``class_weight`` and ``initial_epoch`` before ``on_train_begin``.
    Only these names are read; nothing is executed. Returns None outside ``fit``.
    """
    f: Any = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "fit" and f.f_locals.get("self") is model:
            loc = f.f_locals
            keys = ("x", "y", "sample_weight", "val_x", "val_y", "validation_data", "batch_size",
                    "validation_split", "class_weight", "validation_batch_size", "shuffle", "initial_epoch")
            return {k: loc.get(k) for k in keys}
        f = f.f_back
    return None


def _layers(model: Any) -> list[Any]:
    try:
        return list(model._flatten_layers(include_self=False))
    except Exception:  # noqa: BLE001 - fall back on the public attribute
        out, stack = [], list(getattr(model, "layers", []))
        while stack:
            layer = stack.pop(0)
            out.append(layer)
            stack.extend(getattr(layer, "layers", []))
        return out


def layer_kinds(model: Any) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names of the layers that behave differently in training: ``(dropout/noise, batch norm, Keras augmentation,
    custom non-Keras layers)`` (a custom layer may do anything in training mode, so it counts)."""
    dropout, bn, aug, custom = [], [], [], []
    for layer in _layers(model):
        cls = type(layer)
        names = {c.__name__ for c in cls.__mro__}
        builtin = cls.__module__.startswith("keras.")
        rates = [getattr(layer, a, None) for a in ("dropout", "recurrent_dropout")]
        if names & set(_TRAIN_MODE_LAYER_NAMES) or any(
                isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates):
            dropout.append(layer.name)
        elif names & set(_BATCHNORM_NAMES):
            bn.append(layer.name)
        elif cls.__name__.startswith("Random") and builtin:
            aug.append(layer.name)
        elif not builtin and not isinstance(layer, (keras.Model,)):
            custom.append(layer.name)
    return dropout, bn, aug, custom


def resolve_data(train_arg: Any, val_arg: Any, fit: dict[str, Any], batch_size: int | None) -> tuple[Any, Any, Any]:
    """The clean training data, the validation data and the training batch size of a Keras run.

    From the callback's ``train_data``/``val_data`` when given, else from the running ``fit`` call's arguments
    (:func:`_fit_locals`): ``(x, y)`` arrays or a ``PyDataset`` (materialized). With ``validation_split``, full
    arrays given as ``train_data`` lose the validation tail ``fit`` split off.

    Returns
    -------
    ((x, y), (x_val, y_val) or (None, None), batch size or None)

    Raises
    ------
    LossLensError
        When the data cannot be indexed (``tf.data``, generators); the message says what to pass.
    """
    # training data for the probe
    src = train_arg
    train_bs = batch_size or fit.get("batch_size")
    if src is None:
        if fit.get("x") is None:
            raise LossLensError("LossLens: no training data found; pass train_data=(x_train, y_train)")
        if isinstance(fit["x"], keras.utils.PyDataset):
            src = fit["x"]
        elif fit.get("y") is not None and _indexable(fit["x"]) and _indexable(fit["y"]):
            src = (fit["x"], fit["y"])
        else:
            raise LossLensError(
                f"LossLens: cannot index the training data passed to fit (type {type(fit['x']).__name__}, e.g. "
                "a tf.data.Dataset or a generator); pass train_data=(x_train, y_train): NumPy arrays of (a "
                "subset of) the clean training data")
    if isinstance(src, keras.utils.PyDataset):
        px, py, pbs = _materialize_pydataset(src, "probe")
        train_bs = train_bs or pbs
    elif isinstance(src, (tuple, list)) and len(src) == 2 and _indexable(src[0]) and _indexable(src[1]):
        px, py = src
    else:
        raise LossLensError(
            f"LossLens: train_data must be (x, y) arrays or a keras.utils.PyDataset, got {type(src).__name__}")
    # validation data
    vsrc = val_arg
    if vsrc is None and fit.get("val_x") is not None:
        vx = fit["val_x"]
        if isinstance(vx, keras.utils.PyDataset):
            vsrc = vx
        elif fit.get("val_y") is not None and _indexable(vx) and _indexable(fit["val_y"]):
            vsrc = (vx, fit["val_y"])
        else:
            raise LossLensError(
                f"LossLens: cannot index the validation data passed to fit (type {type(vx).__name__}); "
                "pass val_data=(x_val, y_val) arrays")
    if vsrc is None:
        vx = vy = None
    elif isinstance(vsrc, keras.utils.PyDataset):
        vx, vy, _ = _materialize_pydataset(vsrc, "validation")
    elif isinstance(vsrc, (tuple, list)) and len(vsrc) >= 2 and _indexable(vsrc[0]) and _indexable(vsrc[1]):
        vx, vy = vsrc[0], vsrc[1]
    else:
        raise LossLensError(
            f"LossLens: val_data must be (x, y) arrays or a keras.utils.PyDataset, got {type(vsrc).__name__}")
    n_train = _n_samples(px)
    # validation_split: the explicit probe arrays may be the full arrays fit split; keep the training head.
    split = fit.get("validation_split") or 0.0
    if train_arg is not None and split and vx is not None and fit.get("x") is not None \
            and _indexable(fit["x"]):
        n_fit, n_val = _n_samples(fit["x"]), _n_samples(vx)
        if n_train == n_fit + n_val:
            n_train = n_fit
            px = keras.tree.map_structure(lambda a: a[:n_fit], px)
            py = keras.tree.map_structure(lambda a: a[:n_fit], py)
    return (px, py), (vx, vy), train_bs


def tracker_steps(epoch: int, totals_dev: list[Any], counts_dev: list[Any], weight_pen: list[Any],
                  act_pen: list[Any], per_step: bool, n_steps: int) -> tuple[Steps, float, float, int]:
    """The epoch's step losses recovered from Keras's loss tracker (a ``keras.metrics.Mean`` weighted by batch
    size), read from the device once: step k's total loss is ``(total_k − total_{k−1}) / (count_k −
    count_{k−1})``, its penalty the weight regularizers it used plus its activity/``add_loss`` terms.

    Parameters
    ----------
    totals_dev, counts_dev : list of device scalars
        The tracker's running total and count copied before each step (and at the epoch end).
    weight_pen, act_pen : list of device scalars or None
        Per step: the weight-regularizer sum at the weights the step used; the activity/``add_loss`` sum.
    per_step : bool
        False on JAX (state synchronised at the epoch end only): one row stands for the epoch.
    n_steps : int
        Steps taken (the span of the single row when ``per_step`` is False).

    Returns
    -------
    (Steps, R, Ω, samples): losses per sample, data part.
    """
    totals = np.asarray(ops.convert_to_numpy(ops.stack(totals_dev)), dtype=np.float64)
    counts = np.asarray(ops.convert_to_numpy(ops.stack(counts_dev)), dtype=np.float64)
    d_tot = np.diff(np.concatenate([[0.0], totals]))
    d_cnt = np.diff(np.concatenate([[0.0], counts]))
    total_loss = d_tot / np.where(d_cnt > 0, d_cnt, np.nan)
    k = total_loss.size
    if not per_step:
        # one row standing for the whole epoch: its mean, at the epoch centre, spanning every step
        pen = weight_pen[0], act_pen[0]
        p = float(sum(float(ops.convert_to_numpy(v)) for v in pen if v is not None))
        n = float(counts[-1])
        r = float(totals[-1] / n) - p if n > 0 else math.nan
        steps = Steps.build([epoch], [r], position=[epoch + 0.5], batch_size=[n], penalty=[p],
                            span=[max(n_steps, 1)])
        return steps, r, p, int(n)

    def col(vals: list[Any]) -> np.ndarray:
        out = np.zeros(k)
        idx = [i for i, v in enumerate(vals[:k]) if v is not None]
        if idx:   # one device-to-host transfer per epoch
            out[idx] = np.asarray(ops.convert_to_numpy(ops.stack([vals[i] for i in idx])), dtype=np.float64)
        return out

    penalty = col(weight_pen) + col(act_pen)
    data = total_loss - penalty
    w = d_cnt
    n = float(w.sum())
    omega = float((penalty * w).sum() / n) if n > 0 else 0.0
    r = float(totals[-1] / counts[-1]) - omega if counts[-1] > 0 else math.nan
    steps = Steps.build(np.full(k, epoch), data, batch_size=w, penalty=penalty)
    return steps, r, omega, int(n)
