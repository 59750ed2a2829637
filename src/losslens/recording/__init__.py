"""The recording core: everything an adapter does that does not need a deep-learning framework.

* :mod:`~losslens.recording.probe`: the probe-size rules and the baseline loss;
* :mod:`~losslens.recording.recorder`: :class:`Recorder` (the run, its store, atomic epoch commits, resume),
  :class:`ProbePlan`, ``R``/``Ω`` accumulation, the per-sample loss check, shared argument validation;
* :mod:`~losslens.recording.fingerprint`: content fingerprints of the splits;
* :mod:`~losslens.recording.duplicates`: the exact-duplicate check of validation inputs;
* :mod:`~losslens.recording.hashing`: the 128-bit row hash both use.

Layer (DESIGN.md): above ``record`` and ``importers``, below the adapters; imports no framework.
"""

from .duplicates import ExactDuplicates, input_duplicates
from .fingerprint import auto_fingerprints
from .probe import baseline_loss, probe_permutation
from .recorder import ProbePlan, Recorder, check_common_args, epoch_means, merge_rank_steps, per_sample_check

__all__ = ["Recorder", "ProbePlan", "check_common_args", "epoch_means", "merge_rank_steps", "per_sample_check",
           "ExactDuplicates", "input_duplicates", "auto_fingerprints", "baseline_loss", "probe_permutation"]
