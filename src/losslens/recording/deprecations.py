"""Old public names, kept one release with a ``FutureWarning`` (shown by default, as NumPy and pandas do).

Removed in 0.3: ``losslens.torch.Lens`` (now ``LossLens``, the one class name of every adapter); the data
arguments ``probe=`` (the clean training data: now ``train_data=``), ``val=`` / ``validation=`` (now
``val_data=``) and ``train=`` (the augmented training data: now ``train_augmented=``); the adapters'
``diagnose()`` method (now ``Report.from_run(lens)`` from :mod:`losslens.report`, a layer the adapters do
not import); ``AuditResult.to_html()/save_html()`` and ``Experiment.save_html()`` (now
:mod:`losslens.report.audit` and :mod:`losslens.report.experiment`: result objects expose ``to_dict()`` and
``findings()``, the report layer renders). The only upward imports of the lower layers are the lazy ones in this
module, listed as such in ``tests/test_layers.py``.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["renamed_data_args", "deprecated_report", "RENAMED"]

#: Old keyword -> new keyword, for the data arguments of every adapter.
RENAMED = {"probe": "train_data", "val": "val_data", "validation": "val_data", "train": "train_augmented"}


def renamed_data_args(owner: str, deprecated: dict[str, Any], **new: Any) -> tuple[Any, ...]:
    """Map old data keywords in ``deprecated`` onto the new ones in ``new`` (returned in ``new``'s order).

    Raises
    ------
    TypeError
        For a keyword that is neither old nor new, or an old and a new keyword for the same data.
    """
    out = dict(new)
    for old, value in deprecated.items():
        target = RENAMED.get(old)
        if target is None or target not in out:
            raise TypeError(f"{owner}: unexpected keyword argument {old!r}")
        if out[target] is not None:
            raise TypeError(f"{owner}: {old}= and {target}= both given; {old}= is the deprecated name of {target}=")
        warnings.warn(f"{owner}: {old}= is renamed {target}= (the same name in every losslens adapter); {old}= "
                      "will be removed in 0.3", FutureWarning, stacklevel=3)
        out[target] = value
    return tuple(out.values())


def deprecated_report(run: Any, what: str) -> Any:
    """``Report.from_run(run)`` for a deprecated adapter method, with a ``FutureWarning``."""
    warnings.warn(f"{what} is deprecated: use losslens.report.Report.from_run(lens) (the same Report); {what} "
                  "will be removed in 0.3", FutureWarning, stacklevel=3)
    from ..report import Report  # deprecated path: the upward imports of this module are these three

    return Report.from_run(run)


def deprecated_page(obj: Any, what: str, use: str, kind: str, **kwargs: Any) -> Any:
    """The HTML of a result object's deprecated ``to_html``/``save_html`` (the report layer renders pages now).

    ``kind``: ``"audit_fragment"``, ``"audit_page"`` (``path`` in ``kwargs``) or ``"experiment_page"``.
    """
    warnings.warn(f"{what} is deprecated: use {use} (the report layer renders every page); {what} will be "
                  "removed in 0.3", FutureWarning, stacklevel=3)
    from ..report import audit as report_audit
    from ..report import experiment as report_experiment

    if kind == "audit_fragment":
        return report_audit.render_fragment(obj, **kwargs)
    if kind == "audit_page":
        return report_audit.save_page(obj, **kwargs)
    return report_experiment.save_experiment_html(obj, **kwargs)
