"""The Hugging Face ``TrainerCallback`` (:class:`LossLens`) and the noise-aware ``EarlyStoppingCallback``."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainerCallback

from ..diagnose.regime import POLICY_GRADIENT
from ..recording.deprecations import deprecated_report, renamed_data_args
from ..recording.stopping import NoiseAwareStopper
from ..store import Store
from ..torch import LossLens as TorchLossLens
from ._losses import HEADS, default_loss, model_head

__all__ = ["LossLens", "EarlyStoppingCallback", "logits_forward", "trainer_token_scale", "validation_set_name",
           "STATE_FILE"]

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


def trainer_token_scale(trainer: Any, head: str | None, probe: Any, unpack: Any = None) -> float:
    """How much smaller the Trainer's logged training ``loss`` is than the model's per-token loss, from how it
    counts tokens: 1.0 unless it must be corrected.

    Since transformers 4.46 the Trainer divides the summed token loss of an optimizer step by
    ``num_items_in_batch``, the number of labels other than ``-100`` in the step's batches (the fix of
    huggingface/transformers#34242). For a causal language model the loss shifts the labels, so the first label
    of each row is never predicted; transformers counts it all the same unless it recognises the model's loss as
    shifting (``Trainer._loss_shifts_labels``, missing for models whose ``loss_type`` is unset, e.g. GPT-2 in
    transformers 5). Its loss is then the per-token loss times ``Σ predicted / Σ counted``, e.g. 31/32 on rows
    of 32 tokens. That ratio is measured here on up to 256 training samples (the first of the dataset, so the
    same on every machine); the callback divides the logged losses by it, so ``R`` is on the scale of ``C`` and
    ``V``.

    Parameters
    ----------
    trainer : transformers.Trainer or None
    head : str or None
        :func:`losslens.transformers.model_head` of the model.
    probe : losslens.torch Source
        The training samples (``batch(indices)`` gives a collated batch).
    """
    if trainer is None or head != "causal_lm" or getattr(trainer, "compute_loss_func", None) is not None:
        return 1.0
    if not getattr(trainer, "model_accepts_loss_kwargs", False) or getattr(trainer, "_loss_shifts_labels", False):
        return 1.0
    if not (hasattr(trainer, "_get_num_items_in_batch") or hasattr(trainer, "get_batch_samples")):
        return 1.0   # transformers < 4.46: the loss is the mean of the micro-batches' own per-token means
    try:
        batch = probe.batch(np.arange(min(256, len(probe))))
        if not isinstance(batch, dict) or "labels" not in batch or "shift_labels" in batch:
            return 1.0
        labels = batch["labels"]
        counted, predicted = int(labels.ne(-100).sum()), int(labels[..., 1:].ne(-100).sum())
    except Exception:   # an unusual batch: no correction rather than a guess
        return 1.0
    return predicted / counted if counted and predicted else 1.0


def validation_set_name(names: list[str], metric_for_best_model: str | None) -> str | None:
    """Which of several eval datasets (``Trainer(eval_dataset={name: dataset, ...})``) the callback measures as
    ``V`` when no ``val_data`` is given: the one ``metric_for_best_model`` names (``"eval_<name>_loss"``,
    ``"<name>_loss"``, ``"eval_<name>_accuracy"``, ...; the longest matching name wins), else the first (the
    Trainer evaluates and logs them in this order). None without names."""
    if not names:
        return None
    metric = str(metric_for_best_model or "")
    metric = metric[len("eval_"):] if metric.startswith("eval_") else metric
    named = [n for n in names if metric.startswith(f"{n}_")]
    return max(named, key=len) if named else names[0]


def _padding_free(data: Any) -> bool:
    """Whether ``data`` is a DataLoader whose collator flattens a batch into one row (``padding_free``, as TRL's
    ``DataCollatorForLanguageModeling`` with packing), possibly inside the Trainer's column-removing wrapper."""
    coll = getattr(data, "collate_fn", None)
    coll = getattr(coll, "data_collator", coll)
    return getattr(coll, "padding_free", False) is True


def _with_collator(data: Any, collate: Any) -> Any:
    """A map-style dataset as a DataLoader with the Trainer's ``data_collator`` (read by the recorder's sources);
    DataLoaders and None as they are."""
    if data is None or isinstance(data, torch.utils.data.DataLoader) or not hasattr(data, "__getitem__"):
        return data
    return torch.utils.data.DataLoader(data, batch_size=1, collate_fn=collate)


def _has_labels(data: Any, head: str | None = None) -> bool:
    """Whether the first collated items of ``data`` (a DataLoader or dataset) carry a target the default unpacking
    finds (a dict with one of ``TARGET_KEYS``, or not a dict at all) that can be the model's labels: for a token
    head (any of :data:`HEADS` but ``sequence_classification``, whose loss is over tokens) a target with one value
    per row, such as KTO's desirable/undesirable ``label``, is not. A dataset that cannot be read counts as
    labelled, so the recorder's own check names the problem."""
    from ..torch._data import TARGET_KEYS, Source

    try:
        src = Source(data, "train_data")
        batch = src.batch(np.arange(min(2, len(src))))
    except Exception:
        return True
    if isinstance(batch, (list, tuple)) and batch and all(isinstance(b, dict) for b in batch):
        return False   # raw examples, which the trainer prepares itself (TRL's GRPO and RLOO: prompts to generate)
    if not isinstance(batch, dict):
        return True
    key = next((k for k in TARGET_KEYS if k in batch), None)
    if key is None:
        return False
    target = batch[key]
    token_head = head in HEADS and head != "sequence_classification"
    return not (token_head and isinstance(target, torch.Tensor) and target.ndim < 2)


def _with_labels(batch: Any) -> tuple[Any, Any]:
    """``(batch, batch["labels"])``: an encoder-decoder model is called with its labels, from which it builds the
    decoder's inputs (``shift_tokens_right``); only its logits are read."""
    if not isinstance(batch, dict) or "labels" not in batch:
        raise TypeError("unpack: an encoder-decoder model needs dict batches with 'labels'")
    return batch, batch["labels"]


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
        ``"labels"`` entry, as the Trainer's), collated by the Trainer's ``data_collator``. None: the Trainer's
        training ``DataLoader`` (its dataset and data collator) at ``on_train_begin``.
        (Formerly ``probe``.)
    val_data : dataset, DataLoader or None
        The validation set; None: the Trainer's evaluation ``DataLoader`` of its ``eval_dataset``; with several
        (a dict), of the one ``metric_for_best_model`` names, else the first (:func:`validation_set_name`; the
        choice is in ``run.meta["validation_set"]``); without an eval dataset, no ``V``. (Formerly ``val``.)
    loss_fn : callable, optional
        ``loss_fn(logits, labels) -> scalar tensor``. Default: the loss the model computes itself
        (:func:`losslens.transformers.default_loss`): for causal, sequence-to-sequence and masked language
        models and token classification the token cross-entropy, recorded per sample with each sample's
        counted tokens as its weight, so every mean is per token as the model's ``loss`` and the Trainer's
        ``eval_loss``; for sequence classification the loss of ``config.problem_type``. Another head raises
        ``ValueError`` at ``on_train_begin``, before the first step.
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
        if "seed" in lens_kwargs:
            raise TypeError("seed: not an argument of LossLens; the Trainer's args.seed is recorded "
                            "(probe_seed= seeds the probe set)")
        self.loss_fn = loss_fn
        self.log_metrics = bool(lens_kwargs.pop("log_metrics", True))
        self._trainer: Any = None
        self._probe, self._val = train_data, val_data
        self._kwargs = dict(run=run, store=store, **lens_kwargs)
        self.lens: TorchLossLens | None = None
        self._last_step = 0
        self._positions: list[float] = []
        self._spans: list[float] = []
        self._scale = 1.0
        self._eval_step = -1

    @property
    def run(self) -> Any:
        return self.lens.run if self.lens is not None else None

    # ---------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.lens is not None:
            return
        if model is None:
            raise ValueError("LossLens: the Trainer passed no model to on_train_begin")
        probe = self._probe if self._probe is not None else kwargs.get("train_dataloader")
        head = model_head(model)
        own_loss = self._probe is None and self.loss_fn is None and "unpack" not in self._kwargs \
            and not _has_labels(probe, head)
        val = self._val if self._val is not None else kwargs.get("eval_dataloader")
        trainer = _calling_trainer()
        if trainer is not None and getattr(trainer, "data_collator", None) is not None:
            # datasets given without a collator are collated as the Trainer collates (padding, masking)
            probe, val = (_with_collator(d, trainer.data_collator) for d in (probe, val))
        val_name = None
        if val is None and trainer is not None and getattr(trainer, "eval_dataset", None) is not None:
            sets = trainer.eval_dataset
            try:
                if isinstance(sets, dict):   # several eval sets: V is the one the best model is chosen by
                    val_name = validation_set_name(list(sets), args.metric_for_best_model)
                    val = trainer.get_eval_dataloader(sets[val_name]) if val_name is not None else None
                else:
                    val = trainer.get_eval_dataloader()
            except Exception:   # no usable eval set: the run is recorded without V
                val, val_name = None, None
        if probe is None:
            raise ValueError("train_data: none given and the Trainer has no training DataLoader yet; "
                             "pass train_data=train_dataset to LossLens")
        if own_loss:
            # the trainer's batches have no labels for the model: its loss is its own objective (TRL's DPO, KTO,
            # reward modelling), not the model's loss on labels, which the probes would measure. No probes.
            probe = val = None
        if self.loss_fn is not None:
            loss_fn = self.loss_fn
        elif own_loss:   # never called: no probe or validation pass runs; a model of any head records
            loss_fn = torch.nn.functional.cross_entropy
        else:
            loss_fn = default_loss(model)   # ValueError, before the first step, for a head it does not know
        import transformers

        kw = dict(self._kwargs)
        meta = {"framework": "transformers", "transformers_version": transformers.__version__,
                "reported_loss_kind": "window_mean", "logging_steps": args.logging_steps,
                "gradient_accumulation_steps": args.gradient_accumulation_steps}
        if own_loss and getattr(trainer, "reward_funcs", None):
            # an online RL trainer (GRPO, RLOO): its loss is a policy-gradient surrogate (regime.surrogate_loss)
            meta["objective"], meta["trainer"] = POLICY_GRADIENT, type(trainer).__name__
            meta["probes_off_reason"] = (
                f"{type(trainer).__name__} generates its own completions and optimises a policy-gradient surrogate; "
                "its batches are prompts without labels, so there is no per-sample loss to probe. R and V are the "
                "surrogate as logged (train and eval); their difference is not a generalization gap.")
        elif own_loss:
            name = type(trainer).__name__ if trainer is not None else "the trainer"
            meta["probes_off_reason"] = (
                f"{name}'s batches carry no labels for the model's own loss: it optimises its own objective (a "
                "preference loss such as DPO's or KTO's, a reward model's pairwise loss), not the model's loss on "
                "labels. R is that objective as logged and V the trainer's eval_loss "
                "of it; their difference is the generalization gap of the objective plus the within-epoch drift, "
                "but without per-sample losses it cannot be split into timing, dropout and generalization. Pass "
                "loss_fn= and train_data= with labels to measure a language-model loss as well.")
        if val_name is not None and val is not None:
            meta["validation_set"] = f"eval_dataset[{val_name!r}]"
        meta.update(kw.pop("meta", None) or {})
        kw.setdefault("forward", logits_forward)
        if head is not None:
            meta["head"] = head
        if head == "seq2seq_lm":   # the decoder's inputs are the labels shifted right, built by the model itself
            kw.setdefault("unpack", _with_labels)
        if "train" in kw:
            kw["train_augmented"] = renamed_data_args("LossLens", {"train": kw.pop("train")},
                                                      train_augmented=kw.get("train_augmented"))[0]
        if _padding_free(probe):
            # a padding-free collator (TRL's packing) joins a batch's rows into one: one row per forward keeps
            # one loss per sample (language models have no batch statistics for the batch size to change)
            kw.setdefault("eval_batch_size", 1)
            kw.setdefault("train_batch_size", 1)
            meta["padding_free"] = True
        # T runs in batches of the per-device training batch size (batch-norm statistics depend on it)
        kw.setdefault("train_batch_size", int(args.per_device_train_batch_size))
        if state.global_step > 0 and "resume" not in kw:   # resumed from a checkpoint: continue its stored run
            kw["resume"] = _read_state(_checkpoint_dir(args, state.global_step))
        self.lens = TorchLossLens(model, loss_fn, probe, val, optimizer=kwargs.get("optimizer"), seed=args.seed,
                                  meta=meta, **kw)
        self.lens._live_wanted = self.log_metrics
        self._scale = trainer_token_scale(trainer, head, self.lens._probe)
        if self._scale != 1.0:
            self.lens.run.meta["reported_loss_token_scale"] = self._scale
        self._trainer = trainer if self.log_metrics else None
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
        # the Trainer's count of tokens includes each row's unpredicted first label: rescaled to the model's
        self.lens.step(float(logs["loss"]) / self._scale, batch_size=max(1, samples))

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if self.lens is None:
            return  # before training
        mets = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not self._spans:
            # no new window since the last evaluation: another of several eval datasets (eval_<name>_loss) at the
            # same step goes into the same recorded epoch
            if state.global_step == self._eval_step:
                self.lens._rec.add_metrics({k: float(v) for k, v in mets.items()})
            return
        self._eval_step = state.global_step
        self.lens.end_epoch(mets, position=state.epoch, step_positions=np.asarray(self._positions),
                            step_spans=np.asarray(self._spans), val_loss=mets.get("eval_loss"))
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
