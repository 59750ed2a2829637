"""``stopping.checkpoints``: which saved checkpoint to keep, from a log and the checkpoint folders beside it.

Trainers keep a few checkpoints (Hugging Face's ``save_total_limit``) and often delete the truly best one; the
evaluations within noise of the best are equally good choices. From the validation loss at each evaluation, the
checkpoints on disk (``run.info.extras["checkpoints_on_disk"]``, found by the ``trainer_state.json`` importer) and
the curve's noise (:func:`losslens.diagnose.curves.noise_band`): which checkpoints are within noise of the best
evaluation, which one to keep (the lowest validation loss still on disk), whether the best one was deleted, and how
much training came after the last material improvement.
"""

from __future__ import annotations

import math

import numpy as np

from ..findings import Evidence, Finding
from ..record import VALIDATION, Run
from .curves import noise_band

__all__ = ["checkpoint_findings"]

#: How each framework keeps its best checkpoint, and its noise-aware stopper.
_KEEP_BEST = {
    "transformers": "save with load_best_model_at_end=True (the Trainer then keeps the best)",
    "lightning": "ModelCheckpoint(monitor='val_loss', save_top_k=1) keeps the best",
    "keras": "keras.callbacks.ModelCheckpoint(path, monitor='val_loss', save_best_only=True) keeps the best",
}
_STOPPER = {"transformers": "losslens.transformers.EarlyStoppingCallback",
            "lightning": "losslens.lightning.EarlyStopping", "keras": "losslens.keras.EarlyStopping"}


def checkpoint_findings(run: Run) -> list[Finding]:
    """The ``stopping.checkpoints`` finding (a list of zero or one), for runs whose log lists checkpoints."""
    extras = run.info.extras
    on_disk = extras.get("checkpoints_on_disk")
    spe = extras.get("checkpoint_steps_per_epoch", extras.get("steps_per_epoch"))
    unit = str(extras.get("checkpoint_unit") or "step")        # Keras names checkpoints by epoch
    names_ = extras.get("checkpoint_names")
    names: dict = names_ if isinstance(names_, dict) else {}
    framework = str(run.info.framework.name or "")

    def ck(s: int) -> str:
        return str(names.get(str(s), f"checkpoint-{s}"))
    if not isinstance(on_disk, list) or not isinstance(spe, (int, float)) or not math.isfinite(spe) or spe <= 0:
        return []
    pts = [(e.index, e.position, e.measurements[VALIDATION].mean) for e in run.epochs
           if VALIDATION in e.measurements and math.isfinite(e.measurements[VALIDATION].mean)
           and math.isfinite(e.position)]
    if len(pts) < 2 or (not on_disk and not extras.get("best_model_checkpoint")):
        return []   # no folder on disk and no sign the run saved any: a log copied on its own
    x = np.array([p for _, p, _ in pts])
    y = np.array([v for _, _, v in pts])
    step_of = [int(round(p * spe)) for p in x]
    at_step = {s: i for i, s in enumerate(step_of)}
    nb = noise_band(x, y)
    best = int(np.argmin(y))
    within = [step_of[i] for i in nb["within_noise"]]
    saved = [s for s in on_disk if s in at_step]
    unevaluated = [s for s in on_disk if s not in at_step]
    keep = min(saved, key=lambda s: y[at_step[s]]) if saved else None
    last = nb["last_improvement"]
    after = float(nb["after"])
    data = {"on_disk": list(on_disk), "evaluated_on_disk": saved, "within_noise_of_best": within,
            "best_step": step_of[best], "best_on_disk": step_of[best] in on_disk, "keep": keep,
            "last_material_improvement_step": step_of[last], "epochs_after_last_improvement": after}
    listed = ", ".join(ck(s) for s in on_disk)
    parts = [f"The best evaluation is at {unit} {step_of[best]} (validation loss {y[best]:.4g}); within noise of "
             f"it: {unit}{'s' if len(within) > 1 else ''} {', '.join(map(str, within))}."]
    if not on_disk:
        parts.append("No checkpoint is on disk beside the log.")
    elif keep is None:
        parts.append(f"The checkpoints on disk ({listed}) were saved between evaluations: their validation loss "
                     "is unknown.")
    else:
        ok = "within noise of the best" if keep in within else "not within noise of the best"
        parts.append(f"On disk: {listed}; the best of them is {ck(keep)} (validation loss {y[at_step[keep]]:.4g}, "
                     f"{ok}).")
        if step_of[best] not in on_disk:
            parts.append(f"The checkpoint of the best evaluation ({unit} {step_of[best]}) is not on disk "
                         "(a limit on the checkpoints kept deletes older ones).")
    parts.append(f"The last material improvement was at {unit} {step_of[last]}; {after:.3g} epochs of training came "
                 "after it.")
    if unevaluated:
        parts.append(f"Not evaluated: {', '.join(ck(s) for s in unevaluated)}.")
    keep_best = _KEEP_BEST.get(framework, _KEEP_BEST["transformers"])
    rec = (f"Keep {ck(keep)}" + ("." if keep in within else f"; the better evaluations were deleted: {keep_best}.")
           if keep is not None else f"Save checkpoints at the evaluations and keep the best: {keep_best}.")
    if after >= 1 and keep is not None:
        rec += (f" Training could have stopped about {after:.2g} epochs earlier: a noise-aware stopper "
                f"({_STOPPER.get(framework, _STOPPER['transformers'])}) stops when the loss no longer improves "
                "beyond noise.")
    ev = [Evidence("validation loss at the best evaluation", float(y[best]), math.nan, (pts[best][0],))]
    if keep is not None:
        ev.append(Evidence(f"validation loss at {ck(keep)}", float(y[at_step[keep]]), math.nan,
                           (pts[at_step[keep]][0],)))
    return [Finding("stopping.checkpoints", "info", "Which checkpoint to keep", " ".join(parts), rec, ev,
                    (pts[best][0],), data)]
