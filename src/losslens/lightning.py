"""Lightning adapter: record a ``Trainer.fit`` run with the :class:`LossLens` callback.

::

    from losslens.lightning import LossLens

    lens = LossLens(loss_fn=nn.CrossEntropyLoss(), probe=train_ds_eval, val=val_ds, run="digits", store="losslens.db")
    trainer = L.Trainer(max_epochs=20, callbacks=[lens])
    trainer.fit(module, train_loader, val_loader)
    Report.from_run(lens).print()   # from losslens.report import Report

The callback drives a :class:`losslens.torch.LossLens` on the ``LightningModule``
(its own ``forward``), so the measurements, the store and the report are those
of the PyTorch adapter (see its docstring for the protocol ``R, Ω, T, A, C, V``):

* step losses come from the ``outputs`` of ``on_train_batch_end`` (the loss the
  ``training_step`` returned, kept on the device: no ``.item()``, no
  ``self.log(..., sync_dist=True)``); one row per batch. With
  ``accumulate_grad_batches = k`` Lightning hands the hook the loss divided by
  ``k``; the callback multiplies it back, so a row is the batch's mean loss per sample;
* at ``on_train_epoch_end`` the probe passes (T, A, C) and the validation pass
  (V) run on the end-of-epoch weights, under the torch adapter's protection (no
  gradient, forked and restored RNGs, module flags and buffers restored), and
  the epoch is committed to the store;
* under ``strategy="ddp"`` (any ``torch.distributed`` process group) the passes
  are sharded over the ranks and gathered, step losses are exchanged once per
  epoch, and rank 0 alone writes the store (:class:`losslens.torch.LossLens`,
  "torch.distributed"; docs/distributed.md).

This module imports lightning and torch; the core of losslens does not.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl  # type: ignore[no-redef]

from .recording.deprecations import deprecated_report, renamed_data_args
from .recording.stopping import NoiseAwareStopper, StopDecision
from .store import Store
from .torch import LossLens as TorchLossLens
from .torch import batch_len, default_unpack, weight_decay_of

__all__ = ["LossLens", "EarlyStopping"]


class LossLens(pl.Callback):
    """Lightning ``Callback`` recording a run for losslens.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(outputs, target) -> scalar tensor``: the data loss the module's
        ``training_step`` optimises, applied to ``module(inputs)`` (per-sample
        losses are derived from it, :func:`losslens.torch.per_sample_loss_fn`).
    train_data : dataset or None
        The training set with clean (eval) transforms, see :class:`losslens.torch.LossLens` (formerly ``probe``).
    val_data : dataset, optional
        The validation set (gives ``V``; formerly ``val``).
    train_augmented : dataset, optional
        The training samples with the training transforms (gives ``A``; formerly ``train``).
    run : str
        Name of the run.
    store : str, os.PathLike, Store or None
        SQLite store (rank 0 alone writes it under DDP); None keeps the run in memory.
    log_metrics : bool
        Log the end-of-epoch measurements through ``pl_module.log`` (default True), so that every logger of the
        Trainer receives them: ``eval_train_loss`` (C), ``train_mode_loss`` (T), ``eval_augmented_loss`` (A),
        ``losslens_val_loss`` (V), loss per sample (:data:`LOGGED_NAMES`; the names of the Keras callback), each
        with its standard error (``_se``), each decomposition term with its standard error (``gap_timing``,
        ``generalization_gap``, ...) and the headline verdict's index ``verdict_code``
        (:mod:`losslens.diagnose.live`). ``losslens diagnose`` reads the measurements back from a
        ``metrics.csv``. ``sinks=`` (:mod:`losslens.sinks`) writes the same values to trackers outside Lightning.
    **lens_kwargs
        Any other keyword of :class:`losslens.torch.LossLens` (``experiment``,
        ``probe_size``, ``probe_budget``, ``probe_seed``, ``penalty``, ``unpack``,
        ``forward``, ``eval_batch_size``, ``meta``, ...). ``forward`` defaults to
        calling the module (its own ``forward``).

    Attributes
    ----------
    lens : losslens.torch.LossLens or None
        The underlying recorder, created at ``on_train_start``.
    run : losslens.record.Run or None
        The run recorded so far.

    Raises
    ------
    TypeError
        If ``loss_fn`` is not callable or an argument of :class:`~losslens.torch.LossLens`
        has the wrong type (at ``on_train_start``, when the module is known).

    Notes
    -----
    Manual optimisation (``automatic_optimization = False``) records the loss in
    ``outputs`` as returned (a tensor, or the ``"loss"`` entry of a dict); a
    ``training_step`` that returns nothing records no step. Batches skipped by
    returning None are not recorded.

    **Resume.** The callback's ``state_dict`` (the stored run's id) is saved in Lightning checkpoints; a fit
    resumed with ``ckpt_path=`` continues that run in the same store: epochs recorded after the checkpoint are
    dropped and recorded again as they are trained again (``trainer.current_epoch`` is the next epoch's index).
    """

    def __init__(self, loss_fn: Callable[..., torch.Tensor], train_data: Any = None, val_data: Any = None,
                 train_augmented: Any = None, *, run: str = "run",
                 store: str | os.PathLike[str] | Store | None = "losslens.db", **lens_kwargs: Any) -> None:
        old: dict[str, Any] = {k: lens_kwargs.pop(k) for k in ("probe", "val", "train") if k in lens_kwargs}
        train_data, val_data, train_augmented = renamed_data_args(
            "LossLens", old, train_data=train_data, val_data=val_data, train_augmented=train_augmented)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss, got {type(loss_fn).__name__}")
        if "model" in lens_kwargs:
            raise TypeError("model: not an argument of LossLens; the LightningModule being fitted is recorded")
        self.loss_fn = loss_fn
        self.log_metrics = bool(lens_kwargs.pop("log_metrics", True))
        self._data = dict(train_data=train_data, val_data=val_data, train_augmented=train_augmented)
        self._resume: dict[str, Any] | None = None
        self._kwargs = dict(run=run, store=store, **lens_kwargs)
        self._unpack = lens_kwargs.get("unpack") or default_unpack
        self.lens: TorchLossLens | None = None

    @property
    def run(self) -> Any:
        return self.lens.run if self.lens is not None else None

    # ---------------------------------------------------------------------------------------
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Created here, not at on_fit_start: a fit resumed from a checkpoint has its epoch counter restored only
        # after on_fit_start, and the recorder continues the stored run at that epoch.
        if self.lens is not None:
            return  # a second fit() continues the same run
        kwargs = dict(self._kwargs)
        meta = {"framework": "lightning", "lightning_version": pl.__version__,
                "accumulate_grad_batches": int(trainer.accumulate_grad_batches)}
        meta.update(kwargs.pop("meta", None) or {})
        optimizer = kwargs.pop("optimizer", None)
        resume = None
        if self._resume is not None and self._resume.get("run_id") is not None:
            resume = dict(self._resume, epochs=int(trainer.current_epoch))  # the epoch training restarts at
        self.lens = lens = TorchLossLens(pl_module, self.loss_fn, **self._data, optimizer=optimizer, meta=meta,
                                         resume=resume, **kwargs)
        lens._live_wanted = self.log_metrics
        if trainer.optimizers and lens.run.meta.get("optimizer") is None:
            opt = trainer.optimizers[0]
            lens.run.meta["optimizer"] = type(opt).__name__
            lens.run.meta["weight_decay"] = weight_decay_of(opt)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.lens is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divides the hook's loss by k
        try:
            n = batch_len(self._unpack(batch)[1])
        except TypeError:
            n = None
        self.lens.step(loss, batch_size=n)

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.lens is None or trainer.sanity_checking:
            return
        ep = self.lens.end_epoch()
        if self.log_metrics and ep is not None and self.lens.live is not None:
            # through the module's log, so every logger of the Trainer (CSV, TensorBoard, MLflow, W&B, ...) gets
            # them, under the names the Keras callback puts in its logs (losslens.diagnose.live)
            if self.lens.live.values:
                pl_module.log_dict(self.lens.live.values, on_step=False, on_epoch=True, rank_zero_only=True)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.lens is not None and self.lens.run.status != "finished":
            self.lens.finish()

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: ``{"run_id", "epochs"}`` of the stored run (plain numbers)."""
        if self.lens is not None:
            return self.lens.state_dict()
        return dict(self._resume or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called by Lightning when a fit resumes from a checkpoint, before ``on_fit_start``."""
        self._resume = dict(state_dict) if state_dict else None

    # ---------------------------------------------------------------------------------------
    def diagnose(self) -> Any:
        """Deprecated: use ``Report.from_run(callback)`` (:class:`losslens.report.Report`); removed in 0.3.

        Raises
        ------
        RuntimeError
            Before ``Trainer.fit`` has started.
        """
        if self.lens is None:
            raise RuntimeError("LossLens.diagnose: nothing recorded yet (call trainer.fit first)")
        return deprecated_report(self.lens.run, "LossLens.diagnose()")


class EarlyStopping(pl.Callback):
    """A drop-in for Lightning's ``EarlyStopping`` that stops on evidence, not on a raw patience count.

    Judged by :class:`losslens.recording.stopping.NoiseAwareStopper` once per training epoch: with ``lens=`` (the
    :class:`LossLens` callback, listed before this one) and ``monitor="val_loss"``, on the recorded per-sample
    validation losses, paired with the best epoch's; otherwise on ``trainer.callback_metrics[monitor]`` against the
    curve's own noise. Unlike Lightning's, ``patience`` counts epochs (not validation checks) and
    ``restore_best_weights`` loads the truly best epoch's weights when training ends.

    Parameters
    ----------
    monitor : str
    min_delta : float
    patience : int
        Epochs without a new best value (lower by more than ``min_delta``) and without a falling trend before stopping.
    mode : {"min", "max"}
    restore_best_weights : bool
    lens : LossLens, optional

    Attributes
    ----------
    decision : StopDecision or None
        The last judgement (``best_epoch``, ``reason``); also in the run's ``meta["early_stopping"]``.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 10, mode: str = "min",
                 restore_best_weights: bool = False, lens: LossLens | None = None) -> None:
        self.monitor, self.lens, self.restore_best_weights = monitor, lens, restore_best_weights
        self._stopper = NoiseAwareStopper(mode=mode, min_delta=min_delta, patience=patience)
        self._best_state: dict[str, Any] | None = None
        self.decision: StopDecision | None = None

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking:
            return
        inner = self.lens.lens if self.lens is not None else None
        if inner is not None and self.monitor == "val_loss" and inner.run.epochs:
            d = self._stopper.judge_run(inner.run)
        elif self.monitor in trainer.callback_metrics:
            d = self._stopper.update(trainer.current_epoch, float(trainer.callback_metrics[self.monitor]))
        else:
            return
        if d is None:
            return
        self.decision = d
        if self.restore_best_weights and d.best_epoch == trainer.current_epoch:
            self._best_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        if d.stop:
            trainer.should_stop = True

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.restore_best_weights and self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
