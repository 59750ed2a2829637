"""One run of an experiment summarized for the verdicts across seeds: its best epoch, its generalization gap,
its decomposition terms and their per-sample parts, its regime."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..diagnose import decompose, diagnose
from ..record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Run

__all__ = ["RunSummary", "summarize_run"]


@dataclass
class RunSummary:
    """What one run contributes to an experiment's verdicts.

    Attributes
    ----------
    label : str
        Run name (with its store id when stored).
    best_epoch : int
        Epoch of the lowest validation loss (-1 when none).
    best_val : float
        Lowest validation loss (loss per sample, eval mode, end of epoch).
    best_val_se : float
        Its within-run standard error (per-sample losses of the validation set).
        The selection of the minimum is not accounted for (optimistic by the
        usual winner's-curse bias).
    at_epoch : int
        Epoch of the decomposition terms (``at="last"``: the last decomposed
        epoch; ``at="best"``: the best epoch).
    gap, gap_se : float
        Generalization gap V − C at ``at_epoch`` and its SE (NaN without probes).
    terms : dict of str -> (value, se, status)
        Decomposition terms at ``at_epoch``.
    regime : str or None
        The run's regime finding code.
    codes : list of str
        Every finding code of the run's diagnosis.
    n_epochs : int
    """

    label: str
    best_epoch: int = -1
    best_val: float = math.nan
    best_val_se: float = math.nan
    at_epoch: int = -1
    gap: float = math.nan
    gap_se: float = math.nan
    terms: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    regime: str | None = None
    codes: list[str] = field(default_factory=list)
    n_epochs: int = 0
    #: quantity -> [(sign, evaluation-set key, per-sample values)]: the per-sample parts whose means make the
    #: quantity (used for the sampling error shared by runs evaluated on the same samples).
    samples: dict[str, list[tuple[float, str, np.ndarray]]] = field(default_factory=dict, repr=False)

    def quantity(self, name: str) -> tuple[float, float]:
        """(value, within-run SE) of ``best_val``, ``gap`` or a term name (NaN when absent)."""
        if name == "best_val":
            return self.best_val, self.best_val_se
        if name == "gap":
            return self.gap, self.gap_se
        v = self.terms.get(name)
        return (v[0], v[1]) if v is not None else (math.nan, math.nan)


def _label(run: Run, i: int = 0) -> str:
    base = run.name or f"run {i}"
    return f"{base} (id {run.id})" if run.id is not None else base


def summarize_run(run: Run, at: str = "last", label: str | None = None) -> RunSummary:
    """Per-run numbers used across seeds.

    Parameters
    ----------
    run : Run
    at : str
        ``"last"`` (default): decomposition at the last epoch with a training and
        validation loss; ``"best"``: at the epoch of lowest validation loss.
    label : str, optional
        Label of the run in reports (default: its name and id).

    Raises
    ------
    ValueError
        If ``at`` is not ``"last"`` or ``"best"``.
    """
    if at not in ("last", "best"):
        raise ValueError(f"at={at!r}: expected 'last' or 'best'")
    s = RunSummary(label or _label(run), n_epochs=len(run.epochs))
    best = None
    for e in run.epochs:
        m = e.measurements.get(VALIDATION)
        if m is not None and math.isfinite(m.mean) and (best is None or m.mean < best[1].mean):
            best = (e.index, m)
    if best is not None:
        s.best_epoch, s.best_val, s.best_val_se = best[0], float(best[1].mean), float(best[1].sem)
    dec = [d for d in decompose(run) if all(math.isfinite(t.value) for t in d.terms.values())]
    if dec:
        d = dec[-1]
        if at == "best" and best is not None:
            d = next((x for x in dec if x.epoch == best[0]), d)
        s.at_epoch = d.epoch
        s.terms = {n: (float(t.value), float(t.se), t.status) for n, t in d.terms.items()}
        g = d.generalization_gap
        if g is not None:
            s.gap, s.gap_se = float(g.value), float(g.se)
        s.samples.update(_per_sample_parts(run, next(e for e in run.epochs if e.index == d.epoch)))
    best_lin = best[1].linearized() if best is not None else None
    if best is not None and best_lin is not None:
        s.samples["best_val"] = [(1.0, _set_key(run, "val", best_lin.size), best_lin)]
    diag = diagnose(run)
    s.codes = diag.codes()
    s.regime = next((c for c in s.codes if c.startswith("regime.")), None)
    return s


def _set_key(run: Run, which: str, n: int) -> str:
    """Identity of an evaluation set: its fingerprint when recorded (else unknown), and its size."""
    if which == "val":
        fpr = run.info.split.val_fingerprint
    else:
        fpr = run.info.probe.fingerprint or run.info.extras.get("probe_content_fingerprint")
    return f"{which}:{fpr}:{n}"


def _per_sample_parts(run: Run, e: Any) -> dict[str, list[tuple[float, str, np.ndarray]]]:
    """Per-sample parts of each decomposition term at epoch ``e`` (see :attr:`RunSummary.samples`)."""
    out: dict[str, list[tuple[float, str, np.ndarray]]] = {}
    c, v = e.get(EVAL_CLEAN), e.get(VALIDATION)
    a, t = e.get(EVAL_AUGMENTED), e.get(TRAIN_MODE)
    cv = c.linearized() if c is not None else None   # token-weighted losses: their linearisation
    if cv is None:
        return out
    al = a.linearized() if a is not None else None
    tl = t.linearized() if t is not None else None
    av = al if al is not None and al.size == cv.size else cv
    tv = tl if tl is not None and tl.size == cv.size else av
    pk = _set_key(run, "probe", cv.size)
    out["timing"] = [(-1.0, pk, tv)]
    if tv is not av:
        out["train_mode"] = [(1.0, pk, tv - av)]
    if av is not cv:
        out["augmentation"] = [(1.0, pk, av - cv)]
    vv = v.linearized() if v is not None else None
    if vv is not None:
        vk = _set_key(run, "val", vv.size)
        out["generalization_gap"] = [(-1.0, pk, cv), (1.0, vk, vv)]
    return out
