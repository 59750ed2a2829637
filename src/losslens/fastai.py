"""fastai adapter: record a ``Learner``'s run with the :class:`LossLens` callback.

::

    from losslens.fastai import LossLens

    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=[LossLens(run="digits", store="losslens.db")])
    learn.fit_one_cycle(5, 1e-2)
    Report.from_run(learn.loss_lens).print()   # from losslens.report import Report; the run: .lens.run

What is recorded (the protocol of :class:`losslens.torch.LossLens`, whose machinery this callback drives):

* **step losses** (``after_batch``, training batches only): ``learn.loss``, the raw loss of each batch, with its
  batch size; ``R`` is their sample-weighted epoch mean;
* **probes and validation** (``after_epoch``): with the learner's model and loss (fastai's flattened losses are
  made per-sample by setting their inner loss's ``reduction`` to ``"none"``), the eval-mode loss ``C`` and the
  train-mode loss ``T`` on a fixed, seeded subset of the training set, and ``V`` on the validation set;
* **fastai's own numbers** beside them, as epoch metrics: ``fastai_train_loss`` (the ``train_loss`` column of
  ``learn.recorder``) and ``fastai_valid_loss``. fastai's ``train_loss`` is an exponential moving average of the
  batch losses (``AvgSmoothLoss``, β = 0.98, debiased): at the epoch end its weights have mean age
  β / (1 − β) = 49 batches, so it lags the end-of-epoch weights by about 49 steps and is neither ``R`` (the
  epoch mean) nor ``C`` (eval mode, end-of-epoch weights). ``run.meta["fastai_train_loss_lag_steps"]`` holds that
  lag, and the report says it.

The datasets default to ``dls.train.dataset`` and ``dls.valid.dataset``, collated by torch's default collate:
exact when the ``DataLoaders`` apply no batch transforms (``after_batch``, e.g. ``Normalize`` on images); pass
``train_data=``/``val_data=`` (the samples as the model sees them) otherwise. This module imports fastai and torch.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Callable

import torch
from fastai.callback.core import Callback

from .store import Store
from .torch import LossLens as TorchLossLens

__all__ = ["LossLens", "per_sample_loss", "EMA_BETA"]

#: The smoothing of fastai's ``Recorder`` (``AvgSmoothLoss(beta=0.98)``), which makes its ``train_loss``.
EMA_BETA = 0.98


def per_sample_loss(loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss(outputs, target, reduction="mean")`` for a fastai loss (``BaseLoss``: ``CrossEntropyLossFlat``, ...).

    With ``reduction="none"`` it returns one loss per sample, shape ``(batch,)``: the wrapped torch loss with
    ``reduction="none"`` on fastai's flattened inputs, averaged over each sample's elements (a segmentation
    mask's pixels), as fastai's ``"mean"`` averages them. Other losses are returned unchanged.
    """
    inner = getattr(loss_func, "func", None)
    if not (isinstance(inner, torch.nn.Module) and hasattr(inner, "reduction")):
        return loss_func

    def loss(outputs: Any, target: Any, reduction: str = "mean") -> torch.Tensor:
        if reduction == "mean":
            return loss_func(outputs, target)
        f: Any = copy.copy(loss_func)
        f.func = copy.copy(inner)
        f.func.reduction = reduction
        values = f(outputs, target)
        if reduction == "none":
            return values.reshape(len(outputs), -1).mean(1)
        return values

    loss.__name__ = type(loss_func).__name__
    return loss


class LossLens(Callback):
    """fastai ``Callback`` recording a ``Learner``'s run for losslens.

    Parameters
    ----------
    train_data : dataset, optional
        The training set with clean inputs (default ``dls.train.dataset``; see the module notes).
    val_data : dataset, optional
        The validation set (default ``dls.valid.dataset`` when the learner has one).
    train_augmented : dataset, optional
        The same training samples with the training transforms (gives ``A``).
    run : str
        Name of the run.
    store : str, os.PathLike, Store or None
        SQLite store; None keeps the run in memory.
    **lens_kwargs
        Any other keyword of :class:`losslens.torch.LossLens` (``probe_size``, ``probe_seed``, ``sinks``,
        ``eval_batch_size``, ``experiment``, ``meta``, ...).

    Attributes
    ----------
    lens : losslens.torch.LossLens or None
        The recorder, created at ``before_fit``; the run is ``lens.run`` (fastai's ``Callback.run`` is its on/off
        flag). The callback is also ``learn.loss_lens``.

    Notes
    -----
    ``order`` is 60: after fastai's ``Recorder`` (50), so each epoch's ``train_loss``/``valid_loss`` are read at the
    same epoch end. A recorder that cannot be created (its data cannot be read) warns and records nothing; the
    fit goes on. Each ``fit`` (``fit_one_cycle``, ...) records one run, finished at ``after_fit``.
    """

    order = 60

    def __init__(self, train_data: Any = None, val_data: Any = None, train_augmented: Any = None, *,
                 run: str = "fastai", store: str | os.PathLike[str] | Store | None = "losslens.db",
                 **lens_kwargs: Any) -> None:
        if "model" in lens_kwargs:
            raise TypeError("model: not an argument of LossLens; the Learner's model is recorded")
        if store is not None and not isinstance(store, (str, os.PathLike, Store)):
            raise TypeError(f"store: expected a path, a losslens.store.Store or None, got {type(store).__name__}")
        self._data = dict(train_data=train_data, val_data=val_data, train_augmented=train_augmented)
        self._kwargs = dict(run=run, store=store, **lens_kwargs)
        self.lens: TorchLossLens | None = None
        self._failed = False

    def before_fit(self) -> None:
        learn = self.learn
        learn.loss_lens = self
        if self._failed:
            return
        import fastai

        data = dict(self._data)
        dls = learn.dls
        if data["train_data"] is None:
            data["train_data"] = dls.train.dataset
        if data["val_data"] is None and len(dls.loaders) > 1 and len(dls.valid.dataset):
            data["val_data"] = dls.valid.dataset
        kw = dict(self._kwargs)
        steps = max(1, len(dls.train))
        lag = EMA_BETA / (1 - EMA_BETA)
        meta = {"framework": "fastai", "fastai_version": fastai.__version__,
                "fastai_train_loss_lag_steps": lag,
                "fastai_train_loss_note": (
                    f"fastai's train_loss is an exponential moving average of the batch losses (beta {EMA_BETA}, "
                    f"debiased): at an epoch end it lags the weights by about {lag:.0f} steps "
                    f"({lag / steps:.2g} epochs here); losslens's R is the epoch mean of the same batch losses and "
                    "C the eval-mode loss at the end-of-epoch weights")}
        opt = getattr(learn, "opt", None)
        hypers = getattr(opt, "hypers", None)
        if hypers:
            meta["optimizer"] = getattr(learn.opt_func, "__name__", type(opt).__name__)
            meta["weight_decay"] = float(hypers[0].get("wd", 0.0) or 0.0)
        meta.update(kw.pop("meta", None) or {})
        try:
            self.lens = TorchLossLens(learn.model, per_sample_loss(learn.loss_func), **data, meta=meta, **kw)
        except (TypeError, ValueError):
            raise   # a wrong argument of LossLens: the user's to fix, said at once
        except Exception as exc:   # data losslens cannot read: record nothing, never stop the fit
            self._failed = True
            warnings.warn(f"losslens.fastai.LossLens: not recording ({type(exc).__name__}: {exc})", RuntimeWarning,
                          stacklevel=2)

    def after_batch(self) -> None:
        learn = self.learn
        if self.lens is None or not learn.training:
            return
        from fastai.torch_core import find_bs

        try:
            n = int(find_bs(learn.yb))
        except Exception:
            n = None
        self.lens.step(learn.loss, batch_size=n)

    def after_epoch(self) -> None:
        if self.lens is None:
            return
        metrics: dict[str, float] = {}
        rec: Any = getattr(self.learn, "recorder", None)
        values = getattr(rec, "values", None)
        if values:
            names = [n for n in rec.metric_names[1:] if n != "time"]   # values has no 'epoch' and 'time'
            for name, value in zip(names, values[-1]):
                if name in ("train_loss", "valid_loss") and value is not None:
                    metrics[f"fastai_{name}"] = float(value)
        self.lens.end_epoch(metrics)

    def after_fit(self) -> None:
        if self.lens is not None and self.lens.run.status != "finished":
            self.lens.finish()
