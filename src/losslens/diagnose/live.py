"""What the sinks write while training runs: the last epoch's measurements, its decomposition, the headline verdict.

:func:`live_values` turns a run being recorded into one flat dictionary of numbers, the form every tracker
takes (TensorBoard scalars, MLflow metrics, W&B history, Keras ``logs``, Lightning ``self.log``, the Hugging
Face ``logs``). The names are stable and the same in every tool:

* the end-of-epoch measurements under :data:`losslens.record.LOGGED_NAMES` (``eval_train_loss``,
  ``train_mode_loss``, ``eval_augmented_loss``, ``losslens_val_loss``), loss per sample, each with its standard
  error under the same name plus ``_se``;
* each decomposition term (:mod:`losslens.diagnose.gap`) measured or skipped at that epoch under
  :data:`TERM_NAMES` (``gap_penalty``, ``gap_timing``, ``gap_train_mode``, ``gap_augmentation``,
  ``generalization_gap``), loss per sample, with ``_se``;
* ``verdict_code``: the headline verdict of the run so far as its index in
  :data:`losslens.diagnose.verdict.VERDICT_CODES` (0 unstable … 6 converged), since the frameworks' logs take
  numbers only; :func:`live_verdict` gives the word, which the sinks that take text also write.

Nothing here is estimated beyond :func:`losslens.diagnose.diagnose`: the values are the ones the report shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..record import LOGGED_NAMES, LOGGED_TERM_NAMES, Run
from . import diagnose
from .gap import MEASURED, SKIPPED, decompose_epoch, quantities_differ
from .verdict import VERDICT_CODES

__all__ = ["LiveValues", "live_values", "TERM_NAMES", "VERDICT_CODE_NAME"]

#: Decomposition term (:data:`losslens.diagnose.gap.TERMS`) -> the name it is logged under.
TERM_NAMES = LOGGED_TERM_NAMES

#: The logged name of the headline verdict's index in ``VERDICT_CODES``.
VERDICT_CODE_NAME = "verdict_code"


@dataclass
class LiveValues:
    """The values written at the end of one epoch.

    Attributes
    ----------
    epoch : int
        The run's epoch index (0-based; for the Hugging Face callback, the evaluation's index).
    values : dict of str to float
        Finite numbers only, loss per sample; the names are described in the module docstring.
    verdict : str or None
        The headline verdict of the run so far (one of ``VERDICT_CODES``), or None when the diagnosis failed.
    """

    epoch: int
    values: dict[str, float]
    verdict: str | None


def live_values(run: Run, *, with_verdict: bool = True) -> LiveValues | None:
    """The last epoch's measurements and decomposition, and the headline verdict of the run so far.

    Parameters
    ----------
    run : Run
        A run being recorded (or any run); only its last epoch's numbers are taken, the verdict reads them all.
    with_verdict : bool
        False skips the diagnosis (a diagnosis reads every step recorded so far: milliseconds for thousands of
        steps, about a second for a million).

    Returns
    -------
    LiveValues or None
        None when the run has no epoch yet. Non-finite numbers (a diverged loss) are left out: trackers reject
        or mis-plot them, and the verdict (``unstable``) already says it.
    """
    if not run.epochs:
        return None
    epoch = run.epochs[-1]
    out: dict[str, float] = {}
    for kind, name in LOGGED_NAMES.items():
        m = epoch.get(kind)
        if m is not None:
            out[name] = float(m.mean)
            out[name + "_se"] = float(m.sem)
    d = None if quantities_differ(run) else decompose_epoch(epoch)
    if d is not None:
        for term, t in d.terms.items():
            if term in TERM_NAMES and t.status in (MEASURED, SKIPPED):
                out[TERM_NAMES[term]] = float(t.value)
                out[TERM_NAMES[term] + "_se"] = float(t.se)
    verdict = None
    if with_verdict:
        with np.errstate(all="ignore"):
            verdict = diagnose(run).verdict.code
        out[VERDICT_CODE_NAME] = float(VERDICT_CODES.index(verdict))
    return LiveValues(int(epoch.index), {k: v for k, v in out.items() if math.isfinite(v)}, verdict)
