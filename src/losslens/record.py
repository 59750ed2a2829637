"""The run record: what was measured during training, framework-free.

A :class:`Run` holds

* the **steps**: one row per optimizer step (or per logged window, for imported
  logs), with its position in fractional epochs, its loss (data part, per
  sample, train mode, before the update), the batch size and the penalty;
* the **epochs**: one :class:`Epoch` per finished epoch, with the reported
  training loss ``R`` (data part), the mean penalty ``Ω`` and the end-of-epoch
  :class:`Measurement` s of the DESIGN protocol (``T``, ``A``, ``C``, ``V``);
* ``meta``: a JSON-serialisable dict of facts about the run (see
  :data:`META_KEYS`).

Units: every loss is a mean **per sample**, in the units of the loss function.
Epochs are numbered from 0; epoch ``e`` spans the time interval ``[e, e + 1]``
in fractional epochs, so its end-of-epoch measurements sit at ``e + 1`` and
its mean training loss at ``e + 0.5``.

No deep-learning framework is imported here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .meta import RunInfo

__all__ = [
    "LOGGED_NAMES",
    "LOGGED_TERM_NAMES",
    "LOSSLENS_LOG_NAMES",
    "record_measurement_error",
    "Measurement",
    "Epoch",
    "Steps",
    "Run",
    "TRAIN_MODE",
    "END_OF_EPOCH_ESTIMATE",
    "EVAL_AUGMENTED",
    "EVAL_CLEAN",
    "VALIDATION",
    "MEASUREMENT_KINDS",
    "META_KEYS",
    "fingerprint_indices",
]

#: ``T``: end-of-epoch weights, probe set, train mode, augmented inputs, no penalty.
TRAIN_MODE = "train_mode"
#: ``A``: end-of-epoch weights, probe set, eval mode, the same augmented inputs.
EVAL_AUGMENTED = "eval_augmented"
#: ``C``: end-of-epoch weights, probe set, eval mode, clean inputs: the eval-mode training loss.
EVAL_CLEAN = "eval_clean"
#: ``V``: end-of-epoch weights, validation set, eval mode, clean inputs.
VALIDATION = "validation"
#: ``T̂``: the end-of-epoch training loss (train mode, augmented inputs, as the log's loss) *estimated* from the
#: within-epoch trend of a log's losses (:func:`losslens.diagnose.timing.add_end_of_epoch_estimates`): not a
#: probe pass, ``n = 0``, ``source = "estimated"``. Stores of schema version 1 kept it as a ``train_mode``
#: measurement with source "estimated"; opening them migrates it.
END_OF_EPOCH_ESTIMATE = "end_of_epoch_estimate"

MEASUREMENT_KINDS = (TRAIN_MODE, END_OF_EPOCH_ESTIMATE, EVAL_AUGMENTED, EVAL_CLEAN, VALIDATION)

#: The names under which the callbacks put their end-of-epoch measurements into the framework's logs (Keras
#: ``logs``, Lightning ``self.log``), so its loggers write them; the log importers read them back as measurements.
LOGGED_NAMES = {EVAL_CLEAN: "eval_train_loss", TRAIN_MODE: "train_mode_loss", EVAL_AUGMENTED: "eval_augmented_loss",
                VALIDATION: "losslens_val_loss"}

#: Decomposition term -> the name under which the adapters and sinks log it (:mod:`losslens.diagnose.live`).
LOGGED_TERM_NAMES = {"penalty": "gap_penalty", "timing": "gap_timing", "train_mode": "gap_train_mode",
                     "augmentation": "gap_augmentation", "generalization_gap": "generalization_gap"}

#: Every name losslens itself puts into a framework's logs (measurements, terms, their ``_se``, ``verdict_code``,
#: ``data_loss``, ``penalty_loss``): a log importer never takes one of them for the training loop's own loss.
LOSSLENS_LOG_NAMES = frozenset(
    [n for n in (*LOGGED_NAMES.values(), *LOGGED_TERM_NAMES.values()) for n in (n, n + "_se")]
    + ["verdict_code", "data_loss", "penalty_loss"])

#: Human-readable description of each measurement kind (used by every report).
MEASUREMENT_LABELS = {
    TRAIN_MODE: "train-mode probe loss (end-of-epoch weights, dropout/BN on, augmented inputs)",
    EVAL_AUGMENTED: "eval-mode probe loss on augmented inputs (end-of-epoch weights)",
    EVAL_CLEAN: "eval-mode training loss (end-of-epoch weights, probe set, clean inputs)",
    VALIDATION: "validation loss (end-of-epoch weights, eval mode)",
    END_OF_EPOCH_ESTIMATE: ("end-of-epoch training loss (train mode) estimated from the within-epoch trend of the "
                            "logged losses, not a probe"),
}


def measurement_label(kind: str, source: str = "measured") -> str:
    """What a measurement is, in words, for every report (an estimate says so)."""
    return MEASUREMENT_LABELS[kind]


#: Keys of :attr:`Run.meta` that no section of the typed view (:class:`losslens.meta.RunInfo`, ``run.info``)
#: owns: framework versions and the split fingerprints' details. The typed keys are documented on the sections.
META_KEYS = {
    "torch_version": "torch.__version__ of the recording process",
    "probe_content_fingerprint": "content fingerprint of the probe set (probe_fingerprint is index-based)",
    "train_hashes": "base64 per-sample content hashes of the training set (possibly a hash-threshold subsample)",
    "val_hashes": "base64 per-sample content hashes of the validation set",
    "train_hashes_rate": "fraction of training hashes kept by the subsample (1.0 = all)",
    "val_hashes_rate": "fraction of validation hashes kept by the subsample",
    "fingerprint_skipped": "sets not fingerprinted and why (not in memory, too large, not hashable)",
    "measurement_errors": "epochs whose probe/validation passes failed, with the error",
    "validation_set": "which of several evaluation sets is the validation set V (Hugging Face eval_dataset dict)",
}


def fingerprint_indices(indices: Iterable[int], population: int) -> str:
    """Order-independent fingerprint of a subset of ``range(population)``.

    Parameters
    ----------
    indices : iterable of int
        The sample indices of the subset.
    population : int
        Size of the set the indices come from.

    Returns
    -------
    str
        ``"sha256:<hex>"`` of the sorted indices (int64, little-endian) and the population.
    """
    arr = np.sort(np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype="<i8"))
    h = hashlib.sha256()
    h.update(np.int64(population).astype("<i8").tobytes())
    h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


@dataclass
class Measurement:
    """One end-of-epoch pass over a fixed set of samples.

    Attributes
    ----------
    kind : str
        One of :data:`MEASUREMENT_KINDS`.
    mean : float
        Mean loss per sample (data part only, no penalty).
    sem : float
        Standard error of ``mean``: sample standard deviation of the per-sample
        losses (ddof=1) over ``sqrt(n)``; NaN when unknown (imported logs).
    n : int
        Number of samples (0 when unknown).
    values : numpy.ndarray or None
        Per-sample losses, shape ``(n,)``, float32, in a fixed sample order that
        is the same for every epoch and every probe kind of the run, so that
        differences can be paired. None for imported logs.
    source : str
        ``"measured"`` (by an adapter), ``"imported"`` (read from a log) or
        ``"estimated"`` (inferred, e.g. from the within-epoch trend).
    weights : numpy.ndarray or None
        Weight of each sample in ``mean``, shape ``(n,)``, float32: for language models the number of tokens
        the loss counts in the sample (labels other than ``-100``), so that ``mean`` is the loss per token as the
        Hugging Face models compute it, and ``values`` are each sample's mean over its own tokens. None: every
        sample weighs 1.
    """

    kind: str
    mean: float
    sem: float = math.nan
    n: int = 0
    values: np.ndarray | None = None
    source: str = "measured"
    weights: np.ndarray | None = None

    @classmethod
    def from_values(cls, kind: str, values: Any, source: str = "measured", weights: Any = None) -> "Measurement":
        """Build a measurement from per-sample losses.

        Parameters
        ----------
        kind : str
            One of :data:`MEASUREMENT_KINDS`.
        values : array-like, shape (n,)
            Per-sample losses; stored as float32, the mean and standard error
            are accumulated in float64. Non-finite values are kept, and make the
            mean non-finite (divergence is recorded, never hidden).
        weights : array-like, shape (n,), optional
            Non-negative weight of each sample (token counts). ``mean`` is then the weighted mean
            ``Σ w·v / Σ w`` and ``sem`` the linearised standard error of that ratio estimator,
            ``sqrt(n/(n-1) · Σ w²(v − mean)²) / Σ w`` (Cochran, *Sampling Techniques*, 3rd ed., 1977, §6.4).
            A sample of weight 0 (no counted token) does not enter the mean, whatever its value.

        Raises
        ------
        ValueError
            If ``kind`` is unknown, ``values`` is not one-dimensional, or ``weights`` is not a non-negative
            array of the same shape.
        """
        if kind not in MEASUREMENT_KINDS:
            raise ValueError(f"unknown measurement kind {kind!r}; expected one of {MEASUREMENT_KINDS}")
        v = np.asarray(values, dtype=np.float32)
        if v.ndim != 1:
            raise ValueError(f"per-sample losses for {kind!r} must be 1-D, got shape {v.shape}")
        n = int(v.size)
        w = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float32)
            if w.shape != v.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"weights for {kind!r}: expected {n} finite non-negative numbers, "
                                 f"got shape {w.shape}")
        m = cls(kind=kind, mean=math.nan, n=n, values=v, source=source, weights=w)
        lin = m.linearized()
        assert lin is not None
        with np.errstate(invalid="ignore", over="ignore"):
            m.mean = float(lin.mean()) if n else math.nan
            m.sem = float(lin.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return m

    def linearized(self) -> np.ndarray | None:
        """Per-sample values whose plain mean, standard error, paired differences and per-sample slopes are those
        of the (weighted) mean: float64, shape ``(n,)``, or None without per-sample values.

        Without weights these are ``values``. With weights they are ``r + w_i (v_i − r) / w̄`` with ``r`` the
        weighted mean and ``w̄`` the mean weight: the linearisation (influence values) of the ratio estimator
        (Cochran 1977, §6.4), so every paired statistic computed on plain per-sample losses holds for
        token-weighted ones unchanged.
        """
        if self.values is None:
            return None
        v = self.values.astype(np.float64)
        if self.weights is None:
            return v
        w = self.weights.astype(np.float64)
        wbar = float(w.mean()) if w.size else 0.0
        if wbar <= 0:
            return np.full(v.shape, math.nan)
        vz = np.where(w > 0, v, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            r = float((w * vz).sum() / w.sum())
            return r + w * (vz - r) / wbar


@dataclass
class Epoch:
    """What is known about one finished epoch.

    Attributes
    ----------
    index : int
        0-based epoch number.
    train_loss : float
        ``R``: reported training loss, data part: the batch-size weighted mean
        of the epoch's step losses (train mode, augmented inputs, weights
        changing). NaN when unknown.
    penalty : float
        ``Ω``: mean regularization penalty that was included in the loss the
        user optimised (0 when none; weight decay applied by the optimizer is
        not a penalty in the loss).
    n_steps : int
        Optimizer steps in the epoch.
    n_samples : int
        Training samples seen in the epoch (sum of batch sizes).
    position : float
        Time of the end-of-epoch measurements in fractional epochs
        (``index + 1`` for a full epoch).
    measurements : dict
        Kind -> :class:`Measurement`, for the kinds measured this epoch.
    metrics : dict
        Other per-epoch numbers (accuracy, learning rate, ...), name -> float.
    seconds : float
        Wall time of the epoch's training steps (probes excluded), NaN if unknown.
    probe_seconds : float
        Wall time spent in losslens's end-of-epoch passes, NaN if unknown.
    """

    index: int
    train_loss: float = math.nan
    penalty: float = 0.0
    n_steps: int = 0
    n_samples: int = 0
    position: float = math.nan
    measurements: dict[str, Measurement] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = math.nan
    probe_seconds: float = math.nan

    def __post_init__(self) -> None:
        if math.isnan(self.position):
            self.position = float(self.index + 1)

    @property
    def reported_loss(self) -> float:
        """``R + Ω``: the training loss as a framework shows it (penalty included)."""
        return self.train_loss + self.penalty

    def get(self, kind: str) -> Measurement | None:
        """The measurement of ``kind`` this epoch, or None."""
        return self.measurements.get(kind)


@dataclass
class Steps:
    """Per-step (or per-window) training losses of a run, as parallel arrays.

    Attributes
    ----------
    epoch : numpy.ndarray of int64, shape (n,)
        Epoch the step belongs to.
    position : numpy.ndarray of float64, shape (n,)
        Real time of the loss in fractional epochs: the centre of the batch
        (or of the logged window) within its epoch.
    loss : numpy.ndarray of float64, shape (n,)
        Loss of the batch (data part, per sample, train mode, before the update).
    batch_size : numpy.ndarray of float64, shape (n,)
        Samples in the batch (1 when unknown); weights of the epoch mean.
    penalty : numpy.ndarray of float64, shape (n,)
        Penalty included in that step's optimised loss (0 when none).
    span : numpy.ndarray of float64, shape (n,)
        Number of optimizer steps the value averages (1 for a single step;
        the logging window for imported window means).
    """

    epoch: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    position: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    batch_size: np.ndarray = field(default_factory=lambda: np.zeros(0))
    penalty: np.ndarray = field(default_factory=lambda: np.zeros(0))
    span: np.ndarray = field(default_factory=lambda: np.zeros(0))

    COLUMNS = ("epoch", "position", "loss", "batch_size", "penalty", "span")

    def __len__(self) -> int:
        return int(self.loss.size)

    @classmethod
    def build(
        cls,
        epoch: Any,
        loss: Any,
        position: Any = None,
        batch_size: Any = None,
        penalty: Any = None,
        span: Any = None,
    ) -> "Steps":
        """Build from columns; missing columns take their defaults.

        ``position`` defaults to evenly spaced batch centres within each epoch,
        ``batch_size`` and ``span`` to 1, ``penalty`` to 0.

        Raises
        ------
        ValueError
            If the columns have different lengths.
        """
        ep = np.asarray(epoch, dtype=np.int64).ravel()
        ls = np.asarray(loss, dtype=np.float64).ravel()
        n = ls.size
        if ep.size != n:
            raise ValueError(f"steps: 'epoch' has {ep.size} entries but 'loss' has {n}")

        def col(x: Any, default: float, name: str) -> np.ndarray:
            if x is None:
                return np.full(n, default, dtype=np.float64)
            a = np.asarray(x, dtype=np.float64).ravel()
            if a.size != n:
                raise ValueError(f"steps: {name!r} has {a.size} entries but 'loss' has {n}")
            return a

        bs = col(batch_size, 1.0, "batch_size")
        if position is None:
            pos = np.empty(n, dtype=np.float64)
            for e in np.unique(ep):
                idx = np.flatnonzero(ep == e)
                w = bs[idx]
                total = w.sum()
                centres = (np.cumsum(w) - w / 2.0) / total if total > 0 else (np.arange(idx.size) + 0.5) / idx.size
                pos[idx] = e + centres
        else:
            pos = col(position, 0.0, "position")
        return cls(ep, pos, ls, bs, col(penalty, 0.0, "penalty"), col(span, 1.0, "span"))

    def select(self, mask: np.ndarray) -> "Steps":
        """Rows where ``mask`` is true."""
        return Steps(*(getattr(self, c)[mask] for c in self.COLUMNS))

    def for_epoch(self, index: int) -> "Steps":
        """The steps of one epoch."""
        return self.select(self.epoch == index)

    @staticmethod
    def concat(parts: Iterable["Steps"]) -> "Steps":
        """Concatenate several step tables in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Steps()
        return Steps(*(np.concatenate([getattr(p, c) for p in parts]) for c in Steps.COLUMNS))


@dataclass
class Run:
    """A training run: steps, epochs and metadata.

    Attributes
    ----------
    name : str
        The user's name for the run.
    epochs : list of Epoch
        Finished epochs in order.
    steps : Steps
        Step (or window) losses.
    meta : dict
        Facts about the run, as stored (JSON); read it through :attr:`info`, the typed view
        (:class:`losslens.meta.RunInfo`), except user extras (``info.extras``).
    id : int or None
        Row id in a :class:`losslens.store.Store`, None when not stored.
    status : str
        ``"running"`` (or killed), ``"finished"``, ``"imported"``.
    experiment : str or None
        Name of the group of runs this one belongs to (several seeds of one configuration).
    """

    name: str
    epochs: list[Epoch] = field(default_factory=list)
    steps: Steps = field(default_factory=Steps)
    meta: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    status: str = "running"
    experiment: str | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def info(self) -> "RunInfo":
        """The typed view of :attr:`meta` (probe, loss, split, framework, extras); a snapshot: changing it does not
        change :attr:`meta` (write ``run.meta.update(info.to_meta())``)."""
        from .meta import RunInfo

        return RunInfo.from_meta(self.meta)

    def series(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-epoch series of one quantity.

        Parameters
        ----------
        kind : str
            A measurement kind, ``"train_loss"`` (R), ``"reported_loss"`` (R + Ω),
            ``"penalty"`` (Ω), or the name of a metric in :attr:`Epoch.metrics`.

        Returns
        -------
        epochs, values, sems : numpy.ndarray, shape (n_epochs,)
            Epoch indices, values (NaN where missing) and standard errors (NaN
            where unknown).
        """
        idx = np.array([e.index for e in self.epochs], dtype=np.int64)
        vals = np.full(len(self.epochs), np.nan)
        sems = np.full(len(self.epochs), np.nan)
        for i, e in enumerate(self.epochs):
            if kind in MEASUREMENT_KINDS:
                m = e.measurements.get(kind)
                if m is not None:
                    vals[i], sems[i] = m.mean, m.sem
            elif kind == "train_loss":
                vals[i] = e.train_loss
            elif kind == "reported_loss":
                vals[i] = e.reported_loss
            elif kind == "penalty":
                vals[i] = e.penalty
            else:
                vals[i] = e.metrics.get(kind, np.nan)
        return idx, vals, sems

    def has(self, kind: str) -> bool:
        """Whether any epoch carries a measurement of ``kind``."""
        return any(kind in e.measurements for e in self.epochs)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """A JSON-serialisable view (NaN and inf become None).

        Parameters
        ----------
        per_sample : bool
            Include the per-sample loss arrays (large).
        """
        def num(x: float) -> float | None:
            return float(x) if x is not None and math.isfinite(x) else None

        epochs = []
        for e in self.epochs:
            ms = {}
            for k, m in e.measurements.items():
                d = {"mean": num(m.mean), "sem": num(m.sem), "n": m.n, "source": m.source}
                if per_sample and m.values is not None:
                    d["values"] = [num(float(v)) for v in m.values]
                    if m.weights is not None:
                        d["weights"] = [float(w) for w in m.weights]
                ms[k] = d
            epochs.append(
                {
                    "epoch": e.index,
                    "position": num(e.position),
                    "train_loss": num(e.train_loss),
                    "penalty": num(e.penalty),
                    "reported_loss": num(e.reported_loss),
                    "n_steps": e.n_steps,
                    "n_samples": e.n_samples,
                    "seconds": num(e.seconds),
                    "probe_seconds": num(e.probe_seconds),
                    "measurements": ms,
                    "metrics": {k: num(v) for k, v in e.metrics.items()},
                }
            )
        return {
            "name": self.name,
            "id": self.id,
            "status": self.status,
            "experiment": self.experiment,
            # per-sample hash lists are for comparing runs inside the store, not for reports
            "meta": _jsonable({k: v for k, v in self.meta.items() if not k.endswith("_hashes")}),
            "epochs": epochs,
            "n_steps": len(self.steps),
        }


def to_jsonable(x: Any, fallback: Any = None) -> Any:
    """Recursively convert to JSON-safe values: NaN/inf -> None, numpy -> Python, tuples and sets -> lists.

    Parameters
    ----------
    x : Any
    fallback : callable, optional
        Applied to values of any other type (e.g. ``str`` for reports); by
        default they are returned unchanged, so ``json.dumps`` can still reject them.
    """
    t = type(x)
    if t is float:  # the common cases first, by exact type: reports of long runs hold millions of values
        return x if math.isfinite(x) else None
    if t is str or t is int or x is None:
        return x
    if t is dict:
        return {str(k): to_jsonable(v, fallback) for k, v in x.items()}
    if t is list:
        return [to_jsonable(v, fallback) for v in x]
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v, fallback) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [to_jsonable(v, fallback) for v in x]
    if isinstance(x, np.ndarray):
        return [to_jsonable(v, fallback) for v in x.tolist()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if x is None or isinstance(x, (str, int)) or fallback is None:
        return x
    return fallback(x)


_jsonable = to_jsonable  # the name used inside the package


def loss_unit(run: "Run") -> str:
    """``"loss per token"`` for a run measured with token-weighted per-sample losses (language models, see
    :attr:`Measurement.weights`), else ``"loss per sample"``: the unit every mean of the run is in."""
    weighted = any(m.weights is not None for e in run.epochs for m in e.measurements.values())
    return "loss per token" if weighted or run.info.loss.per_sample_method == "token-weighted" else "loss per sample"


def record_measurement_error(run: "Run", epoch: int, exc: BaseException) -> None:
    """Note in ``run.meta["measurement_errors"]`` that the probe/validation passes of ``epoch`` failed.

    The adapters call it when their own passes raise: the epoch is then recorded with its step losses and
    without measurements, a warning names the error once per run, and training goes on (DESIGN.md: a failed
    measurement is recorded as missing with its error and never stops the user's training).
    """
    import warnings

    errs = run.meta.setdefault("measurement_errors", [])
    errs.append({"epoch": int(epoch), "error": f"{type(exc).__name__}: {exc}"[:500]})
    if len(errs) == 1:
        warnings.warn(f"losslens: the probe/validation passes of epoch {epoch} failed ({type(exc).__name__}: "
                      f"{str(exc)[:200]}); the epoch is recorded without them and training goes on",
                      RuntimeWarning, stacklevel=3)
