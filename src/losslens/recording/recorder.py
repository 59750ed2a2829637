"""The framework-free half of every adapter: one run being recorded.

An adapter (:mod:`losslens.torch`, :mod:`losslens.keras`, and the Lightning and Hugging Face callbacks over the
torch one) only runs forward passes and reads its framework's numbers; everything else is here, once:

* :class:`Recorder`: the :class:`~losslens.record.Run`, its store, atomic epoch commits (an epoch is closed in
  memory first, then written; a failed write is kept and retried, never merged into the next epoch), metadata
  sync, failed-measurement notes, finishing, and the state a resumed run continues from;
* :class:`ProbePlan`: the probe set, fixed once (the deterministic budget rule of
  :func:`losslens.recording.probe.budget_probe_size`, an explicit size, an experiment's shared size, or the timed
  rule on request);
* :func:`epoch_means`: ``R`` and ``Ω`` from the epoch's step losses;
* :func:`per_sample_check`: does the mean of the per-sample losses equal the framework's own loss?
* :func:`check_common_args`: the arguments every adapter shares, validated the same way.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Callable

import numpy as np

from ..record import Epoch, Run, Steps, fingerprint_indices, record_measurement_error, to_jsonable
from ..store import Store, write_pending
from .probe import (
    PILOT_SIZE,
    budget_probe_size,
    inherited_probe_size,
    probe_permutation,
    probe_size_cap,
    timed_probe_size,
)

__all__ = ["Recorder", "ProbePlan", "epoch_means", "merge_rank_steps", "per_sample_check", "check_common_args",
           "PER_SAMPLE_RTOL", "PER_SAMPLE_ATOL"]

#: Tolerance of :func:`per_sample_check`: ``|mean − reference| <= RTOL·max(|reference|, 1e-8) + ATOL``. The
#: float32 summation error of a batch mean is ~1e-6 relative; 1e-4 leaves room for reductions done in another
#: order (and for a framework computing its loss in another precision).
PER_SAMPLE_RTOL = 1e-4
PER_SAMPLE_ATOL = 1e-6


def check_common_args(*, probe_size: Any, probe_budget: Any, probe_seed: Any, eval_batch_size: Any = None,
                      meta: Any = None) -> int | str:
    """Validate the arguments every adapter shares; returns ``probe_size`` normalized (an int or a keyword).

    Parameters
    ----------
    probe_size : int >= 0, "auto", "all", "timed" or None (= "auto")
        0 disables the probe passes (only ``R``, ``Ω`` and ``V`` are measured).
    probe_budget : float in (0, 1]
    probe_seed : int >= 0
    eval_batch_size : int >= 1 or None
    meta : dict of JSON-serialisable values or None

    Raises
    ------
    TypeError, ValueError
        Naming the argument and the bad value.
    """
    if probe_size is None:
        probe_size = "auto"
    if isinstance(probe_size, str):
        if probe_size not in ("auto", "all", "timed"):
            raise ValueError(f"probe_size: expected an int >= 0, 'auto', 'all' or 'timed', got {probe_size!r}")
    elif isinstance(probe_size, bool) or not isinstance(probe_size, (int, np.integer)) or probe_size < 0:
        raise ValueError(f"probe_size: expected an int >= 0, 'auto', 'all' or 'timed', got {probe_size!r}")
    if isinstance(probe_budget, bool) or not isinstance(probe_budget, (int, float)) or not 0 < probe_budget <= 1:
        raise ValueError(f"probe_budget: expected a fraction in (0, 1], got {probe_budget!r}")
    if isinstance(probe_seed, bool) or not isinstance(probe_seed, (int, np.integer)) or probe_seed < 0:
        raise ValueError(f"probe_seed: expected an int >= 0, got {probe_seed!r}")
    if eval_batch_size is not None and (
            isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, (int, np.integer))
            or eval_batch_size < 1):
        raise ValueError(f"eval_batch_size: expected an int >= 1 or None, got {eval_batch_size!r}")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TypeError(f"meta: expected a dict, got {type(meta).__name__}")
        try:
            json.dumps(to_jsonable(meta))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta: values must be JSON-serialisable (numbers, strings, lists, dicts): {exc}") \
                from exc
    return probe_size if isinstance(probe_size, str) else int(probe_size)


def epoch_means(losses: np.ndarray, penalties: np.ndarray, batch_sizes: np.ndarray) -> tuple[float, float]:
    """``R`` and ``Ω`` of an epoch: batch-size weighted means of the step data losses and penalties.

    Parameters
    ----------
    losses, penalties, batch_sizes : numpy.ndarray, shape (n_steps,)
        The optimised loss of each step (penalty included), its penalty, its samples (weights).

    Returns
    -------
    (R, Ω) : floats, loss per sample; ``(nan, 0.0)`` without steps. Non-finite losses propagate.
    """
    if not len(losses):
        return math.nan, 0.0
    w = batch_sizes / batch_sizes.sum()
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sum(w * (losses - penalties))), float(np.sum(w * penalties))


def merge_rank_steps(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Distributed: the step losses of all ranks as one record.

    Step ``i`` is the batch-size weighted mean over ranks of their step-``i`` losses (DDP averages the
    gradients of equal-sized local batches the same way); its batch size is the sum (the global batch). Ranks
    with more steps than others (uneven data without ``drop_last``) contribute their extra steps alone.

    Parameters
    ----------
    parts : list of (losses, penalties, batch_sizes), one per rank, each of shape (n_steps_rank,)

    Returns
    -------
    (losses, penalties, batch_sizes) : numpy.ndarray, shape (max n_steps,)
    """
    n = max(len(p[0]) for p in parts)
    num, pen, den = np.zeros(n), np.zeros(n), np.zeros(n)
    for lo, pe, b in parts:
        k = len(lo)
        with np.errstate(invalid="ignore", over="ignore"):
            num[:k] += b * lo
            pen[:k] += b * pe
        den[:k] += b
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den, pen / den, den


def per_sample_check(mean_of_per_sample: float, reference: float, *, what: str, **extra: Any) -> dict[str, Any] | None:
    """Compare the mean of the per-sample losses with the framework's own loss on the same batch.

    Parameters
    ----------
    mean_of_per_sample, reference : float
        Loss per sample, on one batch.
    what : str
        The loss's name, for the warning.
    **extra
        Stored with the result (e.g. ``method``, ``n``).

    Returns
    -------
    dict or None
        ``{"consistent", "mean_of_per_sample", "reference", ...}`` for ``run.meta["per_sample_loss_check"]``;
        None when either value is not finite (judge the next batch). A mismatch beyond
        :data:`PER_SAMPLE_RTOL`/:data:`PER_SAMPLE_ATOL` warns: class weights, ``ignore_index`` or a custom
        reduction make the framework's loss a weighted mean, and losslens reports unweighted per-sample means.
    """
    if not (math.isfinite(reference) and math.isfinite(mean_of_per_sample)):
        return None
    ok = abs(mean_of_per_sample - reference) <= PER_SAMPLE_RTOL * max(abs(reference), 1e-8) + PER_SAMPLE_ATOL
    if not ok:
        warnings.warn(
            f"loss {what!r}: the mean of the per-sample losses ({mean_of_per_sample:.6g}) differs from the "
            f"framework's own value ({reference:.6g}) on the same batch (class weights, ignore_index or a custom "
            "reduction?). losslens reports unweighted per-sample means.", stacklevel=4)
    return {"consistent": bool(ok), "mean_of_per_sample": float(mean_of_per_sample), "reference": float(reference),
            **extra}


class ProbePlan:
    """The probe set of one run: a fixed, seeded subset of the training set, chosen once.

    Parameters
    ----------
    size : int, "auto", "all" or "timed"
        As validated by :func:`check_common_args` (0: no probe).
    budget : float
        Fraction of an epoch's training compute the probe passes may cost.
    seed : int
        Seed of :func:`~losslens.recording.probe.probe_permutation`.
    n_train : int
        Training-set size (the population the probe is drawn from).
    n_val : int or None
        Validation-set size (caps the default probe: the probe need not be more precise than validation).
    strata : numpy.ndarray of int, shape (n_train,), optional
        Class code of every training sample (:func:`~losslens.recording.probe.class_strata`): the probe is then
        stratified by class (:func:`~losslens.recording.probe.probe_permutation`).

    Attributes
    ----------
    indices : numpy.ndarray of int64 or None
        Sorted training-set indices of the probe, once fixed.
    """

    def __init__(self, size: int | str, budget: float, seed: int, n_train: int, n_val: int | None,
                 strata: np.ndarray | None = None) -> None:
        self.size, self.budget, self.seed = size, float(budget), int(seed)
        self.n_train, self.n_val = int(n_train), n_val
        if strata is not None and len(strata) != self.n_train:
            strata = None
        self._strata = strata
        self._perm: np.ndarray | None = None
        self.indices: np.ndarray | None = None

    @property
    def n_strata(self) -> int | None:
        """Classes the probe is stratified by (None: a simple random sample)."""
        return int(self._strata.max()) + 1 if self._strata is not None else None

    @property
    def enabled(self) -> bool:
        """False with ``size=0``: no probe passes."""
        return self.size != 0 and self.n_train > 0

    @property
    def permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = probe_permutation(self.seed, self.n_train, self._strata)
        return self._perm

    def first(self, n: int) -> np.ndarray:
        """The sorted first ``n`` indices of the seeded permutation (contained in every probe of size >= n)."""
        return np.sort(self.permutation[:min(n, self.n_train)]).astype(np.int64)

    def requested(self) -> tuple[int, str] | None:
        """The size when the user fixed it (an int or ``"all"``), else None (decided after the first epoch)."""
        if self.size == "all":
            return self.n_train, "probe_size='all'"
        if isinstance(self.size, int):
            return min(self.size, self.n_train), f"probe_size={self.size}"
        return None

    def decide(self, *, samples_per_epoch: float, passes: int, store: Any = None, experiment: str | None = None,
               run_id: int | None = None, epoch_seconds: float = math.nan,
               time_pilot: Callable[[np.ndarray], float] | None = None, world: int = 1,
               meta: dict[str, Any] | None = None) -> tuple[int, str]:
        """The probe size and the reason, in words (``run.meta["probe_size_reason"]``).

        In order: the user's size; the size of the experiment's first run (so seeds share the probe,
        :func:`~losslens.recording.probe.inherited_probe_size`); with ``"timed"`` the wall-clock rule on a pilot
        pass timed by ``time_pilot(indices) -> seconds`` (divided over ``world`` ranks); otherwise the budget
        counted from ``samples_per_epoch`` training samples and ``passes`` probe passes
        (:func:`~losslens.recording.probe.budget_probe_size`). Only ``"timed"`` reads a clock.
        """
        fixed = self.requested()
        if fixed is not None:
            return fixed
        inherited = inherited_probe_size(store, experiment, run_id, self.n_train, self.seed, self.n_strata)
        if inherited is not None:
            return min(inherited[0], self.n_train), inherited[1]
        cap, limit = probe_size_cap(self.n_train, self.n_val)
        if self.size == "timed" and time_pilot is not None:
            pilot = self.first(min(PILOT_SIZE, cap))
            per_sample = time_pilot(pilot) / len(pilot) / world
            n, why = timed_probe_size(cap, limit, self.budget, epoch_seconds, per_sample)
            if meta is not None:
                meta["probe_cost_per_sample_s"] = per_sample
            return n, (f"timed: {why}; budget {100 * self.budget:g} % of the first epoch's {epoch_seconds:.3g} s "
                       f"training time at {1e6 * per_sample:.3g} µs per probe sample (all probe passes, timed on "
                       f"{len(pilot)} samples)")
        n, why = budget_probe_size(cap, limit, self.budget, samples_per_epoch, passes)
        return n, f"auto: {why}"

    def fix(self, n: int, reason: str, meta: dict[str, Any]) -> np.ndarray:
        """Fix the probe to the first ``n`` indices of the permutation; record size, reason and fingerprint."""
        self.indices = self.first(n)
        meta["probe_size"] = int(len(self.indices))
        meta["probe_size_reason"] = reason
        meta["probe_fingerprint"] = fingerprint_indices(self.indices, self.n_train)
        meta["probe_strata"] = self.n_strata
        return self.indices

    def match_design(self, meta: dict[str, Any]) -> None:
        """Use the probe design of a resumed run's metadata: a run recorded before probes were stratified
        (``probe_strata`` absent or None) keeps its simple random probe."""
        if meta.get("probe_strata") is None and self._strata is not None:
            self._strata, self._perm = None, None


class Recorder:
    """One run being recorded: the :class:`~losslens.record.Run`, its store, and epoch commits.

    Parameters
    ----------
    name : str
        Name of the run.
    meta : dict
        Its metadata (``run.meta``; adapters may keep changing it, :meth:`sync_meta` writes changes).
    experiment : str or None
    store : str, os.PathLike, Store or None
        A SQLite store file (created if missing, closed by :meth:`finish`), an open store (left open), or None
        (memory only).
    write : bool
        False on the ranks that do not write (distributed: rank 0 alone writes).
    holder, retry : str
        Where the user finds unwritten epochs, and when a failed write is retried (for the messages).
    resume : dict, optional
        :meth:`state_dict` of an earlier recorder: the stored run is reopened and continued (its epochs, steps
        and metadata are read back; the next epoch gets the next index) instead of a new run being created.

    Raises
    ------
    TypeError
        If ``store`` is not a path, a Store or None.
    losslens.store.StoreError
        If the store cannot be opened, or the run to resume is not in it.
    """

    def __init__(self, name: str, meta: dict[str, Any], experiment: str | None, store: Any, *, write: bool = True,
                 holder: str = "lens.run", retry: str = "the next epoch end",
                 resume: dict[str, Any] | None = None) -> None:
        self.holder, self.retry = holder, retry
        self.pending: list[tuple[Epoch, Steps]] = []
        if store is None or not write:
            self.store: Store | None = None
            self._own = False
        elif isinstance(store, Store):
            self.store, self._own = store, False
        elif isinstance(store, (str, os.PathLike)):
            self.store, self._own = Store(store), True
        else:
            raise TypeError(f"store: expected a path, a losslens.store.Store or None, got {type(store).__name__}")
        self._stored_meta: str | None = None
        if resume is not None and resume.get("run_id") is not None and self.store is None and write:
            warnings.warn("losslens: the run to resume was stored, but this recorder has no store; a new run is "
                          "recorded in memory", RuntimeWarning, stacklevel=3)
        if resume is not None and self.store is not None and resume.get("run_id") is not None:
            if resume.get("epochs") is not None:   # epochs recorded after the checkpoint are trained again
                self.store.truncate_run(int(resume["run_id"]), int(resume["epochs"]))  # epochs = next index
            self.run = self.store.load_run(int(resume["run_id"]))
            self.run.status = "running"
            self.store.set_status(self.run.id, "running")  # type: ignore[arg-type]
            self._stored_meta = repr(self.run.meta)
        else:
            self.run = Run(name=name, meta=meta, experiment=experiment)
            if self.store is not None:
                self.run.id = self.store.create_run(name, self.run.meta, experiment)
                self._stored_meta = repr(self.run.meta)

    @property
    def next_epoch(self) -> int:
        """Index of the next epoch (0 for a new run; one past the last recorded one when resumed)."""
        return self.run.epochs[-1].index + 1 if self.run.epochs else 0

    def commit(self, epoch: Epoch, steps: Steps) -> Epoch:
        """Append a finished epoch and its steps to the run, then write it (with any earlier unwritten ones).

        The epoch is closed in memory before the store is touched: a failed write can never merge its steps
        into the next epoch or renumber the epochs (:func:`losslens.store.write_pending`).
        """
        self.run.epochs.append(epoch)
        self.run.steps = Steps.concat([self.run.steps, steps])
        if self.store is not None:
            self.pending.append((epoch, steps))
            self.flush(final=False)
        return epoch

    def add_metrics(self, metrics: dict[str, float]) -> None:
        """Add ``metrics`` to the last committed epoch (numbers evaluated at the same point after it was closed, such
        as a second evaluation set's) and rewrite that epoch in the store; a failed write is warned about, never
        raised (the numbers stay in memory)."""
        if not self.run.epochs or not metrics:
            return
        epoch = self.run.epochs[-1]
        epoch.metrics.update(metrics)
        if self.store is None or self.run.id is None or any(e is epoch for e, _ in self.pending):
            return   # no store, or written with the pending epoch
        try:
            self.store.append_epoch(self.run.id, epoch, None)
        except Exception as exc:   # the store is only a copy: never stop training for it
            import warnings

            warnings.warn(f"losslens: could not write the metrics of epoch {epoch.index} to the store ({exc}); "
                          "they are in memory", RuntimeWarning, stacklevel=2)

    def measurement_failed(self, epoch: int, exc: BaseException) -> None:
        """Note that an epoch's probe/validation passes failed (recorded, warned once, training goes on)."""
        record_measurement_error(self.run, epoch, exc)

    def flush(self, final: bool) -> None:
        """Write the epochs not yet in the store; a failed write is retried later, or raises at ``final``."""
        if self.store is not None:
            write_pending(self.store, self.run.id, self.pending, final=final, holder=self.holder,
                          retry=self.retry, after_write=self.sync_meta)

    def sync_meta(self) -> None:
        """Write ``run.meta`` to the store if it changed since the last write."""
        if self.store is None:
            return
        rep = repr(self.run.meta)
        if rep != self._stored_meta:
            self.store.update_meta(self.run.id, self.run.meta)  # type: ignore[arg-type]
            self._stored_meta = rep

    def finish(self) -> Run:
        """Write what is pending, mark the run finished, close a store opened from a path.

        Raises
        ------
        losslens.store.StoreError
            If epochs whose write failed during training still cannot be written (they stay in the run).
        """
        self.flush(final=True)
        self.run.status = "finished"
        if self.store is not None:
            self.sync_meta()
            self.store.set_status(self.run.id, "finished")  # type: ignore[arg-type]
            if self._own:
                self.store.close()
                self.store = None
        return self.run

    def state_dict(self) -> dict[str, Any]:
        """What a resumed recorder needs (JSON-safe, tensors-free): the stored run's id and the next epoch index.

        Resuming keeps the stored epochs before ``epochs`` and drops later ones (they are trained again).

        A run kept in memory only (``store=None``) has no id: a recorder resumed from it starts a new run.
        """
        return {"run_id": None if self.run.id is None else int(self.run.id), "epochs": self.next_epoch}
