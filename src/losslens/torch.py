"""PyTorch adapter: record a plain training loop with :class:`Lens`.

A user adds at most four lines to an ordinary PyTorch loop::

    from losslens.torch import Lens

    lens = Lens(model, loss_fn, probe=train_ds_eval, train=train_ds_aug, val=val_ds,
                run="digits-mlp", store="losslens.db")
    for epoch in range(n_epochs):
        for x, y in loader:
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step()
            lens.step(loss, batch_size=len(y))      # keeps loss.detach() on the device: no sync
        lens.end_epoch()                             # probe passes, validation, one store commit
    report = lens.diagnose()                         # a losslens.report.Report

What is measured (DESIGN.md, "The measurement protocol"), all losses per sample,
data part only:

``R``
    reported training loss: batch-size weighted mean over the epoch of
    (step loss − step penalty), read from the device once per epoch.
``Ω``
    batch-size weighted mean penalty included in the optimised loss.
``T`` (:data:`~losslens.record.TRAIN_MODE`)
    end-of-epoch weights, train mode (dropout on, batch norm on batch
    statistics), augmented probe inputs, in batches of the training batch size.
``A`` (:data:`~losslens.record.EVAL_AUGMENTED`)
    eval mode on the very same augmented batches as ``T`` (paired).
``C`` (:data:`~losslens.record.EVAL_CLEAN`)
    eval mode on the clean probe inputs: the eval-mode training loss.
``V`` (:data:`~losslens.record.VALIDATION`)
    eval mode on the validation set.

Recording never changes training: the passes run under ``torch.no_grad()``
inside ``torch.random.fork_rng`` (CPU and the CUDA devices the model uses),
with numpy's and Python's global RNG states saved and restored, every module's
``training`` flag restored, and every buffer (batch-norm running statistics,
``num_batches_tracked``) restored after the train-mode pass. The user's
``DataLoader`` is never iterated; the adapter indexes its ``dataset``.

This is the only losslens module that imports torch.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import math
import os
import random
import time
import warnings
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .protocol import (
    PILOT_SIZE,
    baseline_loss,
    budget_probe_size,
    inherited_probe_size,
    probe_permutation,
    probe_size_cap,
    timed_probe_size,
)
from .record import (
    EVAL_AUGMENTED,
    EVAL_CLEAN,
    TRAIN_MODE,
    VALIDATION,
    Epoch,
    Measurement,
    Run,
    Steps,
    _jsonable,
    fingerprint_indices,
    record_measurement_error,
)
from .store import Store

__all__ = ["Lens", "per_sample_loss_fn", "default_unpack", "default_forward"]


#: Default eval-mode batch size on CPU (samples), further bounded so a batch of inputs
#: stays under :data:`CPU_EVAL_BYTES`. On CUDA the eval batch starts at
#: :data:`CUDA_EVAL_BATCH` and is halved on out-of-memory errors.
CPU_EVAL_BATCH = 2048
CPU_EVAL_BYTES = 64 * 2 ** 20
CUDA_EVAL_BATCH = 8192

#: Keys tried, in order, for the target of a dict item by :func:`default_unpack`.
TARGET_KEYS = ("labels", "label", "target", "y")

#: Relative tolerance of the check that the mean of the per-sample losses equals the
#: loss function's own reduction on the first probe batch (float32 summation error of
#: a batch mean is ~1e-6 relative; 1e-4 leaves room for reductions done in another order).
PER_SAMPLE_RTOL = 1e-4


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


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _slice(x: Any, sl: slice) -> Any:
    """Rows ``sl`` of every tensor in a (nested) batch."""
    if isinstance(x, torch.Tensor):
        return x[sl]
    if isinstance(x, dict):
        return {k: _slice(v, sl) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_slice(v, sl) for v in x)
    return x


def _batch_len(x: Any) -> int | None:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else None
    if isinstance(x, dict):
        for v in x.values():
            n = _batch_len(v)
            if n is not None:
                return n
    if isinstance(x, (tuple, list)):
        for v in x:
            n = _batch_len(v)
            if n is not None:
                return n
    return None


def _input_bytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.element_size() * x.numel()
    if isinstance(x, dict):
        return sum(_input_bytes(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(_input_bytes(v) for v in x)
    return 0


# --------------------------------------------------------------------------------------------
# data sources
# --------------------------------------------------------------------------------------------
class _Source:
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
_LOSS_KINDS = {
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


def _loss_name(loss_fn: Any) -> str:
    if isinstance(loss_fn, functools.partial):
        return _loss_name(loss_fn.func)
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

    Returns
    -------
    fn : callable
        ``fn(outputs, target)`` -> float tensor of shape ``(batch,)``.
    method : str
        ``"reduction=none"`` or ``"per-sample calls"``.
    """
    if isinstance(loss_fn, nn.modules.loss._Loss) and hasattr(loss_fn, "reduction"):
        unreduced = copy.copy(loss_fn)
        unreduced.reduction = "none"
        base, method = unreduced, "reduction=none"
    elif not isinstance(loss_fn, nn.Module) and _accepts_reduction(loss_fn):
        base, method = functools.partial(loss_fn, reduction="none"), "reduction=none"
    else:
        base, method = None, "per-sample calls"

    def per_sample_calls(out: Any, target: Any) -> torch.Tensor:
        n = _batch_len(out)
        if n is None:
            raise TypeError("loss_fn: cannot split the model outputs into samples for per-sample losses")
        vals = [torch.as_tensor(loss_fn(_slice(out, slice(i, i + 1)), _slice(target, slice(i, i + 1)))).reshape(())
                for i in range(n)]
        return torch.stack(vals).float()

    def fn(out: Any, target: Any) -> torch.Tensor:
        if base is None:
            return per_sample_calls(out, target)
        v = torch.as_tensor(base(out, target))
        n = _batch_len(out)
        if v.ndim == 0 or (n is not None and v.shape[0] != n):
            return per_sample_calls(out, target)
        if v.ndim > 1:
            v = v.reshape(v.shape[0], -1).mean(dim=1)
        return v.float()

    fn.method = method  # type: ignore[attr-defined]
    return fn, method


def _stack_cpu(items: Sequence[Any]) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# the adapter
# --------------------------------------------------------------------------------------------
class Lens:
    """Record a PyTorch training loop: step losses, end-of-epoch probes, validation.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained.
    loss_fn : callable
        ``loss_fn(outputs, target) -> scalar tensor``, the data loss of the loop
        (any ``torch.nn`` loss or functional; per-sample losses are derived from
        it, see :func:`per_sample_loss_fn`).
    probe : dataset or None
        The training set with eval (clean) transforms: a tuple ``(X, y)`` of
        tensors, a ``TensorDataset``, a map-style ``Dataset`` or a ``DataLoader``
        (its ``dataset`` and ``collate_fn`` are used; it is never iterated).
        The probe subset is drawn from it. None disables the probe passes.
    val : dataset, optional
        The validation set (same types). Without it no ``V`` is measured.
    train : dataset, optional
        The same training samples, in the same order, with the training
        (augmentation) transforms. Enables the ``A`` pass and feeds ``T``.
    run : str
        Name of the run.
    store : str, os.PathLike, Store or None
        SQLite store file (created if missing) or an open :class:`~losslens.store.Store`;
        None keeps the run in memory only (:attr:`run`).
    experiment : str, optional
        Name of the group of runs this one belongs to.
    probe_size : int, "all", "auto" or "timed"
        ``"auto"`` (default): min(len(val) (10 000 without val), 10 000, the cost
        budget counted from sample counts), fixed at the first :meth:`end_epoch`;
        ``"all"``: the whole training set; an int: that many samples; ``0``: no
        probe passes (only ``R``, ``Ω`` and ``V``); ``"timed"``: the budget in
        wall time, from a timed pilot pass (depends on machine load: not
        reproducible across machines).
    probe_budget : float
        With ``probe_size="auto"``, the probe passes (T, A, C) may cost at most
        this fraction of an epoch's training compute (default 0.03), counted in
        forward passes (:func:`losslens.protocol.budget_probe_size`); with
        ``"timed"``, of the first epoch's training wall time. The probe gets at
        least 200 samples (or the whole training set if smaller) whatever the budget.
    probe_seed : int
        Seed of the probe subset (``numpy.random.default_rng(probe_seed)
        .permutation(N)[:n]``, sorted) and of the RNG inside the probe passes.
    penalty : callable or float, optional
        Regularization included in the loss passed to :meth:`step`:
        ``penalty(model) -> scalar tensor`` is evaluated under ``no_grad`` at every
        :meth:`step` call, i.e. with the weights *after* that step's update; a
        float is a constant per step. ``step(..., penalty=)`` overrides it.
    optimizer : torch.optim.Optimizer, optional
        Recorded as metadata (class name, weight decay of the param groups).
    seed : int, optional
        The user's training seed, recorded as metadata.
    unpack : callable, optional
        ``unpack(batch) -> (inputs, target)`` for a collated batch (default
        :func:`default_unpack`).
    forward : callable, optional
        ``forward(model, inputs) -> outputs`` (default :func:`default_forward`),
        e.g. ``forward=lambda m, batch: m(**batch).logits`` for a model returning
        an output object, with ``unpack=lambda b: ({k: v for k, v in b.items()
        if k != "labels"}, b["labels"])``.
    eval_batch_size : int, optional
        Batch size of the eval-mode passes; None: 2048 on CPU (fewer when a
        batch of inputs would exceed 64 MiB), 8192 on CUDA, halved on CUDA
        out-of-memory errors.
    meta : dict, optional
        Extra metadata stored with the run (it overrides the keys losslens sets).
    fingerprint_split : bool
        Store order-independent content fingerprints and per-sample hashes of the
        training (``probe``) and validation sets in ``run.meta``
        (:func:`losslens.experiment.fingerprint.auto_fingerprints`: in-memory
        tensors/arrays, ``TensorDataset``, ``Subset``, folder datasets' sample ids;
        other datasets are skipped, not read), so runs of one experiment can be
        checked for a changed split. Default True.
    check_duplicates : bool
        Once, at construction, look for validation inputs that occur exactly in the
        training (``probe``) inputs (:func:`losslens.audit.exact_duplicates`: one pass
        of hashing, no model compute) and store the counts and up to 100 index pairs
        in ``run.meta["split_exact_duplicates"]``; the diagnosis cites them. Runs when
        both are in-memory tensor data (tuples of tensors or ``TensorDataset``) with a
        single input tensor; other data are not read. Default True.
    distributed : bool or None
        None (default): shard the passes and gather the results when a
        ``torch.distributed`` process group is initialised with world size > 1;
        False: never (each rank records alone); True: require an initialised
        process group (``RuntimeError`` otherwise).

    Raises
    ------
    TypeError, ValueError
        For arguments of the wrong type or value; the message names the argument.

    Attributes
    ----------
    run : losslens.record.Run
        The run recorded so far (the same content as the store).
    probe_indices : numpy.ndarray of int64 or None
        Sorted training-set indices of the probe subset, known after the first
        :meth:`end_epoch`.

    Notes
    -----
    **Probe size and cost.** With ``probe_size="auto"`` the size is fixed at the
    first :meth:`end_epoch` from counts only: the training samples ``S`` of the
    first epoch (the sum of the ``batch_size`` given to :meth:`step`, or steps
    times the training batch size) cost ``3 S`` forward passes, the probe passes
    ``p n`` (``p`` = 1 for C, plus 1 each for T and A where they run), so
    ``n_budget = probe_budget * 3 S / p`` and ``n = min(cap, max(min(200, cap),
    n_budget))`` with ``cap = min(len(val) or 10 000, 10 000, N)``. The same
    seed gives the same probe on any machine and under any load. The floor of
    200 samples bounds the standard error of a probe mean at ~7 % of the
    per-sample standard deviation. ``run.meta`` records ``probe_size``,
    ``probe_budget`` and ``probe_size_reason`` (and ``probe_cost_per_sample_s``
    with ``probe_size="timed"``).

    **Passes.** C and V run in eval mode in large batches. T runs in train mode
    in batches of the training batch size (the most common ``batch_size`` given
    to :meth:`step`; without one, ``N / steps per epoch``), because batch-norm
    batch statistics depend on it, on the sorted probe indices; each augmented
    batch is read once and fed to T and A, so the two are paired. The module
    flags of training (read at the first :meth:`step` of each epoch, so frozen
    submodules stay frozen) are used for T. T is skipped when the model has no
    dropout (``p > 0``) or batch-norm module; dropout applied functionally inside
    ``forward`` (``F.dropout``) is not detected. A is skipped without ``train=``.
    Skipped passes are listed in ``run.meta["skipped"]``.

    **Invariants.** The passes run inside a context that forks torch's CPU RNG
    and the CUDA RNGs of the model's devices (``torch.random.fork_rng``), saves
    numpy's and Python's global RNG states, disables gradients, and on exit
    restores every module's ``training`` flag and every buffer; the RNGs are
    seeded with ``probe_seed`` and the epoch inside, and again before each
    train-mode batch with its batch number, so the passes are reproducible and
    a batch's draws do not depend on the batches before it. Parameters after training are bit-identical with the Lens on
    or off (tests/test_torch_lens.py). The user's DataLoader is never iterated.

    **Extra metadata** (beyond :data:`losslens.record.META_KEYS`):
    ``torch_version``, ``per_sample_method`` (``"reduction=none"`` or
    ``"per-sample calls"``), ``per_sample_loss_check`` (mean of the per-sample
    losses vs the loss function's own value on the first eval batch),
    ``augmented_probe``, ``probe_budget``, ``probe_cost_per_sample_s``,
    ``probe_size_reason``.

    **torch.distributed.** When a default process group is initialised with more
    than one rank (plain DDP, Lightning ``strategy="ddp"``, Hugging Face
    ``Trainer`` under ``torchrun``), every rank constructs its own Lens with the
    same arguments and calls :meth:`step` / :meth:`end_epoch` as usual:

    * the probe and validation passes are sharded without padding duplicates
      (eval passes: rank ``r`` takes positions ``r::world`` of the index list;
      train-mode passes: rank ``r`` takes batches ``r::world`` of the very same
      training-size batches one process would use, so batch-norm statistics are
      those of a single process; each batch's random draws are seeded by its
      batch number), all on rank 0's buffers (one ``broadcast_object_list``),
      and one ``all_gather_object`` per :meth:`end_epoch` puts every per-sample
      loss back in the single-process order on every rank: the measurements
      equal a one-process run's (tests/test_distributed.py);
    * the step losses are exchanged once per epoch (one ``all_gather_object``):
      a recorded step is the batch-size weighted mean of the ranks' losses at
      that step, its batch size the global batch;
    * the automatic probe size is decided by rank 0 and broadcast (once);
    * only rank 0 opens and writes the store (``store`` is ignored on other
      ranks, which never touch the file); every rank holds the full :attr:`run`.

    A model wrapped in ``DistributedDataParallel`` is unwrapped (its ``module``
    is used for the probe passes, so no collective runs inside them). Pass
    ``distributed=False`` to record each rank on its own. See docs/distributed.md.

    Not supported yet: iterable-style datasets.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        probe: Any,
        val: Any = None,
        train: Any = None,
        *,
        run: str = "run",
        store: str | os.PathLike[str] | Store | None = "losslens.db",
        experiment: str | None = None,
        probe_size: int | str = "auto",
        probe_budget: float = 0.03,
        probe_seed: int = 0,
        penalty: Callable[[nn.Module], torch.Tensor] | float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        seed: int | None = None,
        unpack: Callable[[Any], tuple[Any, Any]] | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        eval_batch_size: int | None = None,
        meta: dict[str, Any] | None = None,
        fingerprint_split: bool = True,
        check_duplicates: bool = True,
        distributed: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss, got {type(loss_fn).__name__}")
        if not isinstance(run, str) or not run:
            raise ValueError(f"run: expected a non-empty string, got {run!r}")
        if isinstance(probe_size, bool) or not (
            probe_size in ("auto", "all", "timed")
            or (isinstance(probe_size, (int, np.integer)) and probe_size >= 0)
        ):
            raise ValueError(f"probe_size: expected 'auto', 'all', 'timed' or an int >= 0, got {probe_size!r}")
        if probe_size == 1 and isinstance(model, torch.nn.Module) and any(
                isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in model.modules()):
            raise ValueError("probe_size: 1 is too small for a model with batch norm (a train-mode batch of one "
                             "sample has no batch statistics); use at least 2")
        if isinstance(probe_budget, bool) or not isinstance(probe_budget, (int, float)) or not 0 < probe_budget <= 1:
            raise ValueError(f"probe_budget: expected a fraction in (0, 1], got {probe_budget!r}")
        if isinstance(probe_seed, bool) or not isinstance(probe_seed, (int, np.integer)) or probe_seed < 0:
            raise ValueError(f"probe_seed: expected an int >= 0, got {probe_seed!r}")
        if penalty is not None and not callable(penalty) and not isinstance(penalty, (int, float)):
            raise TypeError(f"penalty: expected a callable(model) -> tensor or a number, got {type(penalty).__name__}")
        if isinstance(penalty, bool):
            raise TypeError("penalty: expected a callable(model) -> tensor or a number, got a bool")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if unpack is not None and not callable(unpack):
            raise TypeError(f"unpack: expected a callable(batch) -> (inputs, target), got {type(unpack).__name__}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward: expected a callable(model, inputs) -> outputs, got {type(forward).__name__}")
        if eval_batch_size is not None and (
            isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, (int, np.integer))
            or eval_batch_size < 1
        ):
            raise ValueError(f"eval_batch_size: expected an int >= 1 or None, got {eval_batch_size!r}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta: expected a dict, got {type(meta).__name__}")

        if distributed not in (None, True, False):
            raise ValueError(f"distributed: expected None, True or False, got {distributed!r}")
        dist_ok = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and not dist_ok:
            raise RuntimeError("distributed=True: no torch.distributed process group is initialised "
                               "(call torch.distributed.init_process_group first)")
        self._world = torch.distributed.get_world_size() if dist_ok and distributed is not False else 1
        self._rank = torch.distributed.get_rank() if self._world > 1 else 0
        self._dist = self._world > 1
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # no collectives inside the probe passes

        self.model = model
        self.loss_fn = loss_fn
        self._per_sample, self._per_sample_method = per_sample_loss_fn(loss_fn)
        self._unpack = unpack or default_unpack
        self._forward = forward or default_forward
        self._probe = _Source(probe, "probe") if probe is not None else None
        self._train = _Source(train, "train") if train is not None else None
        self._val = _Source(val, "val") if val is not None else None
        if self._train is not None:
            if self._probe is None:
                raise ValueError("train: needs probe (the same samples with clean transforms)")
            if len(self._train) != len(self._probe):
                raise ValueError(
                    f"train: must index the same samples as probe, but has {len(self._train)} samples and probe "
                    f"{len(self._probe)}"
                )
        self._probe_size_arg = int(probe_size) if not isinstance(probe_size, str) else probe_size
        self._epoch_samples = math.nan   # training samples of the current epoch (probe-size rule)
        self._pending_writes: list[tuple[Epoch, Steps]] = []   # finished epochs whose store write failed
        self._probe_budget = float(probe_budget)
        self._probe_seed = int(probe_seed)
        self._penalty = penalty
        self._eval_bs_arg = int(eval_batch_size) if eval_batch_size is not None else None
        self._eval_bs: int | None = self._eval_bs_arg

        # per-epoch step state (device tensors, read once per epoch)
        self._losses: list[Any] = []
        self._batch_sizes: list[int | None] = []
        self._penalties: list[Any] = []
        self._t_first_step: float | None = None
        self._train_flags: list[bool] | None = None
        self._all_batch_sizes: Counter[int] = Counter()
        self._fixed_train_bs: int | None = None
        self._epoch = 0
        self._warned_fallback = False
        self.probe_indices: np.ndarray | None = None
        self._n_probe: int | None = None

        dropout = [n for n, m in model.named_modules()
                   if isinstance(m, nn.modules.dropout._DropoutNd)
                   or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)]
        self._has_dropout = any(
            (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
            or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
            for m in model.modules()
        )
        batchnorm = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        loss_name = _loss_name(loss_fn)
        loss_kind = _LOSS_KINDS.get(loss_name.lower())
        self._loss_kind = loss_kind
        m: dict[str, Any] = {
            "framework": "torch",
            "torch_version": torch.__version__.split("+")[0],
            "loss": loss_name,
            "loss_kind": loss_kind,
            "per_sample_method": self._per_sample_method,
            "baseline_loss": None,
            "batch_size": None,
            "train_size": len(self._probe) if self._probe is not None else None,
            "val_size": len(self._val) if self._val is not None else None,
            "probe_size": None,
            "probe_seed": self._probe_seed,
            "probe_budget": self._probe_budget,
            "seed": seed,
            "dropout_layers": dropout,
            "batchnorm_layers": batchnorm,
            "optimizer": type(optimizer).__name__ if optimizer is not None else None,
            "weight_decay": self._weight_decay(optimizer),
            "penalty_source": (None if penalty is None else "callable" if callable(penalty) else "constant"),
            "reported_loss_kind": "epoch_mean",
            "augmented_probe": self._train is not None,
            "skipped": {},
        }
        if self._dist:
            m["world_size"] = self._world
        skipped: dict[str, str] = m["skipped"]
        if self._probe is None or self._probe_size_arg == 0:
            reason = ("probe passes disabled (probe=None)" if self._probe is None
                      else "probe passes disabled (probe_size=0)")
            for k in (TRAIN_MODE, EVAL_AUGMENTED, EVAL_CLEAN):
                skipped[k] = reason
        else:
            if self._train is None:
                skipped[EVAL_AUGMENTED] = "no train= dataset: augmented inputs equal clean inputs (A = C)"
            if not (self._has_dropout or batchnorm):
                skipped[TRAIN_MODE] = "no dropout or batch norm: train mode equals eval mode (T = A)"
        if self._val is None:
            skipped[VALIDATION] = "no val= dataset"
        self._probes_on = self._probe is not None and self._probe_size_arg != 0
        self._run_T = self._probes_on and TRAIN_MODE not in skipped
        self._run_A = self._probes_on and self._train is not None

        # --- split fingerprints (losslens.experiment, issue 7) ---
        if fingerprint_split:
            from .experiment.fingerprint import auto_fingerprints

            m.update(auto_fingerprints(train=probe, val=val))
        # --- end split fingerprints ---
        if check_duplicates:
            dup = self._exact_duplicates()
            if dup is not None:
                m["split_exact_duplicates"] = dup
        if meta:
            try:
                json.dumps(_jsonable(meta))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"meta: values must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") \
                    from exc
            m.update(meta)
        self.run = Run(name=run, meta=m, experiment=experiment)
        self._check_data()

        if store is None or self._rank != 0:  # distributed: rank 0 alone writes
            self._store: Store | None = None
            self._own_store = False
        elif isinstance(store, Store):
            self._store, self._own_store = store, False
        elif isinstance(store, (str, os.PathLike)):
            self._store, self._own_store = Store(store), True
        else:
            raise TypeError(f"store: expected a path, a losslens.store.Store or None, got {type(store).__name__}")
        self._stored_meta: str | None = None
        if self._store is not None:
            self.run.id = self._store.create_run(run, self.run.meta, experiment)
            self._stored_meta = repr(self.run.meta)

    # ---------------------------------------------------------------------------------------
    def _exact_duplicates(self) -> dict[str, Any] | None:
        """Exact validation/training input duplicates, for tensor data with one input tensor."""
        p, v = self._probe, self._val
        if p is None or v is None or p.tensors is None or v.tensors is None:
            return None
        if len(p.tensors) != 2 or len(v.tensors) != 2:
            return None
        from .audit import exact_duplicates

        try:
            res = exact_duplicates(p.tensors[0].detach().cpu().numpy(), v.tensors[0].detach().cpu().numpy())
        except Exception as exc:  # recording never fails because of the check
            return {"error": f"{type(exc).__name__}: {exc}"}
        return res.to_dict(max_pairs=100)

    @staticmethod
    def _weight_decay(optimizer: torch.optim.Optimizer | None) -> Any:
        if optimizer is None:
            return None
        wds = [float(g.get("weight_decay", 0.0)) for g in optimizer.param_groups]
        return wds[0] if len(set(wds)) == 1 else wds

    @property
    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    def _cuda_devices(self) -> list[int]:
        devs = {p.device.index for p in self.model.parameters() if p.device.type == "cuda"}
        devs |= {b.device.index for b in self.model.buffers() if b.device.type == "cuda"}
        if devs and torch.cuda.is_available():
            return sorted(d if d is not None else torch.cuda.current_device() for d in devs)
        return []

    def _protected(self) -> "_Protect":
        return _Protect(self.model, self._cuda_devices(), self._probe_seed * 100_003 + self._epoch)

    def _check_data(self) -> None:
        """Fetch and unpack two samples of each dataset (RNG protected) so bad data fails now, not after an epoch."""
        with self._protected():
            for src in (self._probe, self._train, self._val):
                if src is None:
                    continue
                idx = np.arange(min(2, len(src)))
                try:
                    batch = src.batch(idx)
                except Exception as exc:
                    raise type(exc)(f"{src.name}: reading samples {idx.tolist()} failed: {exc}") from exc
                try:
                    self._unpack(batch)
                except TypeError as exc:
                    raise TypeError(f"{src.name}: {exc}") from exc

    # ---------------------------------------------------------------------------------------
    def step(self, loss: Any, batch_size: int | None = None, penalty: Any = None) -> None:
        """Record one optimizer step. Never synchronises with the device.

        Parameters
        ----------
        loss : torch.Tensor (one element) or float
            The loss the user optimised in this step (penalty included, if any),
            per sample (a batch mean). Only ``loss.detach()`` is kept.
        batch_size : int, optional
            Samples in the batch; the weight of this step in the epoch mean ``R``.
            The most common value is the training batch size used by the
            train-mode probe pass.
        penalty : torch.Tensor or float, optional
            The penalty included in ``loss`` at this step (overrides the
            ``penalty`` given to :class:`Lens`).

        Raises
        ------
        ValueError
            If ``loss`` or ``penalty`` has more than one element, or ``batch_size`` < 1.
        """
        if self._t_first_step is None:
            self._t_first_step = time.perf_counter()
            if self.model.training:
                self._train_flags = [mod.training for mod in self.model.modules()]
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss: expected a scalar (one-element) tensor, got shape {tuple(loss.shape)}")
            loss = loss.detach()
        elif not isinstance(loss, (int, float, np.number)) or isinstance(loss, bool):
            raise TypeError(f"loss: expected a tensor or a number, got {type(loss).__name__}")
        if batch_size is not None and (type(batch_size) is not int or batch_size < 1):
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
            batch_size = int(batch_size)
        if penalty is None:
            if self._penalty is not None:
                if callable(self._penalty):
                    with torch.no_grad():
                        penalty = self._penalty(self.model)
                    if isinstance(penalty, torch.Tensor):
                        if penalty.numel() != 1:
                            raise ValueError(f"penalty: the callable returned shape {tuple(penalty.shape)}, "
                                             "expected a scalar")
                        penalty = penalty.detach()
                else:
                    penalty = float(self._penalty)
        elif isinstance(penalty, torch.Tensor):
            if penalty.numel() != 1:
                raise ValueError(f"penalty: expected a scalar tensor, got shape {tuple(penalty.shape)}")
            penalty = penalty.detach()
        self._losses.append(loss)
        self._batch_sizes.append(batch_size)
        self._penalties.append(penalty)

    # ---------------------------------------------------------------------------------------
    def end_epoch(self, metrics: dict[str, Any] | None = None, *, position: float | None = None,
                  step_positions: Any = None, step_spans: Any = None) -> Epoch:
        """Close the epoch: read the step losses, run the probe and validation passes, commit.

        Parameters
        ----------
        metrics : dict, optional
            Other per-epoch numbers (name -> float or one-element tensor), stored
            in :attr:`Epoch.metrics`.
        position : float, optional
            Time of the measurements in fractional epochs (default ``index + 1``);
            set by adapters whose measurement points are not epoch ends
            (:mod:`losslens.transformers` evaluates every ``eval_steps``).
        step_positions, step_spans : array-like, shape (n_steps,), optional
            Positions (fractional epochs) and spans (optimizer steps) of the values
            given to :meth:`step`, when they are logged windows rather than single
            steps (default: evenly spaced single steps within the epoch).

        Returns
        -------
        Epoch
            The recorded epoch (also appended to :attr:`run` and committed to the
            store in one transaction). Non-finite losses are recorded as they are.
            ``Epoch.seconds`` is the wall time from the epoch's first :meth:`step`
            call to this call; ``Epoch.probe_seconds`` the time of the validation
            and probe passes.

        Raises
        ------
        TypeError
            If a value of ``metrics`` is not a number (nothing is recorded then).
        """
        e = self._epoch
        mets: dict[str, float] = {}
        for k, v in (metrics or {}).items():
            try:
                if isinstance(v, torch.Tensor) and v.numel() != 1:
                    raise TypeError(f"shape {tuple(v.shape)}")
                mets[str(k)] = float(v.item() if isinstance(v, torch.Tensor) else v)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metrics: value of {k!r} is not a number ({type(v).__name__})") from exc
        n_steps = len(self._losses)
        losses = _stack_cpu(self._losses)                 # the one device->host copy of the epoch
        t_end = time.perf_counter()
        seconds = (t_end - self._t_first_step) if self._t_first_step is not None else math.nan
        pens = _stack_cpu(self._penalties)
        known = [b for b in self._batch_sizes if b is not None]
        self._all_batch_sizes.update(known)
        if len(known) == n_steps and n_steps:
            bs = np.asarray(self._batch_sizes, dtype=np.float64)
        else:
            bs = np.ones(n_steps, dtype=np.float64)
            known = []
        if self._dist:
            losses, pens, bs, seconds, n_steps = self._reduce_steps(losses, pens, bs, seconds,
                                                                    len(known) == n_steps)
            known = list(bs) if self._steps_sized else []
        data = losses - pens
        if n_steps:
            w = bs / bs.sum()
            with np.errstate(invalid="ignore", over="ignore"):
                r = float(np.sum(w * data))
                omega = float(np.sum(w * pens))
        else:
            r, omega = math.nan, 0.0
            warnings.warn(f"Lens.end_epoch: no step() calls in epoch {e}; R is unknown", stacklevel=2)
        steps = Steps.build(np.full(n_steps, e), data, batch_size=bs, penalty=pens,
                            position=step_positions, span=step_spans)

        # training samples of this epoch, for the probe-size rule (counts, never seconds)
        self._epoch_samples = (float(bs.sum()) if known and len(known) == n_steps
                               else float(n_steps * self._train_batch_size(n_steps)))
        t_probe = time.perf_counter()
        try:
            measurements = self._measure(seconds, n_steps)
        except Exception as exc:  # losslens never stops training because its own measurement failed
            if self._dist:   # the other ranks wait in a collective: failing alone would hang them all
                raise
            measurements = {}
            record_measurement_error(self.run, e, exc)
        probe_seconds = time.perf_counter() - t_probe

        epoch = Epoch(index=e, train_loss=r, penalty=omega, n_steps=n_steps,
                      n_samples=int(bs.sum()) if known and len(known) == n_steps else 0,
                      position=float(e + 1) if position is None else float(position),
                      measurements=measurements, metrics=mets,
                      seconds=seconds, probe_seconds=probe_seconds)
        self.run.epochs.append(epoch)
        self.run.steps = Steps.concat([self.run.steps, steps])
        # the epoch is closed in memory before the store is touched: a failed write can never merge its steps
        # into the next epoch or renumber the epochs
        self._losses, self._batch_sizes, self._penalties = [], [], []
        self._t_first_step = None
        self._epoch += 1
        if self._store is not None:
            self._pending_writes.append((epoch, steps))
            self._flush(final=False)
        return epoch

    def _flush(self, final: bool) -> None:
        """Write the epochs not yet in the store (:func:`losslens.store.write_pending`): a failed write is retried
        at the next :meth:`end_epoch` with a warning; at :meth:`finish` it raises ``StoreError``."""
        from .store import write_pending

        assert self._store is not None
        write_pending(self._store, self.run.id, self._pending_writes, final=final, holder="lens.run",
                      retry="the next end_epoch", after_write=self._sync_meta)

    def _reduce_steps(self, losses: np.ndarray, pens: np.ndarray, bs: np.ndarray, seconds: float,
                      sized: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
        """Distributed: the epoch's step losses of all ranks, in one ``all_gather_object``.

        Step ``i`` of the record is the batch-size weighted mean over ranks of their
        step-``i`` losses (DDP averages the gradients of equal-sized local batches
        the same way); its batch size is the sum (the global batch). Ranks with more
        steps than others (uneven data without ``drop_last``) contribute their extra
        steps alone. ``seconds`` is rank 0's wall time.
        """
        parts: list[Any] = [None] * self._world
        torch.distributed.all_gather_object(parts, (losses, pens, bs, seconds, sized,
                                                    self._train_batch_size(len(losses))))
        n = max(len(p[0]) for p in parts)
        num = np.zeros(n)
        pen = np.zeros(n)
        den = np.zeros(n)
        for lo, pe, b, _, _, _ in parts:
            k = len(lo)
            with np.errstate(invalid="ignore", over="ignore"):
                num[:k] += b * lo
                pen[:k] += b * pe
            den[:k] += b
        self._steps_sized = all(p[4] for p in parts)
        self._b_train_dist = int(parts[0][5])  # rank 0's per-device batch size: same T batches everywhere
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den, pen / den, den, float(parts[0][3]), n

    def _sync_meta(self) -> None:
        if self._store is None:
            return
        rep = repr(self.run.meta)
        if rep != self._stored_meta:
            self._store.update_meta(self.run.id, self.run.meta)
            self._stored_meta = rep

    # ---------------------------------------------------------------------------------------
    def _train_batch_size(self, n_steps: int) -> int:
        if self._fixed_train_bs is not None:  # set by adapters whose step rows are windows, not batches
            return self._fixed_train_bs
        if self._dist and getattr(self, "_b_train_dist", None):
            return self._b_train_dist
        if self._all_batch_sizes:
            return int(self._all_batch_sizes.most_common(1)[0][0])
        # batch sizes not given: the training-set size over the steps of an epoch
        if self._probe is not None and n_steps:
            return max(2, int(round(len(self._probe) / n_steps)))
        return 32

    def _measure(self, epoch_seconds: float, n_steps: int) -> dict[str, Measurement]:
        meta = self.run.meta
        b_train = self._train_batch_size(n_steps)
        if meta.get("batch_size") != b_train:
            meta["batch_size"] = b_train
        if self._dist:
            return self._measure_dist(epoch_seconds, b_train)
        out: dict[str, Measurement] = {}
        with self._protected() as prot:
            if self._val is not None:
                vals, _ = self._eval_pass(self._val, np.arange(len(self._val)), collect_targets=False)
                out[VALIDATION] = Measurement.from_values(VALIDATION, vals)
            if self._probes_on:
                if self._n_probe is None:
                    self._choose_probe(epoch_seconds, b_train, prot)
                idx = self.probe_indices
                clean, targets = self._eval_pass(self._probe, idx, collect_targets=meta["baseline_loss"] is None)
                if targets is not None and meta["baseline_loss"] is None:
                    meta["baseline_loss"] = baseline_loss(self._loss_kind, targets.detach().cpu().numpy())
                out[EVAL_CLEAN] = Measurement.from_values(EVAL_CLEAN, clean)
                if self._run_T or self._run_A:
                    t_vals, a_vals = self._train_mode_pass(idx, b_train, prot)
                    if a_vals is not None:
                        out[EVAL_AUGMENTED] = Measurement.from_values(EVAL_AUGMENTED, a_vals)
                    if t_vals is not None:
                        out[TRAIN_MODE] = Measurement.from_values(TRAIN_MODE, t_vals)
        return out

    def _measure_dist(self, epoch_seconds: float, b_train: int) -> dict[str, Measurement]:
        """The passes of :meth:`_measure`, sharded over the ranks, gathered in one collective."""
        r, w = self._rank, self._world
        meta = self.run.meta
        local: dict[str, Any] = {}
        with self._protected() as prot:
            prot.sync_buffers(0)
            if self._val is not None:
                pos = np.arange(len(self._val))[r::w]
                local[VALIDATION] = (pos, self._eval_pass(self._val, pos, collect_targets=False)[0])
            if self._probes_on:
                if self._n_probe is None:
                    self._choose_probe(epoch_seconds, b_train, prot)
                idx = self.probe_indices
                pos = np.arange(len(idx))[r::w]
                want_t = meta.get("baseline_loss") is None
                clean, targets = self._eval_pass(self._probe, idx[pos], collect_targets=want_t)
                local[EVAL_CLEAN] = (pos, clean)
                if want_t and targets is not None:
                    local["targets"] = (pos, targets.detach().cpu().numpy())
                if self._run_T or self._run_A:
                    t_vals, a_vals, tpos = self._train_mode_pass(idx, b_train, prot, shard=(r, w))
                    if t_vals is not None:
                        local[TRAIN_MODE] = (tpos, t_vals)
                    if a_vals is not None:
                        local[EVAL_AUGMENTED] = (tpos, a_vals)
        parts: list[Any] = [None] * w
        torch.distributed.all_gather_object(parts, local)  # the one collective of the passes
        out: dict[str, Measurement] = {}
        sizes = {VALIDATION: len(self._val) if self._val is not None else 0,
                 EVAL_CLEAN: len(self.probe_indices) if self.probe_indices is not None else 0}
        for kind in (VALIDATION, EVAL_CLEAN, TRAIN_MODE, EVAL_AUGMENTED, "targets"):
            got = [p[kind] for p in parts if kind in p]
            if not got:
                continue
            n = sizes.get(kind, sizes[EVAL_CLEAN])
            first = got[0][1]
            full = np.zeros((n,) + tuple(first.shape[1:]), dtype=first.dtype)
            seen = np.zeros(n, dtype=bool)
            for pos, vals in got:
                full[pos] = vals
                seen[pos] = True
            if kind in (TRAIN_MODE, EVAL_AUGMENTED):  # a merged final batch may leave no gap; check anyway
                full, seen = full[seen], seen[seen]
            if not seen.all():
                raise RuntimeError(f"distributed probe pass {kind!r}: {int((~seen).sum())} samples missing "
                                   "after the gather (ranks disagree on the probe set?)")
            if kind == "targets":
                meta["baseline_loss"] = baseline_loss(self._loss_kind, full)
            else:
                out[kind] = Measurement.from_values(kind, full)
        return out

    def _choose_probe(self, epoch_seconds: float, b_train: int, prot: "_Protect") -> None:
        """Fix the probe size and indices (first end_epoch); the cost rule is in the class docstring."""
        n_total = len(self._probe)
        perm = probe_permutation(self._probe_seed, n_total)
        meta = self.run.meta
        arg = self._probe_size_arg
        if arg == "all":
            n, reason = n_total, "probe_size='all'"
        elif arg not in ("auto", "timed"):
            n, reason = min(int(arg), n_total), f"probe_size={arg}"
        elif (inherited := inherited_probe_size(self._store, self.run.experiment, self.run.id, n_total,
                                                 self._probe_seed)) is not None:
            n, reason = min(inherited[0], n_total), inherited[1]
        elif arg == "timed":
            cap, limit = probe_size_cap(n_total, len(self._val) if self._val is not None else None)
            n_pilot = min(PILOT_SIZE, cap)
            pilot = np.sort(perm[:n_pilot])
            t0 = time.perf_counter()
            self._eval_pass(self._probe, pilot, collect_targets=False)
            if self._run_T or self._run_A:
                self._train_mode_pass(pilot, min(b_train, n_pilot), prot)
            per_sample = (time.perf_counter() - t0) / n_pilot / self._world  # sharded passes: 1/world each
            n, why = timed_probe_size(cap, limit, self._probe_budget, epoch_seconds, per_sample)
            reason = (f"timed: {why}; budget {100 * self._probe_budget:g} % of the first epoch's "
                      f"{epoch_seconds:.3g} s training time at {1e6 * per_sample:.3g} µs per probe sample "
                      f"(all probe passes, timed on {n_pilot} samples)")
            meta["probe_cost_per_sample_s"] = per_sample
        else:
            cap, limit = probe_size_cap(n_total, len(self._val) if self._val is not None else None)
            passes = 1 + int(self._run_T) + int(self._run_A)
            n, why = budget_probe_size(cap, limit, self._probe_budget, self._epoch_samples, passes)
            reason = f"auto: {why}"
        if self._dist:  # rank 0's decision holds on every rank (a timed one can differ between ranks)
            box = [(n, reason, meta.get("probe_cost_per_sample_s"))]
            torch.distributed.broadcast_object_list(box, src=0)
            n, reason, cost = box[0]
            if cost is not None:
                meta["probe_cost_per_sample_s"] = cost
        self._n_probe = n
        self.probe_indices = np.sort(perm[:n]).astype(np.int64)
        meta["probe_size"] = n
        meta["probe_size_reason"] = reason
        meta["probe_fingerprint"] = fingerprint_indices(self.probe_indices, n_total)

    # ---------------------------------------------------------------------------------------
    def _default_eval_bs(self, sample: Any) -> int:
        if self._device.type == "cuda":
            return CUDA_EVAL_BATCH
        per = max(1, _input_bytes(sample) // max(1, _batch_len(sample) or 1))
        return int(max(64, min(CPU_EVAL_BATCH, CPU_EVAL_BYTES // per)))

    def _losses_of(self, inputs: Any, target: Any) -> torch.Tensor:
        """Per-sample losses of one batch (float32 on the device), split on CUDA out-of-memory."""
        try:
            out = self._forward(self.model, inputs)
            vals = self._per_sample(out, target)
        except torch.OutOfMemoryError:
            n = _batch_len(inputs) or 1
            if n <= 1:
                raise
            out = None
            torch.cuda.empty_cache()
            half = n // 2
            self._eval_bs = max(1, min(self._eval_bs or n, half))
            return torch.cat([self._losses_of(_slice(inputs, slice(0, half)), _slice(target, slice(0, half))),
                              self._losses_of(_slice(inputs, slice(half, n)), _slice(target, slice(half, n)))])
        if "per_sample_loss_check" not in self.run.meta:
            self._check_per_sample(out, target, vals)
        if not self._warned_fallback and self._per_sample_method == "per-sample calls":
            self._warned_fallback = True
            warnings.warn(
                f"loss_fn {_loss_name(self.loss_fn)!r} takes no reduction argument: per-sample losses are computed "
                "one sample at a time (slow). Pass a torch.nn loss or a function accepting reduction='none'.",
                stacklevel=4)
        return vals

    def _check_per_sample(self, out: Any, target: Any, vals: torch.Tensor) -> None:
        try:
            ref = float(torch.as_tensor(self.loss_fn(out, target)).float().mean())
        except Exception as exc:  # the loss cannot be called on this batch as a whole
            self.run.meta["per_sample_loss_check"] = {"consistent": None, "error": str(exc)}
            return
        mean = float(vals.double().mean())
        if not (math.isfinite(ref) and math.isfinite(mean)):
            return  # judged on the next finite batch
        ok = abs(mean - ref) <= PER_SAMPLE_RTOL * max(abs(ref), 1e-8) + 1e-7
        self.run.meta["per_sample_loss_check"] = {"consistent": bool(ok), "mean_of_per_sample": mean,
                                                 "loss_fn": ref, "method": self._per_sample_method}
        if not ok:
            warnings.warn(
                f"loss_fn {_loss_name(self.loss_fn)!r}: the mean of the per-sample losses ({mean:.6g}) differs from "
                f"the loss function's own value ({ref:.6g}) on the same batch (class weights, ignore_index or a "
                "custom reduction?). losslens reports unweighted per-sample means.", stacklevel=5)

    def _eval_pass(self, src: _Source, indices: np.ndarray, collect_targets: bool) -> tuple[np.ndarray, Any]:
        """Eval mode, large batches; per-sample losses in ``indices`` order, and the targets if asked."""
        self.model.eval()
        device = self._device
        parts: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        i = 0
        while i < len(indices):
            if self._eval_bs is None:
                probe_batch = self._unpack(src.batch(indices[:1]))[0]
                self._eval_bs = self._default_eval_bs(probe_batch)
            chunk = indices[i:i + self._eval_bs]
            inputs, target = self._unpack(src.batch(chunk))
            inputs, target = _to_device(inputs, device), _to_device(target, device)
            parts.append(self._losses_of(inputs, target))
            if collect_targets and isinstance(target, torch.Tensor):
                targets.append(target.detach())
            i += len(chunk)
        vals = torch.cat(parts).cpu().numpy().astype(np.float32) if parts else np.zeros(0, np.float32)
        tg = torch.cat(targets).cpu() if collect_targets and targets else None
        return vals, tg

    def _train_mode_pass(self, indices: np.ndarray, b_train: int, prot: "_Protect",
                         shard: tuple[int, int] | None = None) -> tuple[Any, ...]:
        """T and A on the same augmented batches of the training batch size (sorted probe order).

        A final batch smaller than half the training batch size is merged into the
        previous one (a batch of one sample cannot be normalised by batch norm).
        With ``shard=(rank, world)`` only batches ``rank::world`` are run and the
        positions (into ``indices``) of the values are returned third.
        """
        src = self._train if self._train is not None else self._probe
        device = self._device
        n = len(indices)
        if not self._run_T:  # eval mode only: batch composition does not matter
            if self._eval_bs is None:
                self._eval_bs = self._default_eval_bs(self._unpack(src.batch(indices[:1]))[0])
            b_train = max(b_train, self._eval_bs)
        starts = list(range(0, n, b_train))
        if len(starts) > 1 and n - starts[-1] < b_train / 2:
            starts.pop()
        bounds = list(zip(starts, starts[1:] + [n]))
        numbered = list(enumerate(bounds))
        if shard is not None:
            numbered = numbered[shard[0]::shard[1]]
            bounds = [b for _, b in numbered]
        t_parts: list[torch.Tensor] = []
        a_parts: list[torch.Tensor] = []
        for k, (lo, hi) in numbered:
            prot.reseed(k)  # batch k draws the same augmentation and dropout masks on any rank
            inputs, target = self._unpack(src.batch(indices[lo:hi]))
            inputs, target = _to_device(inputs, device), _to_device(target, device)
            if self._run_T:
                prot.apply_train_flags(self._train_flags)
                t_parts.append(self._per_sample(self._forward(self.model, inputs), target))
                if self._run_A:  # eval mode reads the running statistics the train-mode forward just moved
                    prot.restore_buffers()
            if self._run_A:
                self.model.eval()
                a_parts.append(self._per_sample(self._forward(self.model, inputs), target))
        self.model.eval()
        prot.restore_buffers()
        t_vals = torch.cat(t_parts).cpu().numpy().astype(np.float32) if t_parts else None
        a_vals = torch.cat(a_parts).cpu().numpy().astype(np.float32) if a_parts else None
        if shard is not None:
            pos = (np.concatenate([np.arange(lo, hi) for lo, hi in bounds]) if bounds
                   else np.zeros(0, dtype=np.int64))
            empty = np.zeros(0, np.float32)
            return (t_vals if t_vals is not None or not self._run_T else empty,
                    a_vals if a_vals is not None or not self._run_A else empty, pos)
        return t_vals, a_vals

    # ---------------------------------------------------------------------------------------
    def finish(self) -> Run:
        """Mark the run finished (in memory and in the store) and close a store opened from a path.

        Returns
        -------
        Run
            :attr:`run`.

        Raises
        ------
        losslens.store.StoreError
            If epochs whose store write failed during training still cannot be written (the message names the
            store; the epochs stay in :attr:`run`).
        """
        if self._losses:
            warnings.warn(f"Lens.finish: {len(self._losses)} step(s) after the last end_epoch() are not recorded",
                          stacklevel=2)
        if self._store is not None:
            self._flush(final=True)
        self.run.status = "finished"
        if self._store is not None:
            self._sync_meta()
            self._store.set_status(self.run.id, "finished")
            if self._own_store:
                self._store.close()
                self._store = None
        return self.run

    def __enter__(self) -> "Lens":
        """``with Lens(...) as lens:`` finishes the run when the block ends without an exception (a run left by an
        exception stays "running": its report says it did not finish)."""
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self.run.status != "finished":
            self.finish()

    def diagnose(self) -> Any:
        """Diagnose the run recorded so far.

        Returns
        -------
        losslens.report.Report
            The report of :func:`losslens.diagnose.diagnose` on :attr:`run`
            (``.print()``, ``.save_html(path)``, ``.save_json(path)``).
        """
        from .diagnose import diagnose
        from .report import Report

        return Report(diagnose(self.run))


class _Protect:
    """Context for the probe passes: no_grad, forked RNGs, module flags and buffers restored.

    Inside, torch's CPU generator (and the CUDA generators of ``devices``), numpy's
    and Python's global RNGs are seeded with ``seed`` so the probe passes are
    reproducible; on exit every state is put back as it was.
    """

    def __init__(self, model: nn.Module, devices: list[int], seed: int) -> None:
        self.model = model
        self.devices = devices
        self.seed = seed
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def reseed(self, k: int = 0) -> None:
        """Seed torch's CPU generator, the CUDA generators of ``devices``, numpy's and Python's RNGs
        with ``seed`` and ``k`` (the probe batch number), so a batch's random draws do not depend on
        which batches ran before it (on this rank or another)."""
        s = (self.seed * 1_000_003 + k) % 2 ** 63
        torch.random.default_generator.manual_seed(s)
        for d in self.devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(s)
        np.random.seed(s % 2 ** 32)
        random.seed(s)

    def __enter__(self) -> "_Protect":
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._np_state = np.random.get_state()
        self._py_state = random.getstate()
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        self._nograd = torch.no_grad()
        self._nograd.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        for d in self.devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        random.seed(self.seed)
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        return self

    def apply_train_flags(self, flags: list[bool] | None) -> None:
        """Train mode: the flags the modules had during training (all on when unknown)."""
        if flags is None or len(flags) != len(self._modes):
            self.model.train()
        else:
            for (m, _), f in zip(self._modes, flags):
                m.training = f
            if not self.model.training:
                self.model.train()

    def restore_buffers(self) -> None:
        for b, saved in self._buffers or ():
            b.copy_(saved)

    def sync_buffers(self, src: int = 0) -> None:
        """Distributed: measure with rank ``src``'s buffers (one ``broadcast_object_list``).

        Under DDP the parameters are equal on every rank, but the batch-norm running
        statistics are each rank's own until the next forward broadcasts rank 0's
        (``broadcast_buffers=True``); the probe passes use rank 0's, so every shard
        is measured on the same model. Each rank's own buffers come back on exit.
        """
        bufs = list(self.model.buffers())
        if not bufs:
            return
        box = [[b.detach().cpu() for b in bufs] if torch.distributed.get_rank() == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        self._orig = self._buffers
        for b, v in zip(bufs, box[0]):
            b.copy_(v.to(b.device))
        self._buffers = [(b, b.detach().clone()) for b in bufs]

    def __exit__(self, *exc: Any) -> None:
        try:
            self.restore_buffers()
            for b, saved in getattr(self, "_orig", None) or ():
                b.copy_(saved)
            for m, t in self._modes:
                m.training = t
        finally:
            self._nograd.__exit__(None, None, None)
            self._fork.__exit__(None, None, None)
            np.random.set_state(self._np_state)
            random.setstate(self._py_state)
