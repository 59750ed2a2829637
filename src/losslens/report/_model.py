"""Formatting shared by the terminal, HTML and JSON outputs (private)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..record import MEASUREMENT_KINDS, MEASUREMENT_LABELS, Run
from ..record import to_jsonable as _record_to_jsonable

#: Symbols of the per-epoch quantities, in report order.
SYMBOLS = {
    "train_loss": "R",
    "penalty": "Ω",
    "train_mode": "T",
    "end_of_epoch_estimate": "T̂",
    "eval_augmented": "A",
    "eval_clean": "C",
    "validation": "V",
}

#: What each per-epoch quantity is (the legend of every report).
QUANTITY_LABELS = {
    "train_loss": "reported training loss, data part: batch-size weighted mean of the epoch's step losses "
                  "(train mode, augmented inputs, weights changing during the epoch)",
    "penalty": "mean regularization penalty included in the optimised loss (0 when none; optimizer weight "
               "decay is not in the loss)",
    **MEASUREMENT_LABELS,
}

STATUS_STYLE = {"measured": "green", "estimated": "yellow", "skipped": "dim", "not measured": "red"}
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def fmt(x: Any, digits: int = 4) -> str:
    """A number for display: ``nan``/``inf``/``-inf`` for non-finite, ``—`` for None."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f"{f:.{digits}g}"


def fmt_signed(x: Any, digits: int = 4) -> str:
    s = fmt(x, digits)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return s
    return "+" + s if math.isfinite(f) and f > 0 else s


def fmt_pm(x: Any, se: Any, digits: int = 4, signed: bool = False) -> str:
    """``value ± se`` (the ``± se`` part only when the standard error is finite)."""
    v = fmt_signed(x, digits) if signed else fmt(x, digits)
    try:
        s = float(se)
    except (TypeError, ValueError):
        return v
    if math.isfinite(s):
        return f"{v} ± {s:.2g}"
    return v


def epochs_text(epochs: Any) -> str:
    ep = list(epochs or ())
    if not ep:
        return ""
    if len(ep) == 1:
        return f"epoch {ep[0]}"
    if ep == list(range(ep[0], ep[-1] + 1)) and len(ep) > 2:
        return f"epochs {ep[0]}–{ep[-1]}"
    return "epochs " + ", ".join(str(e) for e in ep)


def short_fingerprint(fp: Any) -> str:
    if not isinstance(fp, str) or not fp:
        return "—"
    algo, _, digest = fp.partition(":")
    return f"{algo}:{digest[:12]}" if digest else fp[:16]


def run_facts(run: Run) -> list[tuple[str, str]]:
    """(label, value) pairs describing a run, for headers. Values are plain strings (unescaped)."""
    info = run.info
    facts: list[tuple[str, str]] = [("run", f"{run.name}" + (f" (id {run.id})" if run.id is not None else ""))]
    if run.experiment:
        facts.append(("experiment", str(run.experiment)))
    facts.append(("status", _status_text(run)))
    facts.append(("framework", str(info.framework.name or "unknown")))
    for value, label in ((info.loss.name, "loss"), (info.framework.optimizer, "optimizer"),
                         (info.framework.batch_size, "batch size"), (info.split.train_size, "training samples"),
                         (info.split.val_size, "validation samples"), (info.framework.seed, "seed")):
        if value is not None:
            facts.append((label, fmt(value) if isinstance(value, float) else str(value)))
    scale = run.meta.get("reported_loss_token_scale")
    if isinstance(scale, (int, float)) and scale != 1.0:
        facts.append(("logged losses", f"the Trainer's 'loss' and 'eval_loss' also count each row's first label, "
                      f"which a causal language model never predicts: they read about x{scale:.4g} the model's "
                      "per-token loss. R is divided by that ratio; V is the model's own loss, so it is above the "
                      "logged eval_loss by about as much"))
    if run.meta.get("validation_set"):
        facts.append(("validation set", str(run.meta["validation_set"])))
    p = info.probe
    if p.size is not None:
        facts.append(("probe set", f"{p.size} samples, fingerprint {short_fingerprint(p.fingerprint)}"
                      + (f", seed {p.seed}" if p.seed is not None else "")
                      + (f", stratified by {p.strata} classes" if p.strata else "")))
    elif run.has("eval_clean"):
        facts.append(("probe set", "measured by the losslens callback (its size is in the store, not in the log)"))
    else:
        facts.append(("probe set", "none (no probe passes recorded)"))
    if info.framework.weight_decay not in (None, 0, 0.0):
        facts.append(("weight decay", f"{fmt(info.framework.weight_decay)} (in the optimizer, not in the loss)"))
    for v, label in ((info.framework.dropout_layers, "dropout layers"),
                     (info.framework.batchnorm_layers, "batch-norm layers")):
        if v:
            facts.append((label, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)))
    if info.loss.penalty_in_validation is True:
        facts.append(("framework validation loss", "includes the regularization penalty (Keras adds model.losses "
                      "to val_loss); losslens's validation loss V is the data loss only"))
    elif info.loss.penalty_in_validation is False:
        facts.append(("framework validation loss", "data loss only (no penalty)"))
    if info.loss.baseline is not None:
        facts.append(("baseline loss", f"{fmt(info.loss.baseline)} (best constant predictor)"))
    skipped = info.framework.skipped
    if isinstance(skipped, Mapping) and skipped:
        facts.append(("passes skipped", "; ".join(f"{k}: {v}" for k, v in skipped.items())))
    facts.append(("epochs", f"{len(run.epochs)} recorded, {len(run.steps)} step losses"))
    # what the framework's backend could not give (Keras on JAX: losses and penalty per epoch, not per step)
    if run.meta.get("keras_backend"):
        facts.append(("Keras backend", str(run.meta["keras_backend"])))
    for key, label in (("step_losses", "step losses"), ("penalty_measured", "penalty measured"),
                       ("fastai_train_loss_note", "fastai train_loss")):
        if isinstance(run.meta.get(key), str):
            facts.append((label, run.meta[key]))
    return facts


def _status_text(run: Run) -> str:
    if run.status == "running":
        return (f"running — the run did not finish (still running, or its process was stopped); "
                f"this report shows the {len(run.epochs)} epoch(s) it committed")
    return str(run.status)


def not_finished(run: Run) -> bool:
    return run.status == "running"


def epoch_rows(run: Run) -> list[dict[str, Any]]:
    """One row per epoch: epoch, position and each quantity as (value, se, source)."""
    rows = []
    for e in run.epochs:
        row: dict[str, Any] = {"epoch": e.index, "position": e.position,
                               "train_loss": (e.train_loss, math.nan, "measured"),
                               "penalty": (e.penalty, 0.0 if math.isfinite(e.penalty) else math.nan, "measured")}
        for k in MEASUREMENT_KINDS:
            mm = e.measurements.get(k)
            row[k] = None if mm is None else (mm.mean, mm.sem, mm.source)
        rows.append(row)
    return rows


def to_jsonable(x: Any) -> Any:
    """JSON-safe values for reports (:func:`losslens.record.to_jsonable`; other types as their ``str``)."""
    return _record_to_jsonable(x, fallback=str)
