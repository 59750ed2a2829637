"""Audit a train/validation split: duplicates, near duplicates, group leaks, shift, difficulty.

When the eval-mode training loss is above the validation loss beyond noise
(``gap.val_easier``), the data is the cause; this package says which part:

* :func:`exact_duplicates`: identical samples across the split (content hashes;
  cheap enough for the training adapters to run once at the start);
* near duplicates: exact blocked cosine k-NN with cleanlab's relative radius
  (:mod:`losslens.audit.near`);
* group leaks: group keys in both splits;
* label shift (chi-square, Cramér's V) and input shift (adversarial validation
  with a permutation null) (:mod:`losslens.audit.shift`);
* difficulty: per-sample validation versus probe losses, leaked versus clean
  (:mod:`losslens.audit.difficulty`).

:func:`audit_split` runs them all and returns an :class:`AuditResult` with
``to_dict()``, ``summary_lines()``, ``to_html()`` and ``findings()`` (codes
``split.*``, see :mod:`losslens.audit.findings`). No deep-learning framework is
imported; torch objects are converted with their own methods when given.

>>> from losslens.audit import audit_split          # doctest: +SKIP
>>> res = audit_split(x_train, x_val, labels=(y_train, y_val))
>>> for line in res.summary_lines(): print(line)
"""

from .core import AuditResult, GroupLeak, audit_split, group_leak
from .difficulty import Difficulty, LossComparison, compare_losses, difficulty
from .duplicates import ExactDuplicates, exact_duplicates
from .near import NEAR_THRESHOLD, NearDuplicates, blocked_search, near_duplicates
from .shift import FeatureShift, LabelShift, feature_shift, label_shift

__all__ = [
    "AuditResult", "audit_split", "exact_duplicates", "ExactDuplicates", "NearDuplicates", "GroupLeak",
    "group_leak", "LabelShift", "FeatureShift", "label_shift", "feature_shift", "Difficulty", "LossComparison",
    "compare_losses", "difficulty", "blocked_search", "near_duplicates", "NEAR_THRESHOLD",
]
