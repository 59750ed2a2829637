"""Hugging Face ``Trainer`` state files (``trainer_state.json``).

Format (transformers 4.x): ``{"log_history": [...], "global_step", "max_steps",
"num_train_epochs", "logging_steps", "eval_steps", ...}``. Each training entry
``{"loss", "step", "epoch", "learning_rate", "grad_norm"}`` holds the mean of
the training loss over the optimizer steps since the previous logging call
(normally ``logging_steps`` of them), stamped at the window's **end** with the
fractional epoch at that step. Evaluation entries hold ``eval_loss`` (and
``eval_<metric>``) at their step; a final summary entry holds ``train_loss``
(the mean over the whole run) and is not a curve point.

The run's "epochs" are the intervals between evaluations (an evaluation at
the end of every epoch gives the usual epochs; ``eval_strategy="steps"``
gives one interval per evaluation): ``Epoch.position`` is the evaluation time
in fractional epochs, ``Epoch.train_loss`` the step-weighted mean of the
windows in the interval. Without evaluations, whole epochs are used. Window
means are placed at their window's centre.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..record import Run, Steps
from ._common import LogFormatError, build_epochs, finish_run, read_json, to_float
from .roles import assign_roles

__all__ = ["read", "looks_like_trainer_state"]


def looks_like_trainer_state(obj: Any) -> bool:
    """True for a dict with a ``log_history`` list."""
    return isinstance(obj, dict) and isinstance(obj.get("log_history"), list)


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None, obj: Any = None) -> Run:
    """Import a ``trainer_state.json``.

    Returns
    -------
    Run
        ``steps``: one row per logged window (``span`` = optimizer steps
        averaged, position = window centre in fractional epochs);
        ``epochs``: one per evaluation interval (see the module docstring),
        ``VALIDATION`` = ``eval_loss``; ``meta["reported_loss_kind"] = "window_mean"``.

    Raises
    ------
    LogFormatError
        Invalid JSON, no ``log_history``, entries without a numeric ``step``,
        no loss entries.
    """
    if obj is None:
        obj = read_json(path)
    if not looks_like_trainer_state(obj):
        raise LogFormatError(path, "no 'log_history' list: not a Hugging Face trainer_state.json")
    hist = obj["log_history"]
    notes: list[str] = []
    keys: list[str] = []
    rows = []
    for i, ent in enumerate(hist):
        if not isinstance(ent, dict):
            raise LogFormatError(path, f"log_history[{i}]: expected an object, got {type(ent).__name__}")
        if "step" not in ent:
            # e.g. predict_* / test_* entries written by trainer.predict(): not part of the training curve
            notes.append(f"log_history[{i}] has no 'step' ({', '.join(sorted(ent)[:4])}): skipped")
            continue
        st = to_float(ent.get("step"), path, f"log_history[{i}].step")
        ep = to_float(ent.get("epoch"), path, f"log_history[{i}].epoch") if "epoch" in ent else math.nan
        if not math.isfinite(st) or st < 0:
            raise LogFormatError(path, f"log_history[{i}].step: {ent.get('step')!r} is not a step number ≥ 0")
        vals = {}
        for k, v in ent.items():
            if k in ("step", "epoch") or isinstance(v, (str, list, dict)) or v is None:
                continue
            vals[k] = to_float(v, path, f"log_history[{i}].{k}")
            if k not in keys:
                keys.append(k)
        rows.append((st, ep, vals, i))
    if "train_loss" in keys and "loss" in keys:
        keys.remove("train_loss")  # the final whole-run summary, not a curve
    best_for = obj.get("metric_for_best_model") if isinstance(obj.get("metric_for_best_model"), str) else None
    roles = assign_roles([k for k in keys if k not in ("total_flos", "train_runtime")], path, train_loss, val_loss,
                         preferred_val=best_for if best_for and best_for.endswith("loss") else None)
    tk, vk = roles.train_loss, roles.val_loss
    # Steps per epoch from the (step, epoch) stamps.
    se = np.array([(s, e) for s, e, _, _ in rows if math.isfinite(e) and e > 0 and s > 0], dtype=np.float64)
    spe = float(np.median(se[:, 0] / se[:, 1])) if se.size else math.nan
    if not math.isfinite(spe):
        ms, ne = obj.get("max_steps"), obj.get("num_train_epochs")
        try:
            spe = float(ms) / float(ne) if ms and ne else math.nan
        except (TypeError, ValueError):
            spe = math.nan
    if not (math.isfinite(spe) and spe > 0):
        raise LogFormatError(path, "cannot tell steps per epoch: no entry has both 'step' and a positive 'epoch'")
    train_rows = sorted([(s, v[tk], i) for s, _, v, i in rows if tk and tk in v], key=lambda t: (t[0], t[2]))
    # drop exact duplicate steps (a resumed run re-logs): keep the last
    dedup: dict[float, tuple[float, float, int]] = {}
    for t in train_rows:
        dedup[t[0]] = t
    if len(dedup) < len(train_rows):
        notes.append(f"{len(train_rows) - len(dedup)} training entries repeat a step (resumed run?); the last is used")
    train_rows = sorted(dedup.values())
    logging_steps = obj.get("logging_steps")
    st = np.array([t[0] for t in train_rows], dtype=np.float64)
    loss = np.array([t[1] for t in train_rows], dtype=np.float64)
    prev = np.concatenate([[0.0], st[:-1]]) if st.size else st
    span = st - prev
    if st.size and isinstance(logging_steps, (int, float)) and logging_steps > 0:
        # the first window starts at 0, but with logging_first_step the first entry is the first step alone
        span[0] = min(st[0], float(logging_steps)) if st[0] > 0 else 1.0
    span = np.maximum(span, 1.0)
    centre = (st - span / 2.0) / spe
    eval_rows = sorted([(s, e, v, i) for s, e, v, i in rows if vk and vk in v], key=lambda t: (t[0], t[3]))
    ev: dict[float, tuple[float, float, dict[str, float]]] = {}
    for s, e, v, _ in eval_rows:
        ev[s] = (s, e, v)
    eval_rows = sorted(ev.values(), key=lambda t: t[0])
    if eval_rows:
        ends = np.array([s / spe for s, _, _ in eval_rows])
        notes.append("epochs are the intervals between evaluations (position = evaluation time in epochs)")
    else:
        # whole epochs, and a last partial epoch ending at the last logged step
        last = max([r[0] for r in rows] + [0.0]) / spe
        k = int(math.floor(last + 1e-9))
        ends = np.arange(1, k + 1, dtype=np.float64)
        if last - k > 1e-9 or k == 0:
            ends = np.append(ends, last if last > 0 else 1.0)
    # Assign windows to intervals by their end step (a window belongs to the interval in which it ends).
    end_pos = st / spe
    idx = np.searchsorted(ends, end_pos - 1e-9, side="left").astype(np.int64)
    # windows logged after the last evaluation form one more interval
    tail_end = float(end_pos.max()) if end_pos.size else 0.0
    if eval_rows and idx.size and idx.max() >= ends.size:
        ends = np.append(ends, tail_end)
    steps = Steps.build(idx, loss, position=centre, span=span) if st.size else Steps()
    train: dict[int, float] = {}
    n_steps: dict[int, int] = {}
    for k in np.unique(idx):
        m = idx == k
        w, lv = span[m], loss[m]
        ok = np.isfinite(lv)
        train[int(k)] = float(np.sum(w[ok] * lv[ok]) / np.sum(w[ok])) if ok.all() else float(lv[~ok][0])
        n_steps[int(k)] = int(w.sum())
    val: dict[int, float] = {}
    metrics: dict[int, dict[str, float]] = {}
    for j, (s, e, v) in enumerate(eval_rows):
        val[j] = v[vk]
        metrics[j] = {k: x for k, x in v.items() if k != vk and k.startswith("eval_") and "runtime" not in k
                      and "per_second" not in k}
    if roles.lr:
        for s, _, v, _ in rows:
            if roles.lr in v:
                k = int(np.searchsorted(ends, s / spe - 1e-9, side="left"))
                metrics.setdefault(min(k, ends.size - 1), {})[roles.lr] = v[roles.lr]
    indices = sorted(set(train) | set(val))
    if not indices:
        raise LogFormatError(path, f"log_history has no {tk!r} or {vk!r} values")
    positions = {k: float(ends[min(k, ends.size - 1)]) for k in indices}
    epochs = build_epochs(indices, train=train, val=val, positions=positions, metrics=metrics, n_steps=n_steps)
    extra = {"steps_per_epoch": spe,
             "logging_steps": logging_steps if isinstance(logging_steps, (int, float)) else None,
             "train_batch_size": obj.get("train_batch_size"), "global_step": obj.get("global_step"),
             "epoch_unit": "evaluation interval" if eval_rows else "epoch"}
    for key in ("metric_for_best_model", "best_metric", "best_model_checkpoint", "greater_is_better",
                "best_global_step", "save_steps", "eval_steps"):
        if obj.get(key) is not None and isinstance(obj.get(key), (str, int, float, bool)):
            extra[key] = obj[key]
    if "metric_for_best_model" not in extra and isinstance(extra.get("best_metric"), (int, float)):
        # transformers stores metric_for_best_model in TrainingArguments, not in the state: the metric whose
        # logged value equals best_metric is the one the run selected its best checkpoint by
        bm = float(extra["best_metric"])
        match = sorted({k for _, _, v in eval_rows for k, x in v.items()
                        if k.startswith("eval_") and "runtime" not in k and "per_second" not in k
                        and math.isfinite(x) and abs(x - bm) <= 1e-9 * max(1.0, abs(bm))})
        if len(match) == 1:
            series = [v[match[0]] for _, _, v in eval_rows if match[0] in v and math.isfinite(v[match[0]])]
            extra["metric_for_best_model"] = match[0]
            if series and bm in (max(series), min(series)) and max(series) != min(series):
                extra["greater_is_better"] = bm == max(series)
            notes.append(f"best_metric {bm:.6g} is the value of {match[0]!r}: the run selected its best checkpoint "
                         "by it (metric_for_best_model inferred)")
    if roles.other_val_losses:
        notes.append(f"several evaluation sets: the headline judges {vk!r}; also diagnosed: "
                     f"{', '.join(roles.other_val_losses)}")
    on_disk = checkpoints_beside(path)
    if on_disk is not None:
        extra["checkpoints_on_disk"] = on_disk
    summary = [v.get("train_loss") for _, _, v, _ in rows if "train_loss" in v and tk != "train_loss"]
    if summary:
        extra["train_loss_overall"] = summary[-1]
    return finish_run(path, epochs=epochs, steps=steps, importer="trainer_state", framework="transformers",
                      reported_loss_kind="window_mean", roles=roles.to_dict(), notes=notes, extra_meta=extra)


def checkpoints_beside(path: Any) -> list[int] | None:
    """The global steps of the Trainer checkpoint folders (``checkpoint-<step>``) that exist beside a
    ``trainer_state.json``: in its folder, or, for the state file inside a checkpoint, in that checkpoint's parent.
    None when the log is not a file on disk (what was saved is then unknown)."""
    try:
        p = Path(os.fspath(path))
    except TypeError:
        return None
    if not p.is_file():
        return None
    folder = p.parent.parent if re.fullmatch(r"checkpoint-\d+", p.parent.name) else p.parent
    steps = []
    try:
        for child in folder.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", child.name)
            if m and child.is_dir():
                steps.append(int(m.group(1)))
    except OSError:
        return None
    return sorted(steps)
