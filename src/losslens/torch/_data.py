"""Batches for the PyTorch adapter: indexable sources, unpacking, device moves, per-sample losses."""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..record import Measurement
from ..recording.probe import class_strata

__all__ = ["default_unpack", "default_forward", "per_sample_loss_fn", "Source", "batch_len", "loss_name",
           "check_torch_args", "train_mode_layers", "weight_decay_of",
           "LOSS_KINDS", "TARGET_KEYS", "as_measurement", "stack_cpu", "to_device", "slice_batch", "input_bytes"]

#: Keys tried, in order, for the target of a dict item by :func:`default_unpack`.
TARGET_KEYS = ("labels", "label", "target", "y")

# --------------------------------------------------------------------------------------------
# batches: unpack, forward, device moves, slicing
# --------------------------------------------------------------------------------------------
def default_unpack(batch: Any) -> tuple[Any, Any]:
    """Split a collated batch into ``(inputs, target)``.

    * a 2-sequence ``(x, y)`` gives ``inputs = x``;
    * a longer sequence gives ``inputs = tuple(batch[:-1])``, ``target = batch[-1]``
      (the model is called as ``model(*inputs)``);
    * a dict gives the target from the first of the keys ``"labels"``, ``"label"``,
      ``"target"``, ``"y"`` and ``inputs`` = the other entries (``model(**inputs)``).

    Raises
    ------
    TypeError
        If the batch is none of these; pass ``unpack=`` to :class:`Lens`.
    """
    if isinstance(batch, dict):
        for key in TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
        raise TypeError(
            f"unpack: dict items need a target under one of {TARGET_KEYS}, got keys {sorted(batch)}; "
            "pass unpack=lambda batch: (inputs, target) to Lens"
        )
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) > 2:
            return tuple(batch[:-1]), batch[-1]
    raise TypeError(
        f"unpack: cannot split a batch of type {type(batch).__name__} into (inputs, target); "
        "items must be (x, y), (x1, ..., y) or dicts, or pass unpack=lambda batch: (inputs, target) to Lens"
    )


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple, ``model(**inputs)`` for a dict, else ``model(inputs)``."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def slice_batch(x: Any, sl: slice) -> Any:
    """Rows ``sl`` of every tensor in a (nested) batch."""
    if isinstance(x, torch.Tensor):
        return x[sl]
    if isinstance(x, dict):
        return {k: slice_batch(v, sl) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(slice_batch(v, sl) for v in x)
    return x


def batch_len(x: Any) -> int | None:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else None
    if isinstance(x, dict):
        for v in x.values():
            n = batch_len(v)
            if n is not None:
                return n
    if isinstance(x, (tuple, list)):
        for v in x:
            n = batch_len(v)
            if n is not None:
                return n
    return None


def input_bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.numel()
    if isinstance(x, dict):
        return sum(input_bytes(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(input_bytes(v) for v in x)
    return 0


# --------------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------------
class Source:
    """Index-able view of a probe/train/val argument: ``batch(indices)`` gives a collated batch.

    Tensor data (a tuple of tensors or a ``TensorDataset``) is indexed directly;
    any other map-style dataset is read item by item and collated with the
    DataLoader's ``collate_fn`` (``default_collate`` otherwise).
    """

    def __init__(self, data: Any, name: str) -> None:
        self.name = name
        self.tensors: tuple[torch.Tensor, ...] | None = None
        self.dataset: Any = None
        self.collate: Callable[[list], Any] = torch.utils.data.default_collate
        if isinstance(data, torch.utils.data.DataLoader):
            if data.collate_fn is not None:
                self.collate = data.collate_fn
            data = data.dataset
        if isinstance(data, torch.utils.data.IterableDataset):
            raise TypeError(
                f"{name}: an iterable-style dataset ({type(data).__name__}) cannot be indexed; pass a map-style "
                "Dataset, a TensorDataset, a DataLoader over one, or a tuple (X, y) of tensors"
            )
        if isinstance(data, (tuple, list)) and data and all(
            isinstance(t, (torch.Tensor, np.ndarray)) for t in data
        ):
            tensors = tuple(torch.as_tensor(t) for t in data)
            if len(tensors) < 2:
                raise ValueError(f"{name}: a tuple of tensors needs inputs and a target, got {len(tensors)} tensor")
            self._set_tensors(tensors)
        elif isinstance(data, torch.utils.data.TensorDataset) and self.collate is torch.utils.data.default_collate:
            self._set_tensors(tuple(data.tensors))
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, (str, bytes, dict)):
            self.dataset = data
            self.n = len(data)
        else:
            raise TypeError(
                f"{name}: expected a tuple (X, y) of tensors, a TensorDataset, a map-style Dataset or a DataLoader, "
                f"got {type(data).__name__}"
            )
        if self.n == 0:
            raise ValueError(f"{name}: the dataset is empty")

    def _set_tensors(self, tensors: tuple[torch.Tensor, ...]) -> None:
        lengths = {int(t.shape[0]) if t.ndim else -1 for t in tensors}
        if len(lengths) != 1 or -1 in lengths:
            raise ValueError(
                f"{self.name}: tensors must share their first dimension, got shapes "
                f"{[tuple(t.shape) for t in tensors]}"
            )
        self.tensors = tensors
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def class_strata(self) -> np.ndarray | None:
        """Class codes of every sample's target for a stratified probe
        (:func:`losslens.recording.probe.class_strata`), when the targets are readable without reading the inputs:
        the last tensor of tensor data (the target of the default unpacking), a dataset's ``targets`` list
        (torchvision's convention), or the label column (:data:`TARGET_KEYS`) of a dataset with scalar integer
        columns (a Hugging Face ``datasets.Dataset``). None otherwise (reading the labels would read every
        sample): a simple random probe."""
        try:
            if self.tensors is not None:
                return class_strata(self.tensors[-1].detach().cpu().numpy())
            targets = getattr(self.dataset, "targets", None)      # torchvision's datasets keep their labels here
            if targets is not None and not callable(targets) and len(targets) == self.n:
                return class_strata(np.asarray(targets))
            features = getattr(self.dataset, "features", None)
            if features is None or not hasattr(self.dataset, "column_names"):
                return None
            for key in TARGET_KEYS:
                if key in features:
                    dtype = str(getattr(features[key], "dtype", ""))
                    if dtype.startswith(("int", "uint", "bool")) or hasattr(features[key], "num_classes"):
                        column = self.dataset[key]
                        return class_strata(column.numpy() if isinstance(column, torch.Tensor) else column)
                    return None
        except Exception:  # noqa: BLE001 - targets losslens cannot read as labels: a simple random probe
            return None
        return None

    def batch(self, indices: np.ndarray) -> Any:
        if self.tensors is not None:
            idx = torch.as_tensor(indices, dtype=torch.long)
            return tuple(t[idx.to(t.device)] for t in self.tensors)
        getitems = getattr(self.dataset, "__getitems__", None)  # batched reads, as torch's DataLoader does
        if getitems is not None:
            return self.collate(getitems([int(i) for i in indices]))
        return self.collate([self.dataset[int(i)] for i in indices])


# --------------------------------------------------------------------------------------------
# per-sample losses
# --------------------------------------------------------------------------------------------
LOSS_KINDS = {
    "crossentropyloss": "cross_entropy",
    "cross_entropy": "cross_entropy",
    "nllloss": "cross_entropy",
    "nll_loss": "cross_entropy",
    "bceloss": "binary_cross_entropy",
    "bcewithlogitsloss": "binary_cross_entropy",
    "binary_cross_entropy": "binary_cross_entropy",
    "binary_cross_entropy_with_logits": "binary_cross_entropy",
    "mseloss": "mse",
    "mse_loss": "mse",
    "l1loss": "mae",
    "l1_loss": "mae",
}


def loss_name(loss_fn: Any) -> str:
    if isinstance(loss_fn, functools.partial):
        return loss_name(loss_fn.func)
    if isinstance(loss_fn, nn.Module):
        return type(loss_fn).__name__
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)


def _accepts_reduction(fn: Any) -> bool:
    try:
        return "reduction" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def per_sample_loss_fn(loss_fn: Callable[..., torch.Tensor]) -> tuple[Callable[[Any, Any], torch.Tensor], str]:
    """A function ``(outputs, target) -> per-sample losses, shape (batch,)`` from any torch loss.

    * an ``nn.modules.loss._Loss`` with a ``reduction`` attribute: a shallow copy
      with ``reduction="none"`` (parameters such as class weights are shared);
    * a function accepting ``reduction=`` (``torch.nn.functional`` losses): called
      with ``reduction="none"``;
    * anything else: called once per sample on ``outputs[i:i+1]``, ``target[i:i+1]``
      (slow; :class:`Lens` warns once).

    Results with more than one dimension are reduced by the mean over the
    non-batch dimensions (so an MSE per sample is the mean over its outputs, as
    ``reduction="mean"`` computes it).

    A loss with a ``per_sample_tokens(outputs, target) -> (losses, tokens)`` method (the token losses of
    :mod:`losslens.transformers`) gives ``fn`` returning shape ``(batch, 2)``: each sample's loss and its weight
    (counted tokens), method ``"token-weighted"``; :func:`as_measurement` splits the two.

    Returns
    -------
    fn : callable
        ``fn(outputs, target)`` -> float tensor of shape ``(batch,)``.
    method : str
        ``"reduction=none"``, ``"per-sample calls"`` or ``"token-weighted"``.
    """
    base: Any
    weighted = getattr(loss_fn, "per_sample_tokens", None)
    if callable(weighted):
        def tokens_fn(out: Any, target: Any) -> torch.Tensor:
            losses, tokens = weighted(out, target)
            return torch.stack([losses.float(), tokens.float()], dim=1)

        tokens_fn.method = "token-weighted"  # type: ignore[attr-defined]
        return tokens_fn, "token-weighted"
    if isinstance(loss_fn, nn.modules.loss._Loss) and hasattr(loss_fn, "reduction"):
        unreduced = copy.copy(loss_fn)
        unreduced.reduction = "none"
        base, method = unreduced, "reduction=none"
    elif not isinstance(loss_fn, nn.Module) and _accepts_reduction(loss_fn):
        base, method = functools.partial(loss_fn, reduction="none"), "reduction=none"
    else:
        base, method = None, "per-sample calls"

    def per_sample_calls(out: Any, target: Any) -> torch.Tensor:
        n = batch_len(out)
        if n is None:
            raise TypeError("loss_fn: cannot split the model outputs into samples for per-sample losses")
        vals = [torch.as_tensor(loss_fn(slice_batch(out, slice(i, i + 1)),
                                        slice_batch(target, slice(i, i + 1)))).reshape(()) for i in range(n)]
        return torch.stack(vals).float()

    def fn(out: Any, target: Any) -> torch.Tensor:
        if base is None:
            return per_sample_calls(out, target)
        v = torch.as_tensor(base(out, target))
        n = batch_len(out)
        if v.ndim == 0 or (n is not None and v.shape[0] != n):
            return per_sample_calls(out, target)
        if v.ndim > 1:
            v = v.reshape(v.shape[0], -1).mean(dim=1)
        return v.float()

    fn.method = method  # type: ignore[attr-defined]
    return fn, method


def as_measurement(kind: str, arr: np.ndarray) -> Measurement:
    """A :class:`~losslens.record.Measurement` from the passes' output: per-sample losses, shape ``(n,)``, or
    losses and weights, shape ``(n, 2)`` (a ``"token-weighted"`` loss)."""
    if arr.ndim == 2 and arr.shape[1] == 2:
        return Measurement.from_values(kind, arr[:, 0], weights=arr[:, 1])
    return Measurement.from_values(kind, arr)


def stack_cpu(items: Sequence[Any]) -> np.ndarray:
    """Scalars (tensors on any device, or numbers) -> float64 array, one device copy per device."""
    out = np.zeros(len(items), dtype=np.float64)
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(items):
        if isinstance(x, torch.Tensor):
            groups.setdefault(x.device, []).append(i)
        elif x is not None:
            out[i] = float(x)
    for idx in groups.values():
        ts = [items[i] for i in idx]
        try:
            stacked = torch.stack(ts)
        except RuntimeError:  # mixed shapes () and (1,), or dtypes stack cannot promote
            stacked = torch.stack([t.reshape(()).float() for t in ts])
        out[idx] = stacked.reshape(-1).float().cpu().double().numpy()
    return out


def check_torch_args(*, model: Any, loss_fn: Any, run: Any, penalty: Any, optimizer: Any, unpack: Any, forward: Any,
                     train_batch_size: Any, common: int | str) -> int | str:
    """The argument checks of :class:`~losslens.torch.LossLens` beyond :func:`losslens.recording.check_common_args`
    (whose normalized ``probe_size`` is ``common``, returned).

    Raises
    ------
    TypeError, ValueError
        Naming the argument and the bad value.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss, got {type(loss_fn).__name__}")
    if not isinstance(run, str) or not run:
        raise ValueError(f"run: expected a non-empty string, got {run!r}")
    probe_size = common
    if probe_size == 1 and any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
        raise ValueError("probe_size: 1 is too small for a model with batch norm (a train-mode batch of one "
                         "sample has no batch statistics); use at least 2")
    if penalty is not None and (isinstance(penalty, bool) or not (callable(penalty)
                                                                  or isinstance(penalty, (int, float)))):
        raise TypeError(f"penalty: expected a callable(model) -> tensor or a number, got {type(penalty).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    for name, fn, what in (("unpack", unpack, "callable(batch) -> (inputs, target)"),
                           ("forward", forward, "callable(model, inputs) -> outputs")):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: expected a {what}, got {type(fn).__name__}")
    if train_batch_size is not None and (isinstance(train_batch_size, bool)
                                         or not isinstance(train_batch_size, (int, np.integer))
                                         or train_batch_size < 1):
        raise ValueError(f"train_batch_size: expected an int >= 1 or None, got {train_batch_size!r}")
    return probe_size


def train_mode_layers(model: nn.Module) -> tuple[list[str], bool, list[str]]:
    """``(dropout modules, whether any dropout has p > 0, batch-norm modules)``: the layers that make train mode
    differ from eval mode (dropout applied functionally inside ``forward`` is not seen). Each module is named as
    ``model.named_modules()`` names it, with its type: ``"2 (Dropout)"`` (a bare index inside a ``Sequential``
    says nothing on its own)."""
    def label(name: str, m: nn.Module) -> str:
        return f"{name or '(the model)'} ({type(m).__name__})"

    dropout = [label(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd)
               or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)]
    has_dropout = any((isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
                      or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0) for m in model.modules())
    batchnorm = [label(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return dropout, has_dropout, batchnorm


def weight_decay_of(optimizer: Any) -> Any:
    """The weight decay of an optimizer's parameter groups: one float, a list when groups differ, or None."""
    if optimizer is None:
        return None
    wds = [float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups]
    return wds[0] if len(set(wds)) == 1 else wds
