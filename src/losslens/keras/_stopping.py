"""``losslens.keras.EarlyStopping``: Keras's early stopping, judging improvements against noise."""

from __future__ import annotations

from typing import Any

import keras

from ..recording.stopping import NoiseAwareStopper, StopDecision

__all__ = ["EarlyStopping"]


class EarlyStopping(keras.callbacks.Callback):
    """A drop-in for ``keras.callbacks.EarlyStopping`` that stops on evidence, not on a raw patience count.

    Each epoch is judged by :class:`losslens.recording.stopping.NoiseAwareStopper`: with ``lens=`` (the
    :class:`~losslens.keras.LossLens` callback, placed before this one) and ``monitor="val_loss"``, the per-sample
    validation losses are compared with the best epoch's, paired; otherwise ``logs[monitor]`` is judged against
    the curve's own epoch-to-epoch noise.

    Parameters
    ----------
    monitor : str
        A key of Keras's ``logs`` (default ``"val_loss"``).
    min_delta : float
        Smallest change that counts as an improvement.
    patience : int
        Epochs without a new best value (lower by more than ``min_delta``, as Keras counts) and without a
        falling trend before stopping.
    mode : {"auto", "min", "max"}
        ``"auto"``: ``"max"`` for accuracies and AUCs, else ``"min"`` (Keras's rule).
    restore_best_weights : bool
        At the end of training, restore the weights of the truly best epoch (the lowest monitored value, not the
        epoch after it).
    lens : losslens.keras.LossLens, optional
        Its per-sample validation losses make the judgement paired.
    start_from_epoch : int
        Epochs before judging starts (warm-up).

    Attributes
    ----------
    stopped_epoch : int
        The epoch training stopped at (0 when it ran to the end).
    best_epoch : int or None
    decision : StopDecision or None
        The last judgement, with its reason; also in ``lens.run.meta["early_stopping"]``.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 10, mode: str = "auto",
                 restore_best_weights: bool = False, lens: Any = None, start_from_epoch: int = 0,
                 verbose: int = 0) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode: expected 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            mode = "max" if any(k in monitor.lower() for k in ("acc", "auc", "precision", "recall", "f1")) else "min"
        self.monitor, self.mode, self.min_delta, self.patience = monitor, mode, float(min_delta), patience
        self.restore_best_weights, self.lens, self.start_from_epoch = restore_best_weights, lens, start_from_epoch
        self.verbose = verbose
        NoiseAwareStopper(mode=mode, min_delta=min_delta, patience=patience)   # argument checks now
        self.stopped_epoch = 0
        self.best_epoch: int | None = None
        self.decision: StopDecision | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._stopper = NoiseAwareStopper(mode=self.mode, min_delta=self.min_delta, patience=self.patience)
        self._best_weights: Any = None
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.start_from_epoch:
            return
        run = getattr(self.lens, "run", None)
        paired = (run is not None and self.monitor == "val_loss" and bool(run.epochs)
                  and run.epochs[-1].index == epoch and "validation" in run.epochs[-1].measurements)
        if paired:
            d = self._stopper.judge_run(run)
        elif logs and self.monitor in logs:
            d = self._stopper.update(epoch, float(logs[self.monitor]))
        else:
            return
        if d is None:
            return
        self.decision, self.best_epoch = d, d.best_epoch
        if self.restore_best_weights and d.best_epoch == epoch:
            self._best_weights = self.model.get_weights()
        if d.stop:
            self.model.stop_training = True
            self.stopped_epoch = epoch
            if self.verbose:
                print(f"losslens EarlyStopping: epoch {epoch}: {d.reason}; best epoch {d.best_epoch}")

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            self.model.set_weights(self._best_weights)
