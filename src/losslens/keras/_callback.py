"""The Keras callback :class:`LossLens`: a backend over :mod:`losslens.recording`."""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from ..diagnose.live import LiveValues
from ..meta import FrameworkInfo, LossInfo, ProbeInfo, RunInfo, SplitInfo
from ..record import EVAL_CLEAN, TRAIN_MODE, VALIDATION, Epoch, Measurement, Run, Steps
from ..recording import ProbePlan, Recorder, auto_fingerprints, check_common_args, input_duplicates
from ..recording.deprecations import deprecated_report, renamed_data_args
from ..recording.probe import baseline_loss, class_strata, default_eval_batch_size
from ..recording.recorder import per_sample_check
from ..sinks import as_sinks, write_live
from ._data import (
    _as_numpy,
    _fit_locals,
    _indexable,
    _input_bytes,
    _loss_kind,
    _loss_name,
    _n_samples,
    _take,
    _to_tensors,
    layer_kinds,
    per_sample_loss,
    resolve_data,
    tracker_steps,
)
from ._guard import _StateGuard

__all__ = ["LossLens"]


# ---------------------------------------------------------------------------------------------
# the callback
# ---------------------------------------------------------------------------------------------
class LossLens(keras.callbacks.Callback):
    """Measure a Keras ``fit`` run with the losslens protocol and store it.

    Place it **before** any callback that should see its numbers
    (``EarlyStopping``, ``ModelCheckpoint``, ``CSVLogger``, ``TensorBoard``,
    ``ReduceLROnPlateau``): Keras calls callbacks in list order with the same
    ``logs`` dict, and ``History`` always comes last.

    Parameters
    ----------
    train_data : tuple (x, y), keras.utils.PyDataset or None
        Training data to draw the probe set from. The probe is a fixed, seeded
        random subset of these samples, the same every epoch. None: the
        training data passed to ``fit`` (NumPy/JAX/torch arrays or a
        ``PyDataset``; with ``validation_split`` only the training part). If the
        given arrays are the full arrays that ``fit`` split with
        ``validation_split``, the validation tail is removed. Inputs are used as
        they are (clean): pass un-augmented data. (Formerly ``probe``, a deprecated alias.)
    val_data : tuple (x, y), keras.utils.PyDataset or None
        Validation data for ``V``. None: the ``validation_data`` (or
        ``validation_split`` part) of ``fit``; no validation -> ``V`` is not measured.
        (Formerly ``validation``.)
    run : str
        Name of the run in the store.
    store : str, os.PathLike or None
        SQLite store file (created if missing); None keeps the run in memory only
        (:attr:`run`).
    probe_size : "auto", "all", "timed", int or None
        Number of probe samples. ``"auto"`` (default; None means the same):
        ``min(validation size (10 000 without validation), 10 000, training size,
        the cost budget counted from sample counts)``, at least 200 (or the whole
        cap if smaller), fixed at the end of the first epoch (see Notes).
        ``"all"``: every training sample; an int: that many samples (at most
        the training size); 0: no probe passes (only ``R``, ``Ω`` and ``V``). ``"all"`` and an int override the budget.
        ``"timed"``: the budget in wall time from a timed pilot pass (depends on
        machine load, so not reproducible across machines).
    probe_budget : float
        With ``probe_size="auto"``: the fraction of an epoch's training compute
        that the probe passes (``T`` and ``C``) may cost, counted in forward
        passes (default 0.03, as in :mod:`losslens.torch`); with ``"timed"``, of
        the first epoch's training wall time. The validation pass is not part of it.
    probe_seed : int
        Seed of the probe subset (``numpy.random.default_rng(probe_seed)
        .permutation(N)[:n]``, sorted) and of the RNG inside the probe passes.
    batch_size : int or None
        Batch size of the train-mode probe pass ``T``; None: the ``fit`` batch
        size (default 32), because batch-norm batch statistics depend on it.
    eval_batch_size : int or None
        Batch size of the eval-mode passes (``C``, ``V``); None: the training batch size, or more samples while
        their inputs fit in 32 KiB, at most 2048 (:func:`losslens.recording.probe.default_eval_batch_size`, as in
        :mod:`losslens.torch`).
    loss_fn : callable or None
        ``loss_fn(y_true, y_pred) -> per-sample losses, shape (batch,)``; None:
        derived from ``model.loss`` with :func:`per_sample_loss`.
    train_mode : bool or "auto"
        Measure ``T``. "auto": only when the model has a layer that behaves
        differently in training (dropout/noise, batch norm, recurrent dropout,
        augmentation layers, or any non-Keras layer).
    experiment : str or None
        Group name stored with the run.
    seed : int or None
        The user's seed, recorded in the metadata.
    check_duplicates : bool
        At the start of training, look for validation inputs that occur exactly in
        the training inputs (:func:`losslens.recording.duplicates.input_duplicates`: one hashing
        pass over both sets, no model compute) and store the counts and up to 100
        ``[train_index, val_index]`` pairs in ``run.meta["split_exact_duplicates"]``
        (indices into the training part, i.e. the ``train_data=`` arrays or ``fit``'s
        ``x``, and into the validation set); the diagnosis cites them. Runs when
        both are in-memory arrays (any Keras input structure); a failure is
        recorded as ``{"error": ...}``, never raised. Default True.
    resume : dict or None
        :meth:`state_dict` of the callback of an earlier process (saved beside the model checkpoint): with
        ``fit(..., initial_epoch=k)`` the stored run continues at epoch ``k`` (later stored epochs are dropped
        and recorded again) instead of a new run starting at epoch 0.
    sinks : object or list, optional
        Trackers that receive each epoch's measurements, decomposition terms and headline verdict
        (:mod:`losslens.sinks`): a TensorBoard ``SummaryWriter``, an MLflow run, a W&B run or a sink object.
    log_metrics : bool
        Put the same values into the epoch's ``logs`` (default True), so Keras's own callbacks (``CSVLogger``,
        ``TensorBoard``, ``EarlyStopping``, W&B's and MLflow's Keras callbacks) receive them: the measurements
        under :data:`losslens.record.LOGGED_NAMES`, ``data_loss`` and ``penalty_loss``, each term and standard
        error under the names of :mod:`losslens.diagnose.live`, and ``verdict_code``. False: none of them.

    Attributes
    ----------
    run : losslens.record.Run
        The run being recorded (in memory; also in the store).
    probe_indices : numpy.ndarray or None
        Sorted indices of the probe samples in the training data; with
        ``probe_size="auto"`` known from the end of the first epoch.

    Notes
    -----
    **Probe size and cost.** With ``probe_size="auto"`` the size is fixed at the
    end of the first epoch, with the rule of :class:`losslens.torch.LossLens`
    (:func:`losslens.recording.probe.budget_probe_size`): the ``S`` training samples of
    the first epoch cost ``3 S`` forward passes and the probe passes ``p n``
    (``p`` = 1 for ``C``, 2 when ``T`` runs), so ``n_budget = probe_budget * 3 S / p``;
    then ``n = min(cap, max(min(200, cap), n_budget))`` with ``cap = min(validation
    size or 10 000, 10 000, training size)``. No wall time enters, so the same seed
    gives the same probe on any machine. ``run.meta`` records
    ``probe_size``, ``probe_budget``, ``probe_size_reason`` and
    ``probe_fingerprint`` (and ``probe_cost_per_sample_s`` with ``"timed"``); the standard errors of the
    recorded measurements say what precision the chosen size bought. The
    validation pass ``V`` is **not** part of the budget: Keras's ``val_loss``
    contains the penalty and gives no per-sample losses, so the callback runs its
    own inference pass over the whole validation set every epoch, costing about
    as much as Keras's validation evaluation (which is why it is never subsampled:
    ``V`` must be the same set as Keras's ``val_loss``).

    Keys added to ``logs`` at each epoch end (so ``History``, ``CSVLogger``,
    ``EarlyStopping`` see them): ``eval_train_loss`` (C), ``train_mode_loss``
    (T, when measured), ``data_loss`` (R), ``penalty_loss`` (Ω) and
    ``losslens_val_loss`` (V, data part).

    Per-step losses are recovered exactly from Keras's loss tracker (a
    ``keras.metrics.Mean`` weighted by batch size): its running ``total`` and
    ``count`` are copied on the device in ``on_train_batch_begin`` and read once
    per epoch, so the callback adds no host synchronisation per batch and
    does not override ``on_train_batch_end`` (Keras keeps its asynchronous
    batch-end dispatch). Step ``k``'s loss is
    ``(total_k − total_{k−1}) / (count_k − count_{k−1})``. The penalty of each
    step is ``sum(model.losses)`` as that step computed it: the weight
    regularizers at the weights it used (read when the batch begins) plus the
    activity-regularizer and ``add_loss`` terms of its forward pass (read before
    the next one). On the JAX backend both are per epoch (see the module notes).

    Calling ``fit`` again with the same callback records a new run.

    Raises
    ------
    LossLensError
        At ``on_train_begin`` when the training or validation data cannot be
        indexed (``tf.data``, generators): pass ``train_data=(x, y)`` (and
        ``val_data=(x_val, y_val)``) as arrays.
    """

    def __init__(
        self,
        train_data: Any = None,
        *,
        val_data: Any = None,
        run: str = "keras",
        store: Any = "losslens.db",
        probe_size: int | str | None = "auto",
        probe_budget: float = 0.03,
        probe_seed: int = 0,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        train_mode: bool | str = "auto",
        experiment: str | None = None,
        seed: int | None = None,
        check_duplicates: bool = True,
        resume: dict[str, Any] | None = None,
        sinks: Any = None,
        log_metrics: bool = True,
        **deprecated: Any,
    ) -> None:
        super().__init__()
        self._sinks = as_sinks(sinks)
        self.log_metrics = bool(log_metrics)
        #: The values of the last epoch end (:class:`losslens.diagnose.live.LiveValues`) when sinks or logs get them.
        self.live: LiveValues | None = None
        train_data, val_data = renamed_data_args("LossLens", deprecated, train_data=train_data, val_data=val_data)
        probe_size = check_common_args(probe_size=probe_size, probe_budget=probe_budget, probe_seed=probe_seed,
                                       eval_batch_size=eval_batch_size)
        if train_mode not in (True, False, "auto"):
            raise ValueError(f"train_mode: expected True, False or 'auto', got {train_mode!r}")
        self._probe_arg = train_data
        self._val_arg = val_data
        self.run_name = run
        self.store_path = store
        self.probe_size = probe_size
        self.probe_budget = float(probe_budget)
        self.check_duplicates = bool(check_duplicates)
        self.probe_seed = int(probe_seed)
        self._bs_arg = batch_size
        self._eval_bs_arg = eval_batch_size
        self._loss_fn_arg = loss_fn
        self._train_mode_arg = train_mode
        self.experiment = experiment
        self.seed = seed
        self._resume = resume
        self.run: Run | None = None
        self._rec: Recorder | None = None
        self._in_epoch = False
        self._final = True

    @property
    def probe_indices(self) -> np.ndarray | None:
        """Sorted training-set indices of the probe set (int64), once fixed."""
        return self._plan.indices if getattr(self, "_plan", None) is not None else None

    def state_dict(self) -> dict[str, Any]:
        """``{"run_id", "epochs"}`` of the stored run (plain numbers): pass it as ``resume=`` to continue it."""
        if self._rec is None:
            raise RuntimeError("LossLens.state_dict(): nothing recorded yet; call model.fit(..., callbacks=[lens])")
        return self._rec.state_dict()

    # -- setup -------------------------------------------------------------------------------
    def _resolve_data(self, fit: dict[str, Any] | None) -> None:
        (px, py), (vx, vy), train_bs = resolve_data(self._probe_arg, self._val_arg, fit or {}, self._bs_arg)
        self.train_size = n_train = _n_samples(px)
        # the training part, until the probe is fixed (content fingerprints, duplicate check, probe subset);
        # NumPy arrays are referenced, not copied
        self._train_full: Any = (_as_numpy(px), _as_numpy(py))   # None once the probe copy is taken
        self.val_size = _n_samples(vx) if vx is not None else 0
        self._vx = _as_numpy(vx) if vx is not None else None
        self._vy = _as_numpy(vy) if vy is not None else None
        self.batch_size = int(train_bs or 32)
        self.eval_batch_size = int(self._eval_bs_arg or default_eval_batch_size(
            self.batch_size, _input_bytes(self._train_full[0]) / max(1, n_train)))
        # probe subset: a seeded permutation's prefix, so every smaller probe is part of a larger one
        self._plan = ProbePlan(self.probe_size, self.probe_budget, self.probe_seed, n_train, self.val_size or None,
                               _class_strata(self._train_full[1]))
        self._px = self._py = None

    def _inspect_layers(self) -> None:
        dropout, bn, aug, custom = layer_kinds(self.model)
        self.dropout_layers, self.batchnorm_layers, self.augmentation_layers = dropout, bn, aug
        self.custom_layers = custom
        if self._train_mode_arg == "auto":
            self.measure_train_mode = bool(dropout or bn or aug or custom)
        else:
            self.measure_train_mode = bool(self._train_mode_arg)

    def _optimizer_meta(self) -> tuple[str | None, float]:
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return None, 0.0
        wd = getattr(opt, "weight_decay", None)
        try:
            wd = float(wd) if wd is not None else 0.0
        except (TypeError, ValueError):
            wd = math.nan
        return type(opt).__name__, wd

    def on_train_begin(self, logs: dict | None = None) -> None:
        # The JAX trainer keeps the model's state outside its variables during an epoch and writes it
        # back only at the epoch end (Keras 3 ``jax_state_sync``): batch hooks would read stale values.
        self._per_step = keras.backend.backend() != "jax"
        fit = _fit_locals(self.model)
        self._resolve_data(fit)
        self._inspect_layers()
        self.sample_weighted = bool(fit and (fit.get("sample_weight") is not None or fit.get("class_weight")))
        if self.sample_weighted:
            warnings.warn("LossLens: fit uses sample_weight/class_weight; Keras's 'loss' (and R) is weighted, the "
                          "probe and validation passes are not", stacklevel=2)
        loss = getattr(self.model, "loss", None)
        self._loss_fn = self._loss_fn_arg or per_sample_loss(loss)
        kind = _loss_kind(loss) if self._loss_fn_arg is None else None
        # Regularized trainable weights: model.losses lists them last (Layer.losses, Keras 3).
        self._n_reg = sum(1 for v in self.model.trainable_weights if getattr(v, "regularizer", None) is not None)
        opt_name, wd = self._optimizer_meta()
        skipped = {"eval_augmented": (
            "Keras augmentation layers run inside the model in training mode only; the train_mode term includes "
            f"them ({', '.join(self.augmentation_layers)})" if self.augmentation_layers else
            "no augmentation measured: the probe inputs are used as given (A = C)")}
        if not self._plan.enabled:
            skipped["eval_clean"] = skipped["train_mode"] = "probe passes disabled (probe_size=0)"
            self.measure_train_mode = False
        elif not self.measure_train_mode:
            skipped["train_mode"] = ("no dropout, noise, batch-norm or augmentation layer" if
                                     self._train_mode_arg == "auto" else "disabled (train_mode=False)")
        if not self.val_size:
            skipped["validation"] = "no validation data"
        # the label prior / target variance of the whole training part (the probe is not fixed yet)
        base = baseline_loss(kind, np.asarray(_as_numpy(keras.tree.flatten(self._train_full[1])[0])))
        meta = RunInfo(
            probe=ProbeInfo(seed=self.probe_seed, eval_batch_size=self.eval_batch_size,
                            budget=self.probe_budget if self.probe_size in ("auto", "timed") else None),
            loss=LossInfo(name=(_loss_name(loss) if self._loss_fn_arg is None
                                else getattr(self._loss_fn_arg, "__name__", "loss_fn")),
                          kind=kind, baseline=base, penalty_source="model.losses", penalty_in_validation=True,
                          reported_kind="epoch_mean"),
            split=SplitInfo(train_size=self.train_size, val_size=self.val_size),
            framework=FrameworkInfo(name="keras", optimizer=opt_name, weight_decay=wd, batch_size=self.batch_size,
                                    seed=self.seed, dropout_layers=self.dropout_layers,
                                    batchnorm_layers=self.batchnorm_layers, skipped=skipped),
            extras={
                "keras_version": keras.__version__,
                "keras_backend": keras.backend.backend(),
                "augmentation_layers": self.augmentation_layers,
                "penalty_measured": ("per step: sum(model.losses) of each training step, batch-size weighted"
                                     if self._per_step else
                                     "per epoch: sum(model.losses) at the end-of-epoch weights (JAX backend)"),
                "step_losses": ("per step, recovered from Keras's loss tracker" if self._per_step else
                                "per epoch only (JAX backend: variables are synchronised at the epoch end)"),
                "penalty_in_validation_note": (
                    "Keras's val_loss includes the penalty sum(model.losses) (regularizers at the end-of-epoch "
                    "weights, activity regularizers and add_loss on the validation batches); losslens's validation "
                    "loss is the data loss only"),
                "sample_weighted": self.sample_weighted,
                "validation_pass": ("the callback's own inference pass over the whole validation set each epoch "
                                    "(per-sample data losses), besides Keras's validation evaluation; not part of "
                                    "probe_budget") if self.val_size else None,
            },
        ).to_meta()
        meta["per_sample_loss_check"] = self._check_per_sample()
        meta.update(self._content_fingerprints())
        if self.check_duplicates and self._vx is not None:
            dup = self._exact_duplicates()
            if dup is not None:
                meta["split_exact_duplicates"] = dup
        resume = self._resume if self._resume and self._resume.get("run_id") is not None else None
        if resume is not None:
            start = fit.get("initial_epoch") if fit else None   # the epoch fit restarts at
            resume = dict(resume, epochs=int(start) if start is not None else resume.get("epochs"))
        self._rec = Recorder(self.run_name, meta, self.experiment, self.store_path, holder="LossLens.run",
                             retry="the next epoch end", resume=resume)
        self._resume = None   # a second fit() with this callback records a new run
        self.run = self._rec.run
        fixed = self._plan.requested()
        if resume is not None and self.run.meta.get("probe_size"):
            self._plan.match_design(self.run.meta)
            fixed = int(self.run.meta["probe_size"]), str(self.run.meta.get("probe_size_reason"))
        if fixed is not None and self._plan.enabled:
            self._fix_probe(*fixed)

    def _exact_duplicates(self) -> dict[str, Any] | None:
        """Exact copies of validation inputs among the training inputs
        (:func:`losslens.recording.duplicates.input_duplicates`, any Keras input structure), None when an input
        is not in-memory arrays, ``{"error": ...}`` when the check fails (training goes on)."""
        tx, vx = self._train_full[0], self._vx
        if not (_indexable(tx) and _indexable(vx)):
            return None
        return input_duplicates(keras.tree.flatten(_as_numpy(tx)), keras.tree.flatten(vx))

    def _content_fingerprints(self) -> dict[str, Any]:
        """Content fingerprints of the training and validation sets (:mod:`losslens.recording.fingerprint`).

        Lets the runs of one experiment be checked for a changed split. Sets that
        are too large to hash cheaply are listed under ``fingerprint_skipped``; a
        failure is recorded, never raised (it must not stop training).
        """
        train = self._train_full
        try:
            val = (self._vx, self._vy) if self._vx is not None else None
            return auto_fingerprints(train=_as_numpy(train), val=val)
        except Exception as exc:  # noqa: BLE001 - optional metadata
            return {"fingerprint_skipped": {"all": f"{type(exc).__name__}: {exc}"}}

    def _check_per_sample(self) -> dict[str, Any]:
        """Compare the mean of the per-sample losses with Keras's compiled loss on one training batch.

        Uses the model's ``compute_loss`` minus ``sum(model.losses)`` (Keras 3) in
        inference mode; the two agree to float32 rounding when the per-sample
        function matches the compiled loss. The result is recorded in the metadata
        (``per_sample_loss_check``) and a mismatch warns.
        """
        n = min(self.train_size, self.eval_batch_size)
        idx = self._plan.first(n)   # the first samples of any probe
        try:
            with _StateGuard(self.model, self.probe_seed):
                xb = _to_tensors(_take(self._train_full[0], idx))
                yb = _to_tensors(_take(self._train_full[1], idx))
                yp = self.model(xb, training=False)
                mine = float(ops.convert_to_numpy(ops.mean(self._loss_fn(yb, yp))))
                total = self.model.compute_loss(x=xb, y=yb, y_pred=yp)
                pen = sum(float(ops.convert_to_numpy(ops.sum(v))) for v in self.model.losses)
                ref = float(ops.convert_to_numpy(total)) - pen
        except Exception as exc:  # noqa: BLE001 - custom compute_loss signatures: record, do not fail
            return {"consistent": None, "error": f"{type(exc).__name__}: {exc}"}
        res = per_sample_check(mine, ref, what=_loss_name(getattr(self.model, "loss", None)), compiled_loss=ref, n=n)
        return res if res is not None else {"consistent": None, "error": "non-finite loss on the checked batch"}

    # -- per step ------------------------------------------------------------------------------
    def _tracker(self) -> Any:
        for m in self.model.metrics:
            if m.name == "loss" and isinstance(m, keras.metrics.Mean):
                return m
        return None

    def _snapshot(self) -> tuple[Any, Any]:
        """Device copies of the loss tracker's (total, count); the penalty parts now in ``model.losses``.

        Returns ``(activity, weights)``: the sum of the ``add_loss``/activity-regularizer
        terms left by the last forward pass, and the sum of the weight regularizers at
        the current weights (device scalars, or None when there are none).
        """
        if self._tracker_obj is not None:
            total, count = self._tracker_obj.variables[:2]
            self._totals.append(ops.copy(total.value))
            self._counts.append(ops.copy(count.value))
        losses = self.model.losses if self._track_penalty else []
        if losses:
            n_act = len(losses) - self._n_reg
            act = ops.stop_gradient(ops.sum(ops.stack([ops.sum(ops.cast(x, "float32")) for x in losses[:n_act]]))) \
                if n_act > 0 else None
            reg = ops.stop_gradient(ops.sum(ops.stack([ops.sum(ops.cast(x, "float32")) for x in losses[n_act:]]))) \
                if self._n_reg else None
        else:
            act = reg = None
        return act, reg

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._in_epoch = True
        self._final = False
        self._tracker_obj = self._tracker()
        self._totals: list[Any] = []
        self._counts: list[Any] = []
        self._weight_pen: list[Any] = []   # weight regularizers at the weights step k uses
        self._act_pen: list[Any] = []      # activity / add_loss terms of step k
        self._step = 0
        # model.losses is walked once per step only while the model has any penalty: regularized weights,
        # or add_loss/activity terms left by the first forward pass (checked at step 1, see on_train_batch_begin).
        self._track_penalty = True
        self._t0 = time.perf_counter()
        self._t_train = math.nan

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if not self._in_epoch:
            return
        if not self._per_step:
            self._step += 1
            return
        if self._step == 0:
            # state after reset_metrics is zero; only the weight penalty of step 0 is needed
            self._weight_pen.append(self._sum_last(self.model.losses, self._n_reg) if self._n_reg else None)
        else:
            if self._step == 1 and not self._n_reg and not self.model.losses:
                self._track_penalty = False   # no regularizer and the first forward pass added no loss
            act, reg = self._snapshot()
            self._act_pen.append(act)
            self._weight_pen.append(reg)
        self._step += 1

    @staticmethod
    def _sum_last(losses: list[Any], n: int) -> Any:
        if not n or not losses:
            return None
        return ops.stop_gradient(ops.sum(ops.stack([ops.sum(ops.cast(x, "float32")) for x in losses[-n:]])))

    def _final_snapshot(self) -> None:
        if self._final or not self._in_epoch:
            return
        if not self._per_step:
            # JAX: one snapshot per epoch; the penalty at the end-of-epoch weights stands for the epoch's
            act, reg = self._snapshot()
            self._act_pen.append(act)
            self._weight_pen.append(reg)
        elif self._step > 0:
            act, _ = self._snapshot()
            self._act_pen.append(act)
        self._final = True
        self._t_train = time.perf_counter() - self._t0

    def on_test_begin(self, logs: dict | None = None) -> None:
        # fit's evaluate() calls on_test_begin before reset_metrics(): the tracker still holds the epoch.
        self._final_snapshot()

    # -- end of epoch ----------------------------------------------------------------------------
    def _passes(self, x: Any, y: Any, training: bool, batch_size: int) -> np.ndarray:
        n = _n_samples(x)
        out = []
        for i in range(0, n, batch_size):
            sl = slice(i, min(i + batch_size, n))
            xb = _to_tensors(keras.tree.map_structure(lambda a: a[sl], x))
            yb = _to_tensors(keras.tree.map_structure(lambda a: a[sl], y))
            yp = self.model(xb, training=training)
            out.append(ops.convert_to_numpy(ops.cast(self._loss_fn(yb, yp), "float32")))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def _eval_passes(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Inference-mode per-sample losses of the probe set (C) and the validation set (V).

        Both sets go through one sequence of forward calls when their arrays can be
        concatenated: in inference mode a sample's output does not depend on the rest
        of its batch, and small sets then cost one call instead of two.
        """
        n_p = _n_samples(self._px)
        if self._vx is None:
            return self._passes(self._px, self._py, False, self.eval_batch_size), None
        try:
            cat = lambda a, b: keras.tree.map_structure(lambda u, v: np.concatenate([u, v]), a, b)  # noqa: E731
            x, y = cat(self._px, self._vx), cat(self._py, self._vy)
        except (ValueError, TypeError):
            return (self._passes(self._px, self._py, False, self.eval_batch_size),
                    self._passes(self._vx, self._vy, False, self.eval_batch_size))
        vals = self._passes(x, y, False, self.eval_batch_size)
        return vals[:n_p], vals[n_p:]

    def _steps(self, epoch: int) -> tuple[Steps, float, float, int]:
        """Per-step losses (data part), penalties; R, Ω and the sample count of the epoch."""
        if self._tracker_obj is None or not self._totals:
            return Steps(), math.nan, 0.0, 0
        return tracker_steps(epoch, self._totals, self._counts, self._weight_pen, self._act_pen, self._per_step,
                             self._step)

    # -- probe size ----------------------------------------------------------------------------------
    def _fix_probe(self, n: int, reason: str) -> None:
        """Fix the probe set (:meth:`losslens.recording.ProbePlan.fix`) and keep a copy of its samples only."""
        assert self.run is not None and self._rec is not None
        idx = self._plan.fix(n, reason, self.run.meta)
        px, py = self._train_full
        self._px, self._py = _take(px, idx), _take(py, idx)
        self._train_full = None   # the probe copy is all the callback keeps of the training data
        self._rec.sync_meta()

    def _choose_probe(self, epoch_seconds: float, samples_per_epoch: float) -> None:
        """Fix the size of an ``"auto"`` (or ``"timed"``) probe (:meth:`losslens.recording.ProbePlan.decide`)."""
        assert self.run is not None and self._rec is not None

        def time_pilot(pilot: np.ndarray) -> float:
            px, py = _take(self._train_full[0], pilot), _take(self._train_full[1], pilot)
            t0 = time.perf_counter()
            if self.measure_train_mode:
                with _StateGuard(self.model, self.probe_seed):
                    self._passes(px, py, True, min(self.batch_size, len(pilot)))
            with _StateGuard(self.model, self.probe_seed):
                self._passes(px, py, False, self.eval_batch_size)
            return time.perf_counter() - t0

        n, reason = self._plan.decide(samples_per_epoch=samples_per_epoch, passes=1 + int(self.measure_train_mode),
                                      store=self._rec.store, experiment=self.experiment, run_id=self.run.id,
                                      epoch_seconds=epoch_seconds, time_pilot=time_pilot, meta=self.run.meta)
        self._fix_probe(n, reason)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.run is None:
            return
        self._final_snapshot()
        self._in_epoch = False
        steps, r, omega, n_samples = self._steps(epoch)
        if not math.isfinite(r) and logs and "loss" in logs:
            r = float(logs["loss"]) - omega
        probes_on = self._plan.enabled
        if self._px is None and probes_on:
            samples = n_samples if n_samples > 0 else self.train_size
            self._choose_probe(getattr(self, "_t_train", math.nan), float(samples))
        t0 = time.perf_counter()
        ms: dict[str, Measurement] = {}
        assert self._rec is not None
        try:
            if not probes_on:   # probe_size=0: the validation pass only
                if self._vx is not None:
                    with _StateGuard(self.model, self.probe_seed + epoch):
                        ms[VALIDATION] = Measurement.from_values(VALIDATION, self._passes(
                            self._vx, self._vy, False, self.eval_batch_size))
            elif self.measure_train_mode:
                # its own guard: the batch-norm moving statistics it updates are restored before the eval passes
                with _StateGuard(self.model, self.probe_seed + epoch):
                    ms[TRAIN_MODE] = Measurement.from_values(TRAIN_MODE, self._passes(
                        self._px, self._py, True, self.batch_size))
            if probes_on:
                with _StateGuard(self.model, self.probe_seed + epoch):
                    c_vals, v_vals = self._eval_passes()
                ms[EVAL_CLEAN] = Measurement.from_values(EVAL_CLEAN, c_vals)
                if v_vals is not None:
                    ms[VALIDATION] = Measurement.from_values(VALIDATION, v_vals)
        except Exception as exc:  # losslens never stops training because its own measurement failed
            ms = {}
            self._rec.measurement_failed(int(epoch), exc)
        probe_s = time.perf_counter() - t0
        metrics = {}
        for key, val in (logs or {}).items():
            try:
                metrics[key] = float(val)
            except (TypeError, ValueError):
                pass
        ep = Epoch(index=int(epoch), train_loss=r, penalty=omega, n_steps=len(steps), n_samples=n_samples,
                   measurements=ms, metrics=metrics, seconds=self._t_train, probe_seconds=probe_s)
        self._rec.commit(ep, steps)
        to_logs = self.log_metrics and logs is not None
        self.live = write_live(self.run, self._sinks, always=to_logs)
        if to_logs and logs is not None:
            if EVAL_CLEAN in ms:
                logs["data_loss"] = r
                logs["penalty_loss"] = omega
            if self.live is not None:
                logs.update(self.live.values)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._rec is None or self.run is None:
            return
        self._train_full = None
        self._rec.finish()

    # -- results -----------------------------------------------------------------------------------
    def diagnose(self) -> Any:
        """Deprecated: use ``Report.from_run(callback)`` (:class:`losslens.report.Report`); removed in 0.3.

        Raises
        ------
        RuntimeError
            If called before ``fit`` recorded an epoch.
        """
        if self.run is None or not self.run.epochs:
            raise RuntimeError("LossLens.diagnose(): no epoch recorded yet; call model.fit(..., callbacks=[lens])")
        return deprecated_report(self.run, "LossLens.diagnose()")


def _class_strata(y: Any) -> np.ndarray | None:
    """Class codes of the (first) training target for a stratified probe, or None (a simple random probe)."""
    try:
        return class_strata(_as_numpy(keras.tree.flatten(y)[0]))
    except Exception:  # noqa: BLE001 - a target losslens cannot read as labels: a simple random probe
        return None
