"""Score headline verdicts against expert labels (``labels.tsv`` of a real-logs folder).

``labels.tsv`` (format in ``shared/real-logs/LABELS.md``) gives, per run of
each log file, the experts' verdict and the set of verdicts either reading
found defensible; a headline verdict agrees when it is in that set. Used by
``benchmarks/verdicts.py`` and ``tests/test_verdicts_real_logs.py``.
"""

from __future__ import annotations

import csv
import os
from typing import Any

__all__ = ["read_labels", "labelled_verdicts"]


def read_labels(folder: Any) -> list[dict[str, Any]]:
    """Rows of ``folder/labels.tsv``: ``local_file``, ``run_index`` (int), ``verdict``, ``acceptable``
    (list of str), ``best``, ``evidence`` and the other columns as strings.

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    with open(os.path.join(str(folder), "labels.tsv"), encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for r in rows:
        r["run_index"] = int(r.get("run_index") or 0)
        r["acceptable"] = [a.strip() for a in (r.get("acceptable") or r["verdict"]).split(",") if a.strip()]
    return rows


def labelled_verdicts(folder: Any) -> list[dict[str, Any]]:
    """Import, diagnose and score every labelled run of a real-logs folder.

    Returns
    -------
    list of dict
        One per row of ``labels.tsv``: ``file``, ``run_index``, ``label``, ``acceptable``,
        ``evidence``, ``verdict`` (the headline code, or ``"error"`` when the file could not be
        imported or diagnosed), ``best``, ``finding``, ``sentence``, ``agrees`` (bool).
    """
    from ..importers import load_log, log_groups
    from ..importers.tensorboard import read_files
    from . import diagnose

    folder = str(folder)
    groups = {files[0]: files for _, _, files in log_groups(folder)}
    cache: dict[str, Any] = {}
    out = []
    for lab in read_labels(folder):
        f = lab["local_file"]
        row = {"file": f, "run_index": lab["run_index"], "label": lab["verdict"], "acceptable": lab["acceptable"],
               "evidence": lab.get("evidence", ""), "verdict": "error", "best": None, "finding": None,
               "sentence": "", "agrees": False}
        if lab["verdict"] == "same_run_as_train":
            row.update(verdict="same_run_as_train", agrees=True)
            out.append(row)
            continue
        try:
            if f not in cache:
                files = groups.get(f, [f])
                paths = [os.path.join(folder, p) for p in files]
                if len(paths) > 1:
                    prefixed = [("validation" if "__validation__" in os.path.basename(p) else "train", p)
                                for p in paths]
                    got: Any = read_files(prefixed, source=paths[0])
                else:
                    got = load_log(paths[0])
                cache[f] = got if isinstance(got, list) else [got]
            run = cache[f][lab["run_index"]]
            v = diagnose(run).verdict
        except Exception as exc:  # noqa: BLE001 - a benchmark reports every failure as a row
            row["sentence"] = f"{type(exc).__name__}: {exc}"
            out.append(row)
            continue
        row.update(verdict=v.code, best=v.best, finding=v.finding, sentence=v.sentence,
                   agrees=v.code in lab["acceptable"])
        out.append(row)
    return out
