"""The regime of a run known only by its logged values (an imported log, or a run without a validation loss):
:func:`losslens.diagnose.curves.judge_curve` on its curve, plus what a log can still tell: the evaluations
within noise of the best (``regime.noise_band``), the user's metric against the loss (``regime.user_metric``)
and the other validation sets it logged (``regime.other_validation``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..findings import Evidence, Finding, where
from ..record import VALIDATION, Run
from .curves import judge_curve, noise_band
from .series import curve, train_points

__all__ = ["judged_findings"]


_JUDGED = {
    "degenerate": ("regime.degenerate", "error", "The log looks broken"),
    "unstable": ("stability.erratic", "error", "Erratic loss: the noise is larger than the trend"),
    "not_learning": ("regime.not_learning", "error", "Not learning: the loss barely moves"),
    "insufficient": ("regime.too_few_epochs", "info", "Not enough evaluations to tell the fit regime"),
    "still_improving": ("regime.still_improving", "info", "Still improving: the loss is still falling"),
    "converged": ("regime.converged", "info", "Converged: the loss has stopped improving"),
    "overfitting": ("regime.overfitting", "warning", "Overfitting"),
}

_ADVICE = {
    "regime.degenerate": "Check the loss and the labels: a constant or zero loss means a collapsed model, a "
                         "detached loss, a label leak or a masking bug.",
    "stability.erratic": "Lower the learning rate, use a larger evaluation set or batch, and check the data "
                         "pipeline for shuffling or scaling bugs.",
    "regime.not_learning": "Check the learning rate (raise it if the loss is flat from the start), the labels and "
                           "the inputs; make sure the optimizer updates the parameters you train.",
    "regime.too_few_epochs": "Evaluate more often (or train longer) before judging the regime.",
    "regime.still_improving": "Train longer: the loss has not converged.",
    "regime.converged": "Nothing to gain from more epochs at this learning rate; stop here or change the model, "
                        "the data or the schedule.",
}


def judged_findings(run: Run, role: str) -> list[Finding]:
    """Regime from values alone (imported logs): :func:`.curves.judge_curve` on the validation loss, or on the
    training loss when the run has no validation loss."""

    tpos, tval, tep, tname = train_points(run)
    if role == "validation":
        idx, pos, vms = curve(run, VALIDATION)
        x, y, name = pos, np.array([m.mean for m in vms]), "validation loss"
        j = judge_curve(x, y, role="validation", other=tval if tval.size else None)
        at = idx
    else:
        x, y, name = tpos, tval, tname
        j = judge_curve(x, y, role="training")
        at = tep
    code, sev, title = _JUDGED[j.code]
    if role == "training":
        if code == "regime.too_few_epochs":
            return [Finding(
                "regime.no_validation", "info", "No validation loss, and too few training-loss values to judge",
                f"The log has no validation loss and {y.size} training-loss value(s); {j.reason}.",
                "Pass a validation set (`val=` in losslens, `validation_data=` in Keras, `eval_dataset` in the "
                "Trainer).", [], tuple(at), {"curve": name})]
        title = title.replace("the loss", "the training loss")
    elif code != "regime.overfitting":
        title = title.replace("the loss", "the validation loss")
    data: dict[str, Any] = {"curve": name, **{k: v for k, v in j.data.items()
                                              if isinstance(v, (int, float)) or k == "confidence"}}
    ev: list[Evidence] = []
    epochs: tuple[int, ...] = ()
    n = y.size
    if n:
        ev.append(Evidence(f"{name}, last value", float(y[-1]), math.nan, (at[-1],) if at else ()))
    rec = _ADVICE.get(code, "")
    msg = j.reason[0].upper() + j.reason[1:] + "."
    if role == "training" and code not in ("regime.degenerate",):
        nan_val = run.meta.get("val_all_nan")
        if nan_val:
            msg += (f" The validation loss {nan_val!r} is NaN (or empty) in every evaluation, so overfitting cannot "
                    "be judged.")
            rec += f" Fix the validation loss ({nan_val!r} is never finite: a NaN in the validation data or loss?)."
        else:
            msg += " The log has no validation loss, so this says nothing about overfitting."
            rec += " Add a validation set to judge generalization."
    if code == "regime.overfitting" and j.best is not None and role == "validation":
        best_e = int(idx[j.best])
        ep = next(e for e in run.epochs if e.index == best_e)
        data.update(best_epoch=best_e, best_position=float(ep.position), best_val_loss=float(y[j.best]))
        spe = run.meta.get("steps_per_epoch")
        if run.meta.get("epoch_unit") == "evaluation interval" and isinstance(spe, (int, float)) and spe > 0:
            data["best_step"] = int(round(ep.position * spe))
        best_at = where(run, best_e)
        title = f"Overfitting: validation loss is lowest at {best_at}"
        rec = (f"Keep the weights of {best_at} (early stopping on the validation loss with restore_best_weights, "
               "or load_best_model_at_end in the Trainer); add data, augmentation or regularization to delay the "
               "rise.")
        ev.insert(0, Evidence("best validation loss", float(y[j.best]), math.nan, (best_e,)))
        epochs = (best_e, idx[-1])
    elif at:
        epochs = (at[-1],)
    out = [Finding(code, sev, title, msg, rec.strip(), ev, epochs, data)]
    if role == "validation":
        out += _noise_band_finding(run, idx, x, y)
        out += _user_metric(run, idx, j.code, j.best)
        out += _other_validation_sets(run, tval)
    return out




def _noise_band_finding(run: Run, idx: list[int], x: np.ndarray, y: np.ndarray) -> list[Finding]:
    """``regime.noise_band``: the evaluations within noise of the best, and how much of the run came after the
    last material improvement (in epochs, and optimizer steps where the log has them)."""

    if y.size < 3:
        return []
    nb = noise_band(x, y)
    within = [idx[i] for i in nb["within_noise"]]
    li = idx[nb["last_improvement"]]
    spe = run.meta.get("steps_per_epoch")
    after_ep = float(nb["after"])
    data: dict[str, Any] = {"within_noise_of_best": within, "last_material_improvement": li,
                            "epochs_after_last_improvement": after_ep}
    steps_txt = ""
    if isinstance(spe, (int, float)) and spe > 0 and math.isfinite(spe):
        data["steps_after_last_improvement"] = int(round(after_ep * spe))
        steps_txt = f", {data['steps_after_last_improvement']} optimizer steps"
    total = float(x[-1] - x[0]) if x.size > 1 else 0.0
    share = f" ({100 * after_ep / float(x[-1]):.0f} % of the run)" if x[-1] > 0 else ""
    shown = ", ".join(where(run, e) for e in within[:8]) + (", …" if len(within) > 8 else "")
    return [Finding(
        "regime.noise_band", "info", f"Last material improvement at {where(run, li)}",
        f"{len(within)} of {len(idx)} evaluations are within noise of the best validation loss ({shown}). The "
        f"last one that improved materially on all earlier ones is {where(run, li)}; {after_ep:.3g} epochs"
        f"{steps_txt}{share} came after it.",
        "Any checkpoint within noise of the best is as good as the best; the training after the last material "
        "improvement could have been saved." if after_ep > 0.25 * max(total, 1e-12) else "",
        [], (li,), data)]


#: Metric names whose larger values are better (accuracy-like); others (wer, cer, loss, perplexity) are lower-better.
_HIGHER_BETTER = ("acc", "accuracy", "f1", "precision", "recall", "auc", "roc_auc", "bleu", "rouge", "map",
                  "iou", "dice", "r2", "mcc", "exact_match", "em", "matthews_correlation", "pearson", "spearmanr")


def _user_metric(run: Run, idx: list[int], loss_code: str, loss_best: int | None) -> list[Finding]:
    """``regime.user_metric``: the run judged on the metric the log says the user optimises
    (``metric_for_best_model`` of a trainer_state.json), and whether it disagrees with the loss."""

    m = run.meta.get("metric_for_best_model")
    if not isinstance(m, str) or not m or "loss" in m:
        return []
    logged = {k for e in run.epochs for k in e.metrics}
    name = m if m in logged or m.startswith("eval_") else f"eval_{m}"
    pts = [(e.index, e.position, e.metrics[name]) for e in run.epochs
           if name in e.metrics and math.isfinite(e.metrics[name])]
    if len(pts) < 3:
        return []
    gib = run.meta.get("greater_is_better")
    higher = bool(gib) if isinstance(gib, bool) else any(m.lower().endswith(h) for h in _HIGHER_BETTER)
    vals = np.array([v for _, _, v in pts], dtype=np.float64)
    # judged as a loss: a higher-is-better metric reflected within its own range (same level, same scatter)
    judged = float(vals.max() + vals.min()) - vals if higher else vals
    j = judge_curve([p for _, p, _ in pts], judged, role="validation")
    best_i = int(np.argmax(vals) if higher else np.argmin(vals))
    best_e = pts[best_i][0]
    data: dict[str, Any] = {"metric": name, "verdict": j.code, "best_epoch": best_e,
                            "best_value": float(vals[best_i]), "higher_is_better": higher}
    if isinstance(run.meta.get("best_metric"), (int, float)):
        data["logged_best_metric"] = float(run.meta["best_metric"])
    # they disagree when one gets worse (overfitting) and the other does not, or the loss still improves and the
    # metric does not
    disagree = ((loss_code == "overfitting") != (j.code == "overfitting") and loss_code in (
        "overfitting", "converged", "still_improving")) or (loss_code == "still_improving" and j.code in (
            "overfitting", "not_learning", "converged"))
    data["disagrees_with_loss"] = disagree
    msg = (f"On {name} ({'higher' if higher else 'lower'} is better), the metric the run selects its best "
           f"checkpoint by, the run is {j.code.replace('_', ' ')}; its best value {vals[best_i]:.4g} is at "
           f"{where(run, best_e)}.")
    if disagree and loss_code == "overfitting":
        msg += (f" The validation loss says overfitting, the metric does not: not overfitting in the sense that "
                f"matters for {name}. Loss and metric disagree (confidence and calibration worsen while the "
                "decisions still improve); keep the checkpoint the metric selects.")
    elif disagree:
        msg += (f" The validation loss says {loss_code.replace('_', ' ')}: loss and metric disagree; judge "
                f"progress on {name}, which is what the run selects its checkpoint by.")
    elif loss_best is not None and loss_code == "overfitting" and best_e != idx[loss_best]:
        msg += f" The loss is lowest at {where(run, idx[loss_best])} instead."
    return [Finding("regime.user_metric", "warning" if disagree else "info",
                    f"{name}: {j.code.replace('_', ' ')}" + (" (disagrees with the loss)" if disagree else ""),
                    msg, "", [Evidence(f"best {name}", float(vals[best_i]), math.nan, (best_e,), unit=name)],
                    (best_e,), data)]


def _other_validation_sets(run: Run, tval: np.ndarray) -> list[Finding]:
    """``regime.other_validation``: the verdict on each further evaluation set (``eval_<name>_loss``)."""

    roles = run.meta.get("roles")
    names = roles.get("other_val_losses") if isinstance(roles, dict) else None
    out = []
    for name in names or []:
        pts = [(e.index, e.position, e.metrics[name]) for e in run.epochs
               if name in e.metrics and math.isfinite(e.metrics[name])]
        if not pts:
            continue
        j = judge_curve([p for _, p, _ in pts], [v for _, _, v in pts], role="validation",
                        other=tval if tval.size else None)
        data: dict[str, Any] = {"loss": name, "verdict": j.code}
        if j.code == "overfitting" and j.best is not None:
            data["best_epoch"] = pts[j.best][0]
        out.append(Finding(
            "regime.other_validation", "info", f"{name}: {j.code.replace('_', ' ')}",
            f"Judged on the evaluation set logged as {name!r}: {j.reason}.", "", [
                Evidence(f"{name}, last value", float(pts[-1][2]), math.nan, (pts[-1][0],))],
            (pts[-1][0],), data))
    return out
