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


def checkpoint_findings(run: Run) -> list[Finding]:
    """The ``stopping.checkpoints`` finding (a list of zero or one), for runs whose log lists checkpoints."""
    extras = run.info.extras
    on_disk = extras.get("checkpoints_on_disk")
    spe = extras.get("steps_per_epoch")
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
    parts = [f"The best evaluation is at step {step_of[best]} (validation loss {y[best]:.4g}); within noise of it: "
             f"step{'s' if len(within) > 1 else ''} {', '.join(map(str, within))}."]
    if not on_disk:
        parts.append("No checkpoint folder is on disk beside the log.")
    elif keep is None:
        parts.append(f"The checkpoints on disk (steps {', '.join(map(str, on_disk))}) were saved between "
                     "evaluations: their validation loss is unknown.")
    else:
        ok = "within noise of the best" if keep in within else "not within noise of the best"
        parts.append(f"On disk: steps {', '.join(map(str, on_disk))}; the best of them is checkpoint-{keep} "
                     f"(validation loss {y[at_step[keep]]:.4g}, {ok}).")
        if step_of[best] not in on_disk:
            parts.append(f"The checkpoint of the best evaluation (step {step_of[best]}) is not on disk "
                         "(save_total_limit deletes older checkpoints).")
    parts.append(f"The last material improvement was at step {step_of[last]}; {after:.3g} epochs of training came "
                 "after it.")
    if unevaluated:
        parts.append(f"Not evaluated: steps {', '.join(map(str, unevaluated))}.")
    rec = (f"Keep checkpoint-{keep}" + ("." if keep in within else "; the better evaluations were deleted: save "
                                        "with load_best_model_at_end=True (the Trainer then keeps the best).")
           if keep is not None else "Save checkpoints at evaluation steps (save_strategy = eval_strategy) and keep "
                                    "the best (load_best_model_at_end=True).")
    if after >= 1 and keep is not None:
        rec += (f" Training could have stopped about {after:.2g} epochs earlier: a noise-aware stopper "
                "(losslens.transformers.EarlyStoppingCallback) stops when the loss no longer improves beyond noise.")
    ev = [Evidence("validation loss at the best evaluation", float(y[best]), math.nan, (pts[best][0],))]
    if keep is not None:
        ev.append(Evidence(f"validation loss at checkpoint-{keep}", float(y[at_step[keep]]), math.nan,
                           (pts[at_step[keep]][0],)))
    return [Finding("stopping.checkpoints", "info", "Which checkpoint to keep", " ".join(parts), rec, ev,
                    (pts[best][0],), data)]
