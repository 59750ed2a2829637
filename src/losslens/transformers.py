"""Hugging Face ``Trainer`` adapter: record a run with the :class:`LossLens` callback.

::

    from losslens.transformers import LossLens

    lens = LossLens(probe=train_ds, val=eval_ds, run="bert-sst2", store="losslens.db")
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, callbacks=[lens])
    trainer.train()
    Report.from_run(lens).print()   # from losslens.report import Report

What is recorded (the protocol of :class:`losslens.torch.LossLens`, whose machinery this
callback drives):

* **loss windows** (``on_log``): the Trainer logs the mean training loss of the
  last ``logging_steps`` optimizer steps (already averaged over processes by the
  Trainer). Each window becomes one step row with ``span`` = its number of
  optimizer steps, its batch size = the samples it covers, and its position at
  the window's centre in fractional epochs (the Trainer stamps it at its end);
* **probes** (``on_evaluate``): at every evaluation the eval-mode loss ``C`` on a
  fixed, seeded subset of the training set (the probe set), the train-mode loss
  ``T`` (dropout on) on the same samples in batches of the per-device training
  batch size, and the validation loss ``V``, all per sample, under the torch
  adapter's protection (no gradient, forked and restored RNGs, module flags and
  buffers restored). Each evaluation closes one record "epoch": its ``index`` counts
  evaluations, its ``position`` is the Trainer's fractional epoch
  (``eval_strategy="epoch"`` gives the usual epochs); ``R`` is the
  sample-weighted mean of the windows logged since the previous evaluation;
* under ``torchrun`` (a ``torch.distributed`` process group) the passes are
  sharded over the ranks and gathered, and rank 0 alone writes the store
  (docs/distributed.md).

The model's forward is called as ``model(**inputs).logits`` with ``inputs`` the
collated batch without ``"labels"``. This module imports transformers and torch.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainerCallback

from .recording.deprecations import deprecated_report, renamed_data_args
from .recording.stopping import NoiseAwareStopper
from .store import Store
from .torch import LossLens as TorchLossLens

__all__ = ["LossLens", "EarlyStoppingCallback", "logits_forward", "STATE_FILE"]

#: The recorder's state in a Trainer checkpoint folder (``{"run_id", "epochs"}``), read when training resumes.
STATE_FILE = "losslens_state.json"


def _checkpoint_dir(args: Any, step: int) -> str:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")


def _read_state(folder: str) -> dict[str, Any] | None:
    """The state written by :meth:`LossLens.on_save`, or None (a checkpoint saved without the callback)."""
    path = os.path.join(folder, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("run_id"), int) else None


def _calling_trainer() -> Any:
    """The ``transformers.Trainer`` whose training loop called the current callback event, or None.

    Callbacks are not given the Trainer; its ``log`` is the one way to reach every ``report_to`` integration
    (they run before user callbacks in ``on_log``, so adding to another event's ``logs`` comes too late).
    """
    import sys

    from transformers import Trainer

    frame: Any = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        if isinstance(frame.f_locals.get("self"), Trainer):
            return frame.f_locals["self"]
        frame = frame.f_back
    return None


def logits_forward(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """``model(**inputs).logits`` (a dict batch) or ``model(inputs).logits``: the Trainer's model call."""
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out.logits if hasattr(out, "logits") else out


class LossLens(TrainerCallback):
    """Hugging Face ``TrainerCallback`` recording a run for losslens.

    Parameters
    ----------
    train_data : dataset, DataLoader or None
        The training set with clean inputs (map-style; items are dicts with a
        ``"labels"`` entry, as the Trainer's). None: the Trainer's training
        ``DataLoader`` (its dataset and data collator) at ``on_train_begin``.
        (Formerly ``probe``.)
    val_data : dataset, DataLoader or None
        The validation set; None: the Trainer's evaluation ``DataLoader`` when it
        has one at ``on_train_begin``, else no ``V``. (Formerly ``val``.)
    loss_fn : callable, optional
        ``loss_fn(logits, labels) -> scalar tensor``. Default:
        ``torch.nn.CrossEntropyLoss()`` when ``model.config.num_labels > 1``;
        otherwise it must be given (``ValueError``).
    run : str
        Name of the run.
    store : str, os.PathLike, Store or None
        SQLite store (rank 0 alone writes it under torchrun); None keeps the run in memory.
    log_metrics : bool
        After each evaluation, log the measurements, each decomposition term with its standard error and the
        headline verdict's index (the names of :mod:`losslens.diagnose.live`) through the Trainer's ``log``
        (default True), so every ``report_to`` integration (TensorBoard, MLflow, W&B, ...) receives them and
        ``trainer_state.json`` keeps them. The Trainer is found on the call stack at ``on_train_begin``; a loop
        that is not a ``transformers.Trainer`` gets them in ``state.log_history`` only.
    **lens_kwargs
        Any other keyword of :class:`losslens.torch.LossLens` (``experiment``, ``sinks``,
        ``probe_size``, ``probe_seed``, ``eval_batch_size``, ``meta``, ...).
        ``forward`` defaults to :func:`logits_forward`; ``train_augmented``
        (augmented inputs) is accepted as in the torch adapter.

    Attributes
    ----------
    lens : losslens.torch.LossLens or None
        The recorder, created at ``on_train_begin``.

    Notes
    -----
    The Trainer syncs the logged loss over processes itself (``nested_gather``
    at each logging step); the callback adds no collective per step. Windows
    logged after the last evaluation stay unrecorded (a warning at
    ``on_train_end``); evaluate at the end of training (``eval_strategy="epoch"``
    or a final ``trainer.evaluate()``) to keep them.

    **Resume.** At each checkpoint the callback writes ``losslens_state.json`` (the stored run's id and the next
    evaluation's index) into the checkpoint folder; ``trainer.train(resume_from_checkpoint=...)`` with a new
    callback continues that run in the same store (evaluations recorded after the checkpoint are dropped and
    recorded again as training repeats them).
    """

    def __init__(self, train_data: Any = None, val_data: Any = None,
                 loss_fn: Callable[..., torch.Tensor] | None = None, *, run: str = "run",
                 store: str | os.PathLike[str] | Store | None = "losslens.db", **lens_kwargs: Any) -> None:
        old: dict[str, Any] = {k: lens_kwargs.pop(k) for k in ("probe", "val") if k in lens_kwargs}
        train_data, val_data = renamed_data_args("LossLens", old, train_data=train_data, val_data=val_data)
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss, got {type(loss_fn).__name__}")
        if "model" in lens_kwargs:
            raise TypeError("model: not an argument of LossLens; the Trainer's model is recorded")
        self.loss_fn = loss_fn
        self.log_metrics = bool(lens_kwargs.pop("log_metrics", True))
        self._trainer: Any = None
        self._probe, self._val = train_data, val_data
        self._kwargs = dict(run=run, store=store, **lens_kwargs)
        self.lens: TorchLossLens | None = None
        self._last_step = 0
        self._positions: list[float] = []
        self._spans: list[float] = []

    @property
    def run(self) -> Any:
        return self.lens.run if self.lens is not None else None

    # ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.lens is not None:
            return
        if model is None:
            raise ValueError("LossLens: the Trainer passed no model to on_train_begin")
        loss_fn = self.loss_fn
        if loss_fn is None:
            n_labels = getattr(getattr(model, "config", None), "num_labels", None)
            if not n_labels or n_labels < 2:
                raise ValueError("loss_fn: needed unless the model is a classifier with config.num_labels > 1 "
                                 f"(num_labels={n_labels})")
            loss_fn = torch.nn.CrossEntropyLoss()
        probe = self._probe if self._probe is not None else kwargs.get("train_dataloader")
        val = self._val if self._val is not None else kwargs.get("eval_dataloader")
        if probe is None:
            raise ValueError("train_data: none given and the Trainer has no training DataLoader yet; "
                             "pass train_data=train_dataset to LossLens")
        import transformers

        kw = dict(self._kwargs)
        meta = {"framework": "transformers", "transformers_version": transformers.__version__,
                "reported_loss_kind": "window_mean", "logging_steps": args.logging_steps,
                "gradient_accumulation_steps": args.gradient_accumulation_steps}
        meta.update(kw.pop("meta", None) or {})
        kw.setdefault("forward", logits_forward)
        if "train" in kw:
            kw["train_augmented"] = renamed_data_args("LossLens", {"train": kw.pop("train")},
                                                      train_augmented=kw.get("train_augmented"))[0]
        # T runs in batches of the per-device training batch size (batch-norm statistics depend on it)
        kw.setdefault("train_batch_size", int(args.per_device_train_batch_size))
        if state.global_step > 0 and "resume" not in kw:   # resumed from a checkpoint: continue its stored run
            kw["resume"] = _read_state(_checkpoint_dir(args, state.global_step))
        self.lens = TorchLossLens(model, loss_fn, probe, val, optimizer=kwargs.get("optimizer"), seed=args.seed,
                                  meta=meta, **kw)
        self.lens._live_wanted = self.log_metrics
        self._trainer = _calling_trainer() if self.log_metrics else None
        self._last_step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if self.lens is None or not logs or "loss" not in logs or state.global_step <= self._last_step:
            return
        span = state.global_step - self._last_step
        self._last_step = state.global_step
        epochs_per_step = (state.epoch / state.global_step) if state.epoch and state.global_step else math.nan
        end = state.epoch if state.epoch is not None else math.nan
        self._positions.append(end - 0.5 * span * epochs_per_step)
        self._spans.append(float(span))
        # samples this process saw in the window; summed over ranks by the Lens under DDP
        samples = int(span * args.per_device_train_batch_size * args.gradient_accumulation_steps)
        self.lens.step(float(logs["loss"]), batch_size=max(1, samples))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if self.lens is None or not self._spans:
            return  # before training, or no new window since the last evaluation
        mets = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.lens.end_epoch(mets, position=state.epoch, step_positions=np.asarray(self._positions),
                            step_spans=np.asarray(self._spans))
        self._positions, self._spans = [], []
        live = self.lens.live
        if self.log_metrics and live is not None and live.values:
            if self._trainer is not None:
                try:   # every report_to integration, and state.log_history
                    self._trainer.log(dict(live.values))
                    return
                except Exception as exc:   # an integration failing on our values never stops training
                    self._trainer = None
                    import warnings

                    warnings.warn(f"LossLens: logging the measurements through the Trainer failed "
                                  f"({type(exc).__name__}: {exc}); they go to state.log_history only from now on",
                                  RuntimeWarning, stacklevel=2)
            last = state.log_history[-1] if state.log_history else {}
            if not all(last.get(k) == v for k, v in live.values.items()):   # a failed Trainer.log appended first
                state.log_history.append({**live.values, "epoch": state.epoch, "step": state.global_step})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Write the recorder's state into the checkpoint folder the Trainer just saved (rank 0)."""
        if self.lens is None or not state.is_world_process_zero:
            return
        folder = _checkpoint_dir(args, state.global_step)
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE), "w", encoding="utf-8") as fh:
                json.dump(self.lens.state_dict(), fh)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.lens is None or self.lens.run.status == "finished":
            return
        if self._spans:
            self.lens.discard_steps()
            import warnings

            warnings.warn(f"LossLens: {len(self._spans)} loss window(s) after the last evaluation are not recorded; "
                          "evaluate at the end of training to keep them", stacklevel=2)
        self.lens.finish()

    # ---------------------------------------------------------------------------------------
    def diagnose(self) -> Any:
        """Deprecated: use ``Report.from_run(callback)`` (:class:`losslens.report.Report`); removed in 0.3.

        Raises
        ------
        RuntimeError
            Before training has started.
        """
        if self.lens is None:
            raise RuntimeError("LossLens.diagnose: nothing recorded yet (call trainer.train first)")
        return deprecated_report(self.lens.run, "LossLens.diagnose()")


class EarlyStoppingCallback(TrainerCallback):
    """A drop-in for ``transformers.EarlyStoppingCallback`` that stops on evidence, not on a raw patience count.

    Judged at each evaluation by :class:`losslens.recording.stopping.NoiseAwareStopper`: with ``lens=`` (the
    :class:`LossLens` callback, listed before this one) and the evaluation loss as the metric, on the recorded
    per-sample validation losses, paired with the best evaluation's; otherwise on the metric against the curve's
    own noise. The Trainer's ``load_best_model_at_end`` still chooses the checkpoint to load.

    Parameters
    ----------
    early_stopping_patience : int
        Evaluations without a new best value (lower by more than ``min_delta``) and without a falling trend
        before stopping.
    early_stopping_threshold : float
        Smallest change that counts as an improvement (``min_delta``).
    lens : LossLens, optional
    metric : str, optional
        Default: ``args.metric_for_best_model`` (prefixed ``eval_``), else ``"eval_loss"``.
    """

    def __init__(self, early_stopping_patience: int = 10, early_stopping_threshold: float = 0.0, lens: Any = None,
                 metric: str | None = None) -> None:
        self.patience, self.threshold, self.lens, self.metric = (early_stopping_patience, early_stopping_threshold,
                                                                  lens, metric)
        NoiseAwareStopper(patience=early_stopping_patience, min_delta=early_stopping_threshold)  # argument checks
        self._stopper: NoiseAwareStopper | None = None
        self.decision: Any = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        name = self.metric or args.metric_for_best_model or "eval_loss"
        name = name if name.startswith("eval_") else f"eval_{name}"
        if self._stopper is None:
            greater = bool(args.greater_is_better) if args.greater_is_better is not None else False
            self._stopper = NoiseAwareStopper(mode="max" if greater else "min", min_delta=self.threshold,
                                              patience=self.patience)
        inner = self.lens.lens if self.lens is not None else None
        if inner is not None and name == "eval_loss" and inner.run.epochs:
            d = self._stopper.judge_run(inner.run)
        elif metrics and name in metrics:
            d = self._stopper.update(len(self._stopper.epochs), float(metrics[name]))
        else:
            return
        self.decision = d
        if d is not None and d.stop:
            control.should_training_stop = True
