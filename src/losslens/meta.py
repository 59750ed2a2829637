"""Typed run metadata: what a run says about its probe set, its loss, its split and the framework that wrote it.

``Run.meta`` stays a JSON object in the store (one flat mapping, so stores of every version open); recorders,
importers and the diagnosis go through :class:`RunInfo` (``run.info``), whose dataclasses name, type and document
each key once. Keys that belong to no section (a user's ``meta=`` extras, importer notes) are kept in
:attr:`RunInfo.extras`, untouched.

>>> info = RunInfo.from_meta({"probe_size": 300, "loss_kind": "cross_entropy", "note": "mine"})
>>> info.probe.size, info.loss.kind, info.extras
(300, 'cross_entropy', {'note': 'mine'})
>>> info.to_meta()["probe_size"]
300
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["ProbeInfo", "LossInfo", "SplitInfo", "FrameworkInfo", "RunInfo", "META_FIELDS"]


@dataclass(frozen=True)
class ProbeInfo:
    """The probe set (a fixed, seeded subset of the training set, DESIGN.md).

    Attributes
    ----------
    size : int or None
        Probe samples (None until the first epoch fixes it).
    seed : int or None
        Seed of the probe permutation.
    budget : float or None
        Fraction of an epoch's training compute the probe passes may cost.
    size_reason : str or None
        Which rule chose the size, in words.
    fingerprint : str or None
        Fingerprint of the sorted probe indices (:func:`losslens.record.fingerprint_indices`).
    cost_per_sample_s : float or None
        Measured wall time per probe sample (``probe_size="timed"`` only).
    augmented : bool or None
        Whether an augmented copy of the probe feeds the A and T passes.
    strata : int or None
        Classes the probe is stratified by (:func:`losslens.recording.probe.probe_permutation`); None for a simple
        random sample (targets that are not one class label per sample, or not readable without the inputs).
    eval_batch_size : int or None
        Batch size (samples) of the eval-mode passes (validation and ``C``), set at the first epoch end.
    """

    size: int | None = None
    seed: int | None = None
    budget: float | None = None
    size_reason: str | None = None
    fingerprint: str | None = None
    cost_per_sample_s: float | None = None
    augmented: bool | None = None
    eval_batch_size: int | None = None
    strata: int | None = None


@dataclass(frozen=True)
class LossInfo:
    """The loss, per sample.

    Attributes
    ----------
    name : str or None
        The loss function's name (e.g. ``"CrossEntropyLoss"``).
    kind : {"cross_entropy", "binary_cross_entropy", "mse", "mae"} or None
    baseline : float or None
        Loss of the best constant predictor (label-prior entropy, target variance, ...).
    per_sample_method : str or None
        How per-sample losses were derived (``"reduction=none"``, ``"per-sample calls"``).
    per_sample_check : dict or None
        Mean of the per-sample losses vs the framework's own loss on one batch.
    reported_kind : str or None
        What the reported training loss averages: ``"epoch_mean"``, ``"window_mean"``, ``"ema"``.
    penalty_source : str or None
        Where the penalty in the optimised loss comes from (``"callable"``, ``"constant"``, ``"model.losses"``).
    penalty_in_validation : bool or None
        Whether the framework's own validation loss includes the penalty (Keras: yes).
    """

    name: str | None = None
    kind: str | None = None
    baseline: float | None = None
    per_sample_method: str | None = None
    per_sample_check: dict | None = None
    reported_kind: str | None = None
    penalty_source: str | None = None
    penalty_in_validation: bool | None = None


@dataclass(frozen=True)
class SplitInfo:
    """The training and validation sets.

    Attributes
    ----------
    train_size, val_size : int or None
        Samples.
    train_fingerprint, val_fingerprint : str or None
        Order-independent content fingerprints (:mod:`losslens.recording.fingerprint`).
    exact_duplicates : dict or None
        The exact-duplicate check run when recording started (:func:`losslens.recording.input_duplicates`).
    """

    train_size: int | None = None
    val_size: int | None = None
    train_fingerprint: str | None = None
    val_fingerprint: str | None = None
    exact_duplicates: dict | None = None


@dataclass(frozen=True)
class FrameworkInfo:
    """What wrote the run and how it trained.

    Attributes
    ----------
    name : str or None
        ``"torch"``, ``"keras"``, ``"lightning"``, ``"transformers"``, or an importer's framework.
    optimizer : str or None
        Optimizer class name.
    weight_decay : float, list of float or None
        Optimizer weight decay (per parameter group when they differ).
    batch_size : int or None
        Training batch size (the train-mode probe pass uses it).
    seed : int or None
        The user's training seed.
    world_size : int or None
        Processes under ``torch.distributed``.
    dropout_layers, batchnorm_layers : list of str
        Layers that make train mode differ from eval mode.
    skipped : dict
        Probe passes skipped, with the reason (``{"train_mode": "no dropout or batch norm ..."}``).
    """

    name: str | None = None
    optimizer: str | None = None
    weight_decay: Any = None
    batch_size: int | None = None
    seed: int | None = None
    world_size: int | None = None
    dropout_layers: list = field(default_factory=list)
    batchnorm_layers: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)


#: (section, attribute) -> the key in ``Run.meta`` (and in stores).
META_FIELDS: dict[tuple[str, str], str] = {
    ("probe", "size"): "probe_size", ("probe", "seed"): "probe_seed", ("probe", "budget"): "probe_budget",
    ("probe", "size_reason"): "probe_size_reason", ("probe", "fingerprint"): "probe_fingerprint",
    ("probe", "cost_per_sample_s"): "probe_cost_per_sample_s", ("probe", "augmented"): "augmented_probe",
    ("probe", "strata"): "probe_strata", ("probe", "eval_batch_size"): "eval_batch_size",
    ("loss", "name"): "loss", ("loss", "kind"): "loss_kind", ("loss", "baseline"): "baseline_loss",
    ("loss", "per_sample_method"): "per_sample_method", ("loss", "per_sample_check"): "per_sample_loss_check",
    ("loss", "reported_kind"): "reported_loss_kind", ("loss", "penalty_source"): "penalty_source",
    ("loss", "penalty_in_validation"): "penalty_in_validation",
    ("split", "train_size"): "train_size", ("split", "val_size"): "val_size",
    ("split", "train_fingerprint"): "train_fingerprint", ("split", "val_fingerprint"): "val_fingerprint",
    ("split", "exact_duplicates"): "split_exact_duplicates",
    ("framework", "name"): "framework", ("framework", "optimizer"): "optimizer",
    ("framework", "weight_decay"): "weight_decay", ("framework", "batch_size"): "batch_size",
    ("framework", "seed"): "seed", ("framework", "world_size"): "world_size",
    ("framework", "dropout_layers"): "dropout_layers", ("framework", "batchnorm_layers"): "batchnorm_layers",
    ("framework", "skipped"): "skipped",
}

_SECTIONS = {"probe": ProbeInfo, "loss": LossInfo, "split": SplitInfo, "framework": FrameworkInfo}
_KNOWN = set(META_FIELDS.values())
_DEFAULT_FACTORY = {"dropout_layers", "batchnorm_layers", "skipped"}


@dataclass(frozen=True)
class RunInfo:
    """The typed view of ``Run.meta``.

    Attributes
    ----------
    probe : ProbeInfo
    loss : LossInfo
    split : SplitInfo
    framework : FrameworkInfo
    extras : dict
        Every key of ``Run.meta`` that no section owns (user extras, importer and framework details).
    """

    probe: ProbeInfo = field(default_factory=ProbeInfo)
    loss: LossInfo = field(default_factory=LossInfo)
    split: SplitInfo = field(default_factory=SplitInfo)
    framework: FrameworkInfo = field(default_factory=FrameworkInfo)
    extras: dict = field(default_factory=dict)

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> "RunInfo":
        """Read a ``Run.meta`` mapping (any version: missing keys are None, unknown keys go to ``extras``)."""
        meta = dict(meta or {})
        parts: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for (section, attr), key in META_FIELDS.items():
            if key in meta and not (attr in _DEFAULT_FACTORY and meta[key] is None):
                parts[section][attr] = meta[key]
        sections = {name: typ(**parts[name]) for name, typ in _SECTIONS.items()}
        return cls(extras={k: v for k, v in meta.items() if k not in _KNOWN}, **sections)

    def to_meta(self) -> dict[str, Any]:
        """The flat mapping stored in ``Run.meta`` (every section key, then the extras)."""
        out: dict[str, Any] = {}
        for (section, attr), key in META_FIELDS.items():
            out[key] = getattr(getattr(self, section), attr)
        out.update(self.extras)
        return out

    def with_(self, **sections: Any) -> "RunInfo":
        """A copy with some sections replaced (``info.with_(probe=replace(info.probe, size=300))``)."""
        unknown = set(sections) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"RunInfo.with_: unknown section(s) {sorted(unknown)}")
        return replace(self, **sections)
