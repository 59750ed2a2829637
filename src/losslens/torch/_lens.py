"""The PyTorch recorder :class:`LossLens`: a backend over :mod:`losslens.recording`.

This module runs the forward passes (eval and train mode, RNG and buffers guarded by
:class:`~losslens.torch._guard.Protect`), reads the step losses from the device once per epoch, and hands
everything else (the run and its store, the probe plan, ``R``/``Ω``, the per-sample check) to the recording core.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import Counter
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..diagnose.live import LiveValues
from ..meta import FrameworkInfo, LossInfo, ProbeInfo, RunInfo, SplitInfo
from ..record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Epoch, Measurement, Run, Steps
from ..recording import ProbePlan, Recorder, auto_fingerprints, check_common_args, epoch_means, input_duplicates
from ..recording.deprecations import deprecated_report, renamed_data_args
from ..recording.probe import baseline_loss
from ..recording.stopping import NoiseAwareStopper
from ..sinks import as_sinks, write_live
from ..store import Store
from ._data import (
    LOSS_KINDS,
    Source,
    as_measurement,
    check_torch_args,
    default_forward,
    default_unpack,
    loss_name,
    stack_cpu,
    train_mode_layers,
    weight_decay_of,
)
from ._dist import broadcast_decision, gather_steps, is_sharded, measure_distributed
from ._guard import Protect
from ._passes import Passes

__all__ = ["LossLens", "Lens"]



class LossLens:
    """Record a PyTorch training loop: step losses, end-of-epoch probes, validation.

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained.
    loss_fn : callable
        ``loss_fn(outputs, target) -> scalar tensor``, the data loss of the loop
        (any ``torch.nn`` loss or functional; per-sample losses are derived from
        it, see :func:`per_sample_loss_fn`).
    train_data : dataset or None
        The training set with eval (clean) transforms: a tuple ``(X, y)`` of
        tensors, a ``TensorDataset``, a map-style ``Dataset`` or a ``DataLoader``
        (its ``dataset`` and ``collate_fn`` are used; it is never iterated).
        The probe set is drawn from it. None disables the probe passes.
        (Formerly ``probe=``, a deprecated alias.)
    val_data : dataset, optional
        The validation set (same types). Without it no ``V`` is measured.
        (Formerly ``val=``.)
    train_augmented : dataset, optional
        The same training samples, in the same order, with the training
        (augmentation) transforms. Enables the ``A`` pass and feeds ``T``.
        (Formerly ``train=``.)
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
        forward passes (:func:`losslens.recording.probe.budget_probe_size`); with
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
        Batch size of the eval-mode passes; None: on CPU the batch size of ``val_data`` when it is a
        ``DataLoader`` (the user's own validation batches: see :meth:`Passes.default_eval_batch_size` for the
        measured reason), otherwise the training batch size, or more samples while their inputs fit in 32 KiB,
        at most 2048 (:func:`losslens.recording.probe.default_eval_batch_size`: larger
        batches cost more per sample on CPU); 8192 on CUDA, halved on CUDA out-of-memory errors.
    train_batch_size : int, optional
        Batch size of the train-mode probe pass (batch-norm batch statistics depend on it); default: the most
        common ``batch_size`` given to :meth:`step` (without one, training-set size / steps per epoch). A model
        made only of ``torch.nn`` built-ins without batch norm runs it in eval-sized batches instead (a sample's
        train-mode loss does not depend on its batch there).
    meta : dict, optional
        Extra metadata stored with the run (it overrides the keys losslens sets).
    fingerprint_split : bool
        Store order-independent content fingerprints and per-sample hashes of the
        training (``train_data``) and validation sets in ``run.meta``
        (:func:`losslens.recording.fingerprint.auto_fingerprints`: in-memory
        tensors/arrays, ``TensorDataset``, ``Subset``, folder datasets' sample ids;
        other datasets are skipped, not read), so runs of one experiment can be
        checked for a changed split. Default True.
    check_duplicates : bool
        Once, at construction, look for validation inputs that occur exactly in the
        training (``train_data``) inputs (:func:`losslens.recording.duplicates.input_duplicates`: one pass
        of hashing, no model compute) and store the counts and up to 100 index pairs
        in ``run.meta["split_exact_duplicates"]``; the diagnosis cites them. Runs when
        both are in-memory tensor data (tuples of tensors or ``TensorDataset``) with a
        single input tensor; other data are not read. Default True.
    resume : dict, optional
        :meth:`state_dict` of the recorder of an earlier process: the stored run is continued (the epochs
        recorded after that state are dropped and recorded again as training repeats them) instead of a new
        run starting at epoch 0. The probe set is the same (same seed and size).
    distributed : bool or None
        None (default): shard the passes and gather the results when a
        ``torch.distributed`` process group is initialised with world size > 1;
        False: never (each rank records alone); True: require an initialised
        process group (``RuntimeError`` otherwise).
    sinks : object or list, optional
        Trackers that receive each epoch's measurements, decomposition terms (with standard errors) and the
        headline verdict right after the epoch is committed (:mod:`losslens.sinks`): a TensorBoard
        ``SummaryWriter``, an MLflow run (or the ``mlflow`` module: its active run), a W&B run, or a sink object.
        Written by rank 0 only; a failing sink warns and is dropped, training goes on.

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
    **Probe size and cost.** With ``probe_size="auto"`` the size is fixed at the first :meth:`end_epoch` from
    counts only (:meth:`losslens.recording.ProbePlan.decide`): the first epoch's ``S`` training samples cost
    ``3 S`` forward passes, the ``p`` probe passes ``p n``, so ``n = min(cap, max(min(200, cap), probe_budget *
    3 S / p))`` with ``cap = min(len(val) or 10 000, 10 000, N)``: the same probe on any machine, under any load.
    ``run.info.probe`` records the size, the budget and the reason.

    **Passes.** C and V run in eval mode in large batches. T runs in train mode
    in batches of the training batch size (the most common ``batch_size`` given
    to :meth:`step`; without one, ``N / steps per epoch``), because batch-norm
    batch statistics depend on it (in eval-sized batches for a model of ``torch.nn``
    built-ins without batch norm), on the sorted probe indices; each augmented
    batch is read once and fed to T and A, so the two are paired. The module
    flags of training (read at the first :meth:`step` of each epoch, so frozen
    submodules stay frozen) are used for T. T is skipped when the model has no
    dropout (``p > 0``) or batch-norm module; dropout applied functionally inside
    ``forward`` (``F.dropout``) is not detected. A is skipped without ``train_augmented``.
    Skipped passes are listed in ``run.meta["skipped"]``.

    **Invariants.** The passes run without gradients inside :class:`~losslens.torch._guard.Protect` (forked and
    seeded RNGs, every module flag and buffer restored), so parameters after training are bit-identical with the
    recorder on or off (tests/conformance.py). The user's DataLoader is never iterated.

    **Metadata**: ``run.info`` (:class:`losslens.meta.RunInfo`) and, in ``run.info.extras``, ``torch_version``.

    **torch.distributed.** Under an initialised process group with more than one rank, every rank constructs
    its own recorder with the same arguments; the passes are sharded and gathered so the measurements equal a
    one-process run's, and rank 0 alone writes the store (:mod:`losslens.torch._dist`, docs/distributed.md).

    Not supported yet: iterable-style datasets.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        train_data: Any = None,
        val_data: Any = None,
        train_augmented: Any = None,
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
        train_batch_size: int | None = None,
        meta: dict[str, Any] | None = None,
        fingerprint_split: bool = True,
        check_duplicates: bool = True,
        resume: dict[str, Any] | None = None,
        distributed: bool | None = None,
        sinks: Any = None,
        **deprecated: Any,
    ) -> None:
        train_data, val_data, train_augmented = renamed_data_args(
            "LossLens", deprecated, train_data=train_data, val_data=val_data, train_augmented=train_augmented)
        probe_size = check_torch_args(model=model, loss_fn=loss_fn, run=run, penalty=penalty, optimizer=optimizer,
                                      unpack=unpack, forward=forward, train_batch_size=train_batch_size,
                                      common=check_common_args(probe_size=probe_size, probe_budget=probe_budget,
                                                               probe_seed=probe_seed,
                                                               eval_batch_size=eval_batch_size, meta=meta))
        self._sinks = as_sinks(sinks)
        #: The values written to the sinks at the last epoch end (:class:`losslens.diagnose.live.LiveValues`),
        #: also computed without sinks when an adapter asks for them (``_live_wanted``) to put in its logs.
        self.live: LiveValues | None = None
        self._live_wanted = False
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
        user_eval_bs = (int(val_data.batch_size)           # the user's own validation batches (CPU)
                        if isinstance(val_data, torch.utils.data.DataLoader) and val_data.batch_size else None)
        self._fw = Passes(model, loss_fn, unpack or default_unpack, forward or default_forward,
                          int(eval_batch_size) if eval_batch_size is not None else None, user_eval_bs)
        # FSDP (fully_shard) gathers parameters inside every forward: the ranks' passes must match in number
        self._fw.pad_forwards = self._dist and is_sharded(model)
        self._probe = Source(train_data, "train_data") if train_data is not None else None
        self._train = Source(train_augmented, "train_augmented") if train_augmented is not None else None
        self._val = Source(val_data, "val_data") if val_data is not None else None
        if self._train is not None:
            if self._probe is None:
                raise ValueError("train_augmented: needs train_data (the same samples with clean transforms)")
            if len(self._train) != len(self._probe):
                raise ValueError(f"train_augmented: must index the same samples as train_data, but has "
                                 f"{len(self._train)} samples and train_data {len(self._probe)}")
        self._plan = ProbePlan(probe_size, probe_budget, probe_seed, len(self._probe) if self._probe else 0,
                               len(self._val) if self._val is not None else None,
                               # a custom unpacking may read the target elsewhere: then a simple random probe
                               self._probe.class_strata() if self._probe is not None and unpack is None else None)
        self._probe_seed = int(probe_seed)
        self._penalty = penalty
        self._fixed_train_bs = int(train_batch_size) if train_batch_size is not None else None

        # per-epoch step state (device tensors, read once per epoch)
        self._losses: list[Any] = []
        self._batch_sizes: list[int | None] = []
        self._penalties: list[Any] = []
        self._t_first_step: float | None = None
        self._all_batch_sizes: Counter[int] = Counter()
        self._epoch_samples = math.nan   # training samples of the current epoch (probe-size rule)
        self._epoch = 0

        dropout, has_dropout, batchnorm = train_mode_layers(model)
        self._loss_kind = LOSS_KINDS.get(loss_name(loss_fn).lower())
        skipped: dict[str, str] = {}
        m = RunInfo(
            probe=ProbeInfo(seed=self._probe_seed, budget=float(probe_budget), augmented=self._train is not None),
            loss=LossInfo(name=loss_name(loss_fn), kind=self._loss_kind, per_sample_method=self._fw.method,
                          reported_kind="epoch_mean",
                          penalty_source=None if penalty is None else "callable" if callable(penalty) else "constant"),
            split=SplitInfo(train_size=len(self._probe) if self._probe is not None else None,
                            val_size=len(self._val) if self._val is not None else None),
            framework=FrameworkInfo(name="torch", seed=seed, dropout_layers=dropout, batchnorm_layers=batchnorm,
                                    optimizer=type(optimizer).__name__ if optimizer is not None else None,
                                    weight_decay=weight_decay_of(optimizer), skipped=skipped,
                                    world_size=self._world if self._dist else None),
            extras={"torch_version": torch.__version__.split("+")[0]},
        ).to_meta()
        if self._probe is None or probe_size == 0:
            reason = ("probe passes disabled (train_data=None)" if self._probe is None
                      else "probe passes disabled (probe_size=0)")
            for k in (TRAIN_MODE, EVAL_AUGMENTED, EVAL_CLEAN):
                skipped[k] = reason
        else:
            if self._train is None:
                skipped[EVAL_AUGMENTED] = "no train_augmented dataset: augmented inputs equal clean inputs (A = C)"
            if not (has_dropout or batchnorm):
                skipped[TRAIN_MODE] = "no dropout or batch norm: train mode equals eval mode (T = A)"
        if self._val is None:
            skipped[VALIDATION] = "no val_data dataset"
        self._probes_on = self._probe is not None and self._plan.enabled
        self._run_T = self._probes_on and TRAIN_MODE not in skipped
        self._run_A = self._probes_on and self._train is not None

        if fingerprint_split:
            m.update(auto_fingerprints(train=train_data, val=val_data))
        if check_duplicates and self._val is not None and self._probe is not None:
            dup = self._exact_duplicates()
            if dup is not None:
                m["split_exact_duplicates"] = dup
        m.update(meta or {})
        self._check_data()
        self._rec = Recorder(run, m, experiment, store, write=self._rank == 0, holder="lens.run",
                             retry="the next end_epoch", resume=resume)
        self.run = self._rec.run
        self._epoch = self._rec.next_epoch
        if resume is not None and self.run.meta.get("probe_size"):
            self._plan.match_design(self.run.meta)
            self._plan.fix(int(self.run.meta["probe_size"]), str(self.run.meta.get("probe_size_reason")),
                           self.run.meta)

    @property
    def probe_indices(self) -> np.ndarray | None:
        """Sorted training-set indices of the probe set (int64), known after the first :meth:`end_epoch`."""
        return self._plan.indices

    @property
    def _store(self) -> Store | None:
        return self._rec.store

    def state_dict(self) -> dict[str, Any]:
        """The state a recorder in a resumed process continues from (``LossLens(..., resume=state)``).

        Returns
        -------
        dict
            ``{"run_id", "epochs"}``: plain numbers, safe in any checkpoint (``torch.save``, Lightning's
            ``state_dict``, JSON). A run kept in memory only has ``run_id`` None and cannot be continued.
        """
        return self._rec.state_dict()

    # ---------------------------------------------------------------------------------------
    def _exact_duplicates(self) -> dict[str, Any] | None:
        """Exact validation/training input duplicates, for tensor data with one input tensor."""
        p, v = self._probe, self._val
        if p is None or v is None or p.tensors is None or v.tensors is None:
            return None
        if len(p.tensors) != 2 or len(v.tensors) != 2:
            return None
        return input_duplicates([p.tensors[0].detach().cpu().numpy()], [v.tensors[0].detach().cpu().numpy()])

    @property
    def eval_seed(self) -> int:
        """Seed of the eval-mode passes, the same at every epoch: a collator that draws at random (a masked-LM
        collator's masks) draws the same for ``C`` and ``V`` at every epoch, so epochs compare paired."""
        return self._probe_seed * 100_003 - 1

    def _protected(self) -> Protect:
        return self._fw.protected(self._probe_seed * 100_003 + self._epoch)

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
                    self._fw.unpack(batch)
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
            ``penalty`` given to :class:`LossLens`).

        Raises
        ------
        ValueError
            If ``loss`` or ``penalty`` has more than one element, or ``batch_size`` < 1.
        """
        if self._t_first_step is None:
            self._t_first_step = time.perf_counter()
            if self.model.training:
                self._fw.train_flags = [mod.training for mod in self.model.modules()]
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"loss: expected a scalar (one-element) tensor, got shape {tuple(loss.shape)}")
            loss = loss.detach()
        elif not isinstance(loss, (int, float, np.number)) or isinstance(loss, bool):
            raise TypeError(f"loss: expected a tensor or a number, got {type(loss).__name__}")
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
                raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
            batch_size = int(batch_size)
        if penalty is None and self._penalty is not None:
            if callable(self._penalty):
                with torch.no_grad():
                    penalty = self._penalty(self.model)
                if isinstance(penalty, torch.Tensor) and penalty.numel() != 1:
                    raise ValueError(f"penalty: the callable returned shape {tuple(penalty.shape)}, expected a scalar")
            else:
                penalty = float(self._penalty)
        if isinstance(penalty, torch.Tensor):
            if penalty.numel() != 1:
                raise ValueError(f"penalty: expected a scalar tensor, got shape {tuple(penalty.shape)}")
            penalty = penalty.detach()
        self._losses.append(loss)
        self._batch_sizes.append(batch_size)
        self._penalties.append(penalty)

    def discard_steps(self) -> int:
        """Drop the steps recorded since the last :meth:`end_epoch` (e.g. windows after the last evaluation);
        returns how many were dropped."""
        n = len(self._losses)
        self._losses, self._batch_sizes, self._penalties = [], [], []
        self._t_first_step = None
        return n

    # ---------------------------------------------------------------------------------------
    def end_epoch(self, metrics: dict[str, Any] | None = None, *, position: float | None = None,
                  step_positions: Any = None, step_spans: Any = None, val_loss: float | None = None) -> Epoch:
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
        val_loss : float, optional
            The validation loss the training loop computed itself (loss per sample), recorded as the epoch's
            validation measurement (source ``"imported"``, no per-sample values) when the recorder has no
            ``val_data``; ignored otherwise. Adapters for loops whose loss the recorder cannot recompute per sample
            (a preference loss) use it.

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
        losses = stack_cpu(self._losses)                 # the one device->host copy of the epoch
        seconds = (time.perf_counter() - self._t_first_step) if self._t_first_step is not None else math.nan
        pens = stack_cpu(self._penalties)
        known = [b for b in self._batch_sizes if b is not None]
        self._all_batch_sizes.update(known)
        sized = bool(n_steps) and len(known) == n_steps
        bs = np.asarray(self._batch_sizes, dtype=np.float64) if sized else np.ones(n_steps, dtype=np.float64)
        if self._dist:
            losses, pens, bs, seconds, sized, self._b_train_dist = gather_steps(
                losses, pens, bs, seconds, sized, self._train_batch_size(n_steps), self._world)
            n_steps = len(losses)
        r, omega = epoch_means(losses, pens, bs)
        if not n_steps:
            warnings.warn(f"LossLens.end_epoch: no step() calls in epoch {e}; R is unknown", stacklevel=2)
        steps = Steps.build(np.full(n_steps, e), losses - pens, batch_size=bs, penalty=pens,
                            position=step_positions, span=step_spans)
        # training samples of this epoch, for the probe-size rule (counts, never seconds)
        self._epoch_samples = float(bs.sum()) if sized else float(n_steps * self._train_batch_size(n_steps))
        t_probe = time.perf_counter()
        try:
            measurements = self._measure(seconds, n_steps)
        except Exception as exc:  # losslens never stops training because its own measurement failed
            if self._dist:   # the other ranks wait in a collective: failing alone would hang them all
                raise
            measurements = {}
            self._rec.measurement_failed(e, exc)
        if self._val is None and val_loss is not None and VALIDATION not in measurements:
            measurements[VALIDATION] = Measurement(VALIDATION, float(val_loss), source="imported")
        epoch = Epoch(index=e, train_loss=r, penalty=omega, n_steps=n_steps,
                      n_samples=int(bs.sum()) if sized else 0,
                      position=float(e + 1) if position is None else float(position),
                      measurements=measurements, metrics=mets,
                      seconds=seconds, probe_seconds=time.perf_counter() - t_probe)
        self.discard_steps()
        self._epoch += 1
        self._rec.commit(epoch, steps)
        if self._rank == 0 and (self._sinks or self._live_wanted):
            self.live = write_live(self.run, self._sinks, always=self._live_wanted)
        return epoch

    # ---------------------------------------------------------------------------------------
    def _train_batch_size(self, n_steps: int) -> int:
        if self._fixed_train_bs is not None:  # adapters whose step rows are windows, not batches
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
        self._fw.train_bs = b_train
        if self._dist:
            return measure_distributed(self, epoch_seconds, b_train)
        out: dict[str, Measurement] = {}
        with self._protected() as prot:
            if self._val is not None:
                prot.reseed(0, self.eval_seed)
                vals, _ = self._eval_pass(self._val, np.arange(len(self._val)), collect_targets=False)
                out[VALIDATION] = as_measurement(VALIDATION, vals)
            if self._probes_on:
                idx = self._probe_indices(epoch_seconds, b_train, prot)
                prot.reseed(1, self.eval_seed)
                clean, targets = self._eval_pass(self._probe, idx, collect_targets=meta["baseline_loss"] is None)
                if targets is not None and meta["baseline_loss"] is None:
                    meta["baseline_loss"] = baseline_loss(self._loss_kind, targets.detach().cpu().numpy())
                out[EVAL_CLEAN] = as_measurement(EVAL_CLEAN, clean)
                if self._run_T or self._run_A:
                    t_vals, a_vals = self._train_mode_pass(idx, b_train, prot)
                    if a_vals is not None:
                        out[EVAL_AUGMENTED] = as_measurement(EVAL_AUGMENTED, a_vals)
                    if t_vals is not None:
                        out[TRAIN_MODE] = as_measurement(TRAIN_MODE, t_vals)
        self._note_pass_settings()
        return out

    def _note_pass_settings(self) -> None:
        """Store the per-sample loss check (once) and the eval batch size the passes used in ``run.meta``."""
        if self._fw.check is not None and self.run.meta.get("per_sample_loss_check") is None:
            self.run.meta["per_sample_loss_check"] = self._fw.check
        if self._fw.eval_bs is not None:
            self.run.meta["eval_batch_size"] = int(self._fw.eval_bs)

    def _eval_pass(self, src: Source | None, indices: np.ndarray, collect_targets: bool,
                   pad: tuple[int, int] | None = None) -> tuple[np.ndarray, Any]:
        return self._fw.eval(src, indices, collect_targets, pad if self._fw.pad_forwards else None)

    def _train_mode_pass(self, indices: np.ndarray, b_train: int, prot: Protect,
                         shard: tuple[int, int] | None = None) -> tuple[Any, ...]:
        src = self._train if self._train is not None else self._probe
        assert src is not None
        return self._fw.train_mode(src, indices, b_train, prot, self._run_T, self._run_A, shard)

    def _probe_indices(self, epoch_seconds: float, b_train: int, prot: Protect) -> np.ndarray:
        """The probe set, fixed at the first end_epoch (:class:`losslens.recording.ProbePlan`)."""
        if self._plan.indices is not None:
            return self._plan.indices

        def time_pilot(pilot: np.ndarray) -> float:
            t0 = time.perf_counter()
            self._eval_pass(self._probe, pilot, collect_targets=False)
            if self._run_T or self._run_A:
                self._train_mode_pass(pilot, min(b_train, len(pilot)), prot)
            return time.perf_counter() - t0

        meta = self.run.meta
        n, reason = self._plan.decide(samples_per_epoch=self._epoch_samples,
                                      passes=1 + int(self._run_T) + int(self._run_A), store=self._store,
                                      experiment=self.run.experiment, run_id=self.run.id,
                                      epoch_seconds=epoch_seconds, time_pilot=time_pilot, world=self._world,
                                      meta=meta)
        if self._dist:  # rank 0's decision holds on every rank (a timed one can differ between ranks)
            n, reason, cost = broadcast_decision(n, reason, meta.get("probe_cost_per_sample_s"))
            if cost is not None:
                meta["probe_cost_per_sample_s"] = cost
        return self._plan.fix(n, reason, meta)

    # ---------------------------------------------------------------------------------------
    def should_stop(self, patience: int = 10, min_delta: float = 0.0) -> bool:
        """Noise-aware early stopping on the validation losses recorded so far (call after :meth:`end_epoch`).

        :class:`losslens.recording.stopping.NoiseAwareStopper` on the per-sample validation losses (paired against
        the best epoch): ``patience`` epochs without a new best value (lower by more than ``min_delta``, loss per
        sample) and without a falling trend stop training, as does a validation loss worse than the best beyond
        noise for three epochs. :attr:`stop_decision` has the epoch to restore (``best_epoch``) and the reason.

        Raises
        ------
        ValueError
            Without ``val_data``, or for a bad ``patience``/``min_delta``.
        """
        if self._val is None:
            raise ValueError("should_stop: needs val_data (early stopping judges the validation loss)")
        st = getattr(self, "_stopper", None)
        if st is None or (st.patience, st.min_delta) != (patience, float(min_delta)):
            st = self._stopper = NoiseAwareStopper(patience=patience, min_delta=min_delta)
        self.stop_decision = d = st.judge_run(self.run)
        self._rec.sync_meta()
        return bool(d is not None and d.stop)

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
            warnings.warn(f"LossLens.finish: {len(self._losses)} step(s) after the last end_epoch() are not "
                          "recorded", stacklevel=2)
        return self._rec.finish()

    def __enter__(self) -> "LossLens":
        """``with LossLens(...) as lens:`` finishes the run when the block ends without an exception (a run left
        by an exception stays "running": its report says it did not finish)."""
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self.run.status != "finished":
            self.finish()

    def diagnose(self) -> Any:
        """Deprecated: use ``Report.from_run(lens)`` (:class:`losslens.report.Report`); removed in 0.3."""
        return deprecated_report(self.run, "LossLens.diagnose()")


class Lens(LossLens):
    """Deprecated alias of :class:`LossLens` (one name across the adapters); removed in 0.3."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn("losslens.torch.Lens is renamed LossLens (the name every losslens adapter uses); "
                      "Lens will be removed in 0.3", FutureWarning, stacklevel=2)
        super().__init__(*args, **kwargs)
