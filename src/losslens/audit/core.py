"""``audit_split`` and its result."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..recording.deprecations import deprecated_page
from .difficulty import Difficulty, difficulty, losses_from_run
from .duplicates import ExactDuplicates, find_exact_duplicates
from .inputs import SplitData, as_split, check_compatible, pair_argument
from .near import NEAR_THRESHOLD, NearDuplicates, find_near_duplicates
from .shift import LABEL_ALPHA, FeatureShift, LabelShift, feature_shift, features_for_shift, label_shift

__all__ = ["AuditResult", "GroupLeak", "audit_split", "group_leak"]


def _key(v: Any) -> str:
    return str(v.item() if hasattr(v, "item") else v)


@dataclass
class GroupLeak:
    """Groups (patient, subject, session, ...) present in both splits.

    Attributes
    ----------
    shared : list of str
        Group keys found in both splits (as strings, sorted; at most 1 000).
    n_shared : int
        Number of shared groups.
    n_train_groups, n_val_groups : int
        Distinct groups per split.
    val_indices : numpy.ndarray
        Validation samples whose group also occurs in training.
    n_train_samples : int
        Training samples in shared groups.
    """

    shared: list
    n_shared: int
    n_train_groups: int
    n_val_groups: int
    val_indices: np.ndarray
    n_train_samples: int

    @property
    def n_val_samples(self) -> int:
        return int(len(self.val_indices))

    def to_dict(self) -> dict[str, Any]:
        return {"shared": list(self.shared), "n_shared": self.n_shared, "n_train_groups": self.n_train_groups,
                "n_val_groups": self.n_val_groups, "n_val_samples": self.n_val_samples,
                "n_train_samples": self.n_train_samples}


def group_leak(groups_train: Any, groups_val: Any) -> GroupLeak:
    """Groups that occur in both splits (exact key equality).

    Parameters
    ----------
    groups_train : array-like (n_train,)
    groups_val : array-like (n_val,)
        Group key per sample (ints or strings; compared as their string form, so
        ``7`` and ``"7"`` are the same group).

    Returns
    -------
    GroupLeak
    """
    a = np.asarray([_key(g) for g in np.asarray(groups_train, dtype=object)], dtype=object)
    b = np.asarray([_key(g) for g in np.asarray(groups_val, dtype=object)], dtype=object)
    sa, sb = set(a.tolist()), set(b.tolist())
    shared = sorted(sa & sb)
    ss = set(shared)
    vi = np.fromiter((i for i, g in enumerate(b) if g in ss), np.int64)
    n_tr = int(sum(1 for g in a if g in ss))
    return GroupLeak(shared[:1000], len(shared), len(sa), len(sb), vi, n_tr)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _p(p: float, name: str = "p") -> str:
    if not math.isfinite(p):
        return f"{name} n/a"
    return f"{name} = {p:.2g}" if p >= 1e-4 else f"{name} < 0.0001"


@dataclass
class AuditResult:
    """Everything :func:`audit_split` found.

    Attributes
    ----------
    kind : str
        ``"array"``, ``"image"``, ``"table"`` or ``"text"``.
    n_train, n_val : int
    train_source, val_source : str
        What was passed, in words.
    exact : ExactDuplicates
    near : NearDuplicates or None
        None when skipped (``near=False``) or impossible.
    groups : GroupLeak or None
        None without group keys.
    label_shift : LabelShift or None
        None without labels.
    feature_shift : FeatureShift or None
    difficulty : Difficulty or None
        None without per-sample losses.
    notes : list of str
        Checks skipped and why.
    seconds : dict
        Wall time per check.
    """

    kind: str
    n_train: int
    n_val: int
    train_source: str
    val_source: str
    exact: ExactDuplicates
    near: NearDuplicates | None = None
    groups: GroupLeak | None = None
    label_shift: LabelShift | None = None
    feature_shift: FeatureShift | None = None
    difficulty: Difficulty | None = None
    notes: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    _train: SplitData | None = field(default=None, repr=False)
    _val: SplitData | None = field(default=None, repr=False)

    # ------------------------------------------------------------ derived
    @property
    def leaked_val_indices(self) -> np.ndarray:
        """Validation indices with an exact or near duplicate, or in a shared group."""
        parts = [self.exact.val_indices]
        if self.near is not None:
            parts.append(self.near.val_indices)
        if self.groups is not None:
            parts.append(self.groups.val_indices)
        return np.unique(np.concatenate(parts)).astype(np.int64)

    @property
    def clean(self) -> bool:
        """True when no check flagged anything."""
        return not any(f.severity != "info" for f in self.findings())

    # ------------------------------------------------------------ outputs
    def to_dict(self, max_pairs: int = 1000) -> dict[str, Any]:
        """JSON-safe dict (NaN/inf as None; at most ``max_pairs`` pairs per list)."""
        return {
            "kind": self.kind, "n_train": self.n_train, "n_val": self.n_val,
            "train_source": self.train_source, "val_source": self.val_source,
            "exact_duplicates": self.exact.to_dict(max_pairs),
            "near_duplicates": self.near.to_dict(max_pairs) if self.near is not None else None,
            "group_leak": self.groups.to_dict() if self.groups is not None else None,
            "label_shift": self.label_shift.to_dict() if self.label_shift is not None else None,
            "feature_shift": self.feature_shift.to_dict() if self.feature_shift is not None else None,
            "difficulty": self.difficulty.to_dict() if self.difficulty is not None else None,
            "notes": list(self.notes), "seconds": {k: float(v) for k, v in self.seconds.items()},
            "findings": [f.to_dict() for f in self.findings()],
        }

    def summary_lines(self) -> list[str]:
        """One plain-text line per check, for terminals and logs."""
        lines = [f"Split audit: {self.n_train} training × {self.n_val} validation samples ({self.kind}; "
                 f"train: {self.train_source}; val: {self.val_source})"]
        e = self.exact
        lines.append(f"Exact duplicates: {e.n_val_duplicated} validation samples ({_pct(e.fraction_val)}) have an "
                     f"identical training sample ({e.n_pairs} pairs)")
        if self.near is not None:
            nd = self.near
            lines.append(f"Near duplicates (not exact): {nd.n_val_near} validation samples within distance "
                         f"{nd.radius:.3g} (= {nd.threshold:g} × median nearest-neighbour distance "
                         f"{nd.median_nn_train:.3g} within training) in {nd.feature_space}")
        if self.groups is not None:
            g = self.groups
            lines.append(f"Group leak: {g.n_shared} of {g.n_val_groups} validation groups also in training "
                         f"({g.n_val_samples} validation samples)")
        if self.label_shift is not None:
            ls = self.label_shift
            verdict = "SHIFTED" if ls.flagged else "no shift"
            if ls.kind == "classes":
                lines.append(f"Label shift: chi-square {ls.statistic:.3g} (df {ls.dof}), {_p(ls.p_value)}, "
                             f"Cramér's V = {ls.effect:.3f}: {verdict}")
            else:
                lines.append(f"Label shift: KS D = {ls.effect:.3f}, {_p(ls.p_value)}: {verdict}")
        if self.feature_shift is not None:
            fs = self.feature_shift
            verdict = "SHIFTED" if fs.flagged else "no shift"
            extra = (f", {_p(fs.p_permutation, 'permutation p')} ({fs.n_permutations} permutations), "
                     f"{_p(fs.p_normal, 'normal-fit p')}" if fs.null_aucs else f", {_p(fs.p_screen, 'screen p')}")
            top = ", ".join(f["name"] for f in fs.top_features[:3])
            lines.append(f"Feature shift: adversarial-validation ROC AUC {fs.auc:.3f}{extra}: {verdict}"
                         + (f" (most separating: {top})" if top else ""))
        if self.difficulty is not None:
            d = self.difficulty
            if d.val_vs_probe is not None:
                c = d.val_vs_probe
                lines.append(f"Difficulty: validation − probe loss = {c.diff:+.4g} "
                             f"[{c.ci_low:+.4g}, {c.ci_high:+.4g}] (95 % bootstrap), {_p(c.ks_p, 'KS p')}: "
                             + ("validation easier" if c.below_zero else
                                "validation harder" if c.above_zero else "no difference beyond noise"))
            if d.leaked_vs_clean is not None:
                c = d.leaked_vs_clean
                lines.append(f"Leaked vs clean validation samples: loss {c.mean_a:.4g} vs {c.mean_b:.4g} "
                             f"(difference {c.diff:+.4g} [{c.ci_low:+.4g}, {c.ci_high:+.4g}]); validation loss "
                             f"without leaked samples {d.val_loss_clean:.4g} (with: {d.val_loss:.4g})")
        for n in self.notes:
            lines.append(f"Note: {n}")
        return lines

    def to_html(self, max_pairs: int = 12, include_findings: bool = True) -> str:
        """Deprecated (removed in 0.3): :func:`losslens.report.audit.render_fragment`."""
        return deprecated_page(self, "AuditResult.to_html()", "losslens.report.audit.render_fragment(result)",
                               "audit_fragment", max_pairs=max_pairs, include_findings=include_findings)

    def save_html(self, path: str, title: str = "losslens split audit") -> None:
        """Deprecated (removed in 0.3): :func:`losslens.report.audit.save_page`."""
        deprecated_page(self, "AuditResult.save_html()", "losslens.report.audit.save_page(result, path)",
                        "audit_page", path=path, title=title)

    def findings(self) -> list:
        """Findings with stable codes (``split.*``); see :func:`losslens.audit.findings.split_findings`."""
        from .findings import split_findings

        return split_findings(self)


def audit_split(train: Any, val: Any, *, labels: Any = None, groups: Any = None,
                embeddings: tuple[Any, Any] | None = None, val_losses: Any = None, probe_losses: Any = None,
                run: Any = None, epoch: int | None = None, kind: str = "auto",
                image_shape: Sequence[int] | None = None, near: bool = True,
                near_threshold: float = NEAR_THRESHOLD, metric: str = "auto", max_shift: int = 1,
                shift: bool = True, n_permutations: int = 19, max_samples: int = 2500,
                alpha: float = LABEL_ALPHA, seed: int = 0) -> AuditResult:
    """Audit a train/validation split: duplicates, near duplicates, group leaks, shift, difficulty.

    Parameters
    ----------
    train, val : array-like, DataFrame, list of str, or torch tensor/dataset
        The two splits, of the same kind: NumPy arrays ``(n, d)`` (feature
        rows), ``(n, H, W)``, ``(n, H, W, C)`` or ``(n, C, H, W)`` (images),
        1-D arrays or lists of strings (text), pandas DataFrames (tables), torch
        tensors or map-style datasets (items ``(x, y)``; their labels are used
        when ``labels`` is not given). torch is only touched when given.
    labels : str or (array (n_train,), array (n_val,)), optional
        Class labels or targets: a column name (DataFrames) or one array per split.
    groups : str or (array (n_train,), array (n_val,)), optional
        Group keys (patient, subject, session): a column name or one array per split.
    embeddings : (array (n_train, d), array (n_val, d)), optional
        Features for the near-duplicate search (e.g. the model's penultimate
        layer); default: the inputs (see :mod:`losslens.audit.near`).
    val_losses : array-like (n_val,), optional
        Per-sample validation losses (eval mode), aligned with ``val``.
    probe_losses : array-like (n_probe,), optional
        Per-sample eval-mode losses on the probe set (clean inputs).
    run : losslens.record.Run, optional
        Take ``val_losses`` / ``probe_losses`` from the run's per-sample
        ``validation`` and ``eval_clean`` measurements (epoch ``epoch``, default
        the last with per-sample validation losses). The validation losses are
        matched to ``val`` only when their count equals ``len(val)``: the
        adapters measure the validation set in its dataset order.
    epoch : int, optional
    kind : {"auto", "array", "image", "table", "text"}
    image_shape : tuple of int, optional
        Read flat rows as images of this shape.
    near : bool
        Run the near-duplicate search (cost: ``n_val × n_train × d`` multiply-adds
        in float32; 9 times that for images with ``max_shift=1``).
    near_threshold : float
        cleanlab's relative near-duplicate threshold (0.13).
    metric : {"auto", "cosine", "euclidean"}
    max_shift : int
        Images: translations (pixels) the near-duplicate distance tolerates.
    shift : bool
        Run the adversarial-validation feature-shift test.
    n_permutations : int
        Permutations of its null (19; see :mod:`losslens.audit.shift`).
    max_samples : int
        Rows per split used by the feature-shift test.
    alpha : float
        Significance level of the shift tests (0.01).
    seed : int
        Seed of every random choice (subsamples, permutations, bootstrap).

    Returns
    -------
    AuditResult

    Raises
    ------
    TypeError
        If an input or argument has an unsupported type (the message names it).
    ValueError
        If the splits differ in kind or sample shape, a per-sample argument has
        the wrong length, or the run has no per-sample validation losses.
    KeyError
        If a named label or group column is missing.

    Examples
    --------
    >>> from sklearn.datasets import load_digits            # doctest: +SKIP
    >>> from losslens.audit import audit_split
    >>> d = load_digits()
    >>> res = audit_split(d.images[:1400], d.images[1400:], labels=(d.target[:1400], d.target[1400:]))
    >>> print("\\n".join(res.summary_lines()))
    """
    seconds: dict[str, float] = {}
    lab = labels if isinstance(labels, str) else pair_argument(labels, "labels")
    grp = groups if isinstance(groups, str) else pair_argument(groups, "groups")
    emb = pair_argument(embeddings, "embeddings")
    tr = as_split(train, "train", kind=kind, labels=lab if isinstance(lab, str) else (lab[0] if lab else None),
                  groups=grp if isinstance(grp, str) else (grp[0] if grp else None), image_shape=image_shape)
    va = as_split(val, "val", kind=kind, labels=lab if isinstance(lab, str) else (lab[1] if lab else None),
                  groups=grp if isinstance(grp, str) else (grp[1] if grp else None), image_shape=image_shape)
    check_compatible(tr, va)
    notes: list[str] = []
    t = time.perf_counter()
    exact = find_exact_duplicates(tr, va)
    seconds["exact_duplicates"] = time.perf_counter() - t
    result = AuditResult(tr.kind, tr.n, va.n, tr.source, va.source, exact, notes=notes, seconds=seconds,
                         _train=tr, _val=va)
    if near:
        if tr.n < 2:
            notes.append("near duplicates not searched: fewer than 2 training samples")
        else:
            t = time.perf_counter()
            result.near = find_near_duplicates(tr, va, embeddings=emb, threshold=near_threshold, metric=metric,
                                               max_shift=max_shift if tr.kind == "image" else 0,
                                               exact_pairs=exact.pairs, seed=seed)
            seconds["near_duplicates"] = time.perf_counter() - t
    if tr.groups is not None and va.groups is not None:
        result.groups = group_leak(tr.groups, va.groups)
    else:
        notes.append("group leakage not checked: no group keys given (groups=)")
    if tr.labels is not None and va.labels is not None:
        t = time.perf_counter()
        result.label_shift = label_shift(tr.labels, va.labels, alpha=alpha)
        seconds["label_shift"] = time.perf_counter() - t
    else:
        notes.append("label shift not checked: no labels given (labels=)")
    if shift:
        n_folds = 3
        if min(tr.n, va.n) < 2 * n_folds:
            notes.append(f"feature shift not checked: fewer than {2 * n_folds} samples in a split")
        else:
            t = time.perf_counter()
            xa, xb, names, cat, desc = features_for_shift(tr, va, seed=seed)
            result.feature_shift = feature_shift(xa, xb, names=names, categorical=cat,
                                                 n_permutations=n_permutations, n_folds=n_folds,
                                                 max_samples=max_samples, alpha=alpha, seed=seed, features=desc)
            seconds["feature_shift"] = time.perf_counter() - t
    source, epochs = "", ()
    if run is not None:
        if val_losses is not None or probe_losses is not None:
            raise TypeError("pass either run= or val_losses=/probe_losses=, not both")
        val_losses, probe_losses, source, ep = losses_from_run(run, epoch)
        epochs = (ep,)
        if val_losses is not None and len(val_losses) != va.n:
            notes.append(f"the run's {len(val_losses)} validation losses do not match the {va.n} validation "
                         "samples: leaked-versus-clean losses not compared")
    elif val_losses is not None:
        source = "per-sample losses passed by the caller"
        if len(np.asarray(val_losses).ravel()) != va.n:
            raise ValueError(f"val_losses: expected {va.n} values (one per validation sample, in the order of "
                             f"val), got {len(np.asarray(val_losses).ravel())}")
    if val_losses is not None:
        t = time.perf_counter()
        result.difficulty = difficulty(val_losses, probe_losses, leaked=result.leaked_val_indices, n_val=va.n,
                                       seed=seed, source=source, epochs=epochs)
        seconds["difficulty"] = time.perf_counter() - t
    elif probe_losses is not None:
        raise ValueError("probe_losses given without val_losses")
    return result
