"""PyTorch Lightning ``CSVLogger`` files (``metrics.csv``).

Format (Lightning 1.x/2.x, verified with Lightning 2.6 in the tests): one row
per logging call with the columns ``epoch`` and ``step`` and every key logged
so far (the file is rewritten with a wider header when a new key appears), so
rows are sparse. ``step`` is the 0-based global index of the optimizer step
whose value is logged. ``self.log(name, on_step=True, on_epoch=True)`` writes
``name_step`` (the loss of that one batch, every ``log_every_n_steps``) and
``name_epoch`` (the batch-size weighted epoch mean, stamped at the epoch's last
step); a key without suffix is whichever of the two was requested (training
default: per step; validation: per epoch). Old Lightning wrote one row per epoch
without ``step`` (``created_at`` column).

Positions: epoch ``e`` covers the steps after the previous epoch's last step up
to its own last step (from the epoch-level rows: validation, ``*_epoch``); a
step value at step ``s`` sits at the centre of its step,
``e + (s − first_e + 0.5) / steps_e``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..record import Run, Steps
from ._common import LogFormatError, build_epochs, finish_run, lightning_checkpoints, read_csv, read_text
from ._epochs import read_losslens_columns
from .roles import assign_roles, is_val_name

__all__ = ["read", "sniff"]

_INDEX_COLS = ("epoch", "step", "created_at")


def sniff(header: list[str]) -> bool:
    """True for a CSV header with Lightning's ``step`` (or old ``created_at``) and ``epoch`` columns."""
    h = [c.strip() for c in header]
    return "epoch" in h and ("step" in h or "created_at" in h)


def _base(name: str) -> tuple[str, str]:
    if name.endswith("_step") and len(name) > 5:
        return name[:-5], "step"
    if name.endswith("_epoch") and len(name) > 6:
        return name[:-6], "epoch"
    return name, "auto"


def _epoch_lengths(known: dict[int, float], epochs: np.ndarray, steps: np.ndarray) -> float:
    """Typical number of steps per epoch from the known epoch ends, else from the step/epoch pairs."""
    ks = sorted(known)
    diffs = [(known[b] - known[a]) / (b - a) for a, b in zip(ks, ks[1:]) if b > a]
    if diffs:
        return float(np.median(diffs))
    if len(ks) == 1 and ks[0] >= 0 and known[ks[0]] > 0:
        return float(known[ks[0]]) / (ks[0] + 1)
    ok = np.isfinite(epochs) & np.isfinite(steps)
    e, s = epochs[ok], steps[ok] + 1.0
    if e.size == 0:
        return math.nan
    lo = float(np.max(s / (e + 1.0)))
    pos = e > 0
    hi = float(np.min((s[pos] - 1.0) / e[pos])) if pos.any() else math.inf
    if math.isfinite(hi) and hi >= lo:
        return float(max(math.ceil(lo), 1.0)) if math.ceil(lo) <= hi else (lo + hi) / 2
    return float(np.max(s) / (np.max(e) + 1.0)) if np.max(e) >= 0 else math.nan


def _last_by_epoch(epoch: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """The last value of each epoch (file order)."""
    if epoch.size == 0:
        return {}
    ue, idx = np.unique(epoch[::-1].astype(np.int64), return_index=True)
    return dict(zip(ue.tolist(), values[::-1][idx].astype(float).tolist()))


def _max_by_epoch(epoch: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """The largest value of each epoch."""
    if epoch.size == 0:
        return {}
    e = epoch.astype(np.int64)
    order = np.lexsort((values, e))
    return _last_by_epoch(e[order], values[order])


def _mean_by_epoch(epoch: np.ndarray, values: np.ndarray) -> dict[int, float]:
    """Mean of each epoch's values; an epoch with a non-finite value keeps its first one (divergence is shown)."""
    e = epoch.astype(np.int64)
    e0 = int(e.min())
    fin = np.isfinite(values)
    n = np.bincount(e - e0)
    nf = np.bincount(e[fin] - e0, minlength=n.size)
    sums = np.bincount(e[fin] - e0, weights=values[fin], minlength=n.size)
    out = {}
    bad_first = {}
    if (~fin).any():
        ue, idx = np.unique(e[~fin], return_index=True)
        bad_first = dict(zip(ue.tolist(), values[~fin][idx].tolist()))
    for k in np.flatnonzero(n):
        ep = int(k) + e0
        out[ep] = float(bad_first[ep]) if ep in bad_first else float(sums[k] / nf[k])
    return out


def read(path: Any, train_loss: str | None = None, val_loss: str | None = None, text: str | None = None) -> Run:
    """Import a Lightning ``metrics.csv``.

    Returns
    -------
    Run
        ``steps``: the logged per-step training losses at their real positions
        (span 1); ``Epoch.train_loss``: the ``*_epoch`` mean when logged
        (``reported_loss_kind = "epoch_mean"``), else the mean of the logged
        step losses of the epoch (an unbiased estimate of the epoch mean from a
        sample of its steps; noted in ``meta["import_notes"]``); ``VALIDATION``:
        the last validation value of each epoch; other keys in ``Epoch.metrics``.

    Raises
    ------
    LogFormatError
        No ``epoch`` column, non-numeric cells in ``epoch``/``step``/loss columns,
        ambiguous loss keys.
    """
    table = read_csv(path, text if text is not None else read_text(path))
    if not table.has("epoch"):
        raise LogFormatError(path, f"no 'epoch' column (header: {', '.join(table.names)}); not a Lightning metrics.csv")
    if len(table) == 0:
        raise LogFormatError(path, "header only: no rows")
    notes = list(table.notes)
    epoch = table.floats("epoch", path)
    has_step = table.has("step")
    step = table.floats("step", path) if has_step else np.full(len(table), np.nan)
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(epoch) & ((epoch < 0) | (np.abs(epoch - np.round(epoch)) > 1e-9) | (epoch > 1e8))
    bad |= np.isfinite(step) & ((step < 0) | (step > 1e12))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LogFormatError(path, f"line {table.lines[i]}: epoch {float(epoch[i])!r} / step {float(step[i])!r} "
                                   "out of range")
    values: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for name in table.names:
        if name in _INDEX_COLS:
            continue
        try:
            values[name] = table.floats(name, path)
            present[name] = table.present(name)
        except LogFormatError:
            if "loss" in name.lower():
                raise
            notes.append(f"column {name!r} is not numeric; ignored")
    bases: dict[str, dict[str, str]] = {}
    for name in values:
        b, kind = _base(name)
        bases.setdefault(b, {})[kind] = name
    roles = assign_roles(list(bases), path, train_loss, val_loss)

    # Rows without an epoch (e.g. LearningRateMonitor) are placed later by their step.
    # Known epoch ends (0-based index of the last step) from epoch-level rows.
    epoch_level_cols = [c for b, kinds in bases.items() for k, c in kinds.items()
                        if k == "epoch" or (k == "auto" and is_val_name(b))]
    known_end: dict[int, float] = {}
    if has_step:
        for c in epoch_level_cols:
            m = present[c] & np.isfinite(epoch) & np.isfinite(step)
            for e, s in _max_by_epoch(epoch[m], step[m]).items():
                known_end[e] = max(known_end.get(e, -1.0), s)
    fin = np.isfinite(epoch)
    all_epochs = [int(e) for e in np.unique(epoch[fin])]
    if not all_epochs:
        raise LogFormatError(path, "no row has an epoch number")
    # Classify the bare training key: per step or per epoch.
    tr_kinds = bases.get(roles.train_loss, {}) if roles.train_loss else {}
    step_col = tr_kinds.get("step")
    epoch_col = tr_kinds.get("epoch")
    auto = tr_kinds.get("auto")
    if auto is not None:
        m = present[auto] & fin
        ep_of = epoch[m].astype(np.int64)
        counts = np.bincount(ep_of - ep_of.min()) if ep_of.size else np.zeros(0, dtype=np.int64)
        per_epoch_once = counts.size == 0 or counts.max() <= 1
        at_end = (not has_step) or (per_epoch_once and all(known_end.get(int(e)) == s
                                                           for e, s in zip(epoch[m], step[m])))
        covered = (np.unique(ep_of).size / max(1, ep_of.max() - ep_of.min() + 1)) if ep_of.size else 0.0
        if not has_step or (per_epoch_once and at_end and covered >= 0.8 and ep_of.size > 1):
            if epoch_col is None:
                epoch_col = auto
                if has_step:
                    notes.append(f"{auto!r} has one value per epoch at the epoch's last step: read as an epoch "
                                 "mean (on_epoch=True); if it was logged per step, its position is off by up to "
                                 "half an epoch")
        elif step_col is None:
            step_col = auto
    # Epoch ends for every epoch: known ones, the rest from the typical epoch length.
    L = _epoch_lengths(known_end, epoch, step) if has_step else math.nan
    ends: dict[int, float] = {}
    if has_step:
        for e in range(all_epochs[0], all_epochs[-1] + 1):
            if e in known_end:
                ends[e] = known_end[e]
        if not math.isfinite(L) or L <= 0:
            L = 1.0
        # forward/backward fill from the nearest known end with the typical length
        if not ends:
            ok = fin & np.isfinite(step)
            lastmax = _max_by_epoch(epoch[ok], step[ok])
            for e in range(all_epochs[0], all_epochs[-1] + 1):
                ends[e] = max((e + 1) * L - 1.0, lastmax.get(e, -1.0))
            notes.append(f"no epoch-level rows: epoch length estimated as {L:g} steps from the step/epoch pairs")
        else:
            ref = sorted(ends)
            for e in range(all_epochs[0], all_epochs[-1] + 1):
                if e not in ends:
                    near = min(ref, key=lambda k: abs(k - e))
                    ends[e] = ends[near] + (e - near) * L
        # keep them increasing
        prev = -math.inf
        for e in sorted(ends):
            if ends[e] <= prev:
                ends[e] = prev + max(L, 1.0)
            prev = ends[e]

    def bounds(e: int) -> tuple[float, float]:
        hi = ends[e] + 1.0
        lo = ends[e - 1] + 1.0 if (e - 1) in ends else hi - L
        return lo, hi

    # Rows without an epoch: attach by step.
    if has_step and (~fin).any():
        ks = np.array(sorted(ends))
        ev = np.array([ends[k] for k in ks])
        loose = np.flatnonzero(~fin & np.isfinite(step))
        j = np.minimum(np.searchsorted(ev, step[loose], side="left"), ks.size - 1)
        epoch[loose] = ks[j]
        fin = np.isfinite(epoch)

    # Step table.
    steps = Steps()
    if step_col is not None and has_step:
        v = values[step_col]
        m = present[step_col] & fin & np.isfinite(step)
        ep = epoch[m].astype(np.int64)
        e0 = int(ep.min()) if ep.size else 0
        span_e = np.arange(e0, (int(ep.max()) if ep.size else 0) + 1)
        lo_hi = np.array([bounds(int(e)) if int(e) in ends else (np.nan, np.nan) for e in span_e]).reshape(-1, 2)
        lo, hi = lo_hi[ep - e0, 0], lo_hi[ep - e0, 1]
        pos = ep + np.clip((step[m] + 0.5 - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        order = np.lexsort((step[m], ep))
        steps = Steps.build(ep[order], v[m][order], position=pos[order])

    train: dict[int, float] = {}
    if epoch_col is not None:
        v = values[epoch_col]
        m = present[epoch_col] & fin
        train = _last_by_epoch(epoch[m], v[m])
        kind = "epoch_mean"
    elif len(steps):
        train = _mean_by_epoch(steps.epoch, steps.loss)
        kind = "epoch_mean"
        notes.append(f"no epoch mean of {roles.train_loss!r} logged: each epoch's training loss is the mean of its "
                     "logged step losses (a sample of the epoch's steps)")
    else:
        kind = "epoch_mean"
    val: dict[int, float] = {}
    if roles.val_loss is not None:
        vk = bases[roles.val_loss]
        col = vk.get("epoch") or vk.get("auto") or vk.get("step")
        v = values[col]
        m = present[col] & fin
        # trainer.validate() after fit logs once more at the final step (or in epoch max_epochs, after the last
        # training epoch): that evaluation is not another epoch, and must not replace the last epoch's value
        train_epochs = set(train) | (set(np.unique(steps.epoch).tolist()) if len(steps) else set())
        last_train = max(train_epochs) if train_epochs else None
        after: list[int] = []
        seen: set[float] = set()
        for i in np.flatnonzero(m):
            s_i = float(step[i]) if has_step else math.nan
            if (has_step and math.isfinite(s_i) and s_i in seen) or (last_train is not None and epoch[i] > last_train):
                after.append(int(i))
            elif has_step and math.isfinite(s_i):
                seen.add(s_i)
        if after:
            m = m.copy()
            m[after] = False
            notes.append(f"{len(after)} {col!r} value(s) logged after training (trainer.validate() after fit: the "
                         f"same final step, or an epoch with no training): not an epoch; last such value "
                         f"{float(v[after[-1]]):.6g}")
        val = _last_by_epoch(epoch[m], v[m])
        if int(m.sum()) > len(val):
            notes.append(f"{col!r} has several values in some epochs (val_check_interval < 1?): the last one of "
                         "each epoch is used")
    metrics: dict[int, dict[str, float]] = {}
    used = {c for c in (step_col, epoch_col) if c}
    if roles.val_loss is not None:
        used |= set(bases[roles.val_loss].values())
    for name, v in values.items():
        if name in used:
            continue
        m = (~np.isnan(v)) & fin
        for e, x in _last_by_epoch(epoch[m], v[m]).items():
            metrics.setdefault(e, {})[name] = x
    indices = set(train) | set(val) | (set(np.unique(steps.epoch).tolist()) if len(steps) else set())
    if not indices:
        raise LogFormatError(path, f"no values in the loss columns ({roles.train_loss}, {roles.val_loss})")
    positions = {e: float(e + 1) for e in indices}
    # steps known only for epochs with a training value (n_steps > 0 with a NaN loss would mean divergence)
    n_steps = {e: int(round(bounds(e)[1] - bounds(e)[0])) for e in train} if has_step else None
    epochs = build_epochs(indices, train=train, val=val, positions=positions, metrics=metrics, n_steps=n_steps)
    own = read_losslens_columns(epochs, notes)   # the losslens callback's self.log values: C, T, A, V
    spe = L if has_step and math.isfinite(L) else None
    extra: dict[str, Any] = {"steps_per_epoch": spe, **_monitor_from_hparams(path, notes)}
    if own:
        extra.update(probe_set="measured by the losslens callback",
                     how_to_measure="the losslens callback measured these each epoch; their standard errors need "
                                    "its store: LossLens(..., store='losslens.db'), then `losslens report RUN`")
    ckpts = lightning_checkpoints(path, spe)
    if ckpts is not None and spe:
        extra.update(checkpoints_on_disk=sorted(ckpts), checkpoint_names={str(k): v for k, v in ckpts.items()})
    return finish_run(path, epochs=epochs, steps=steps, importer="lightning_csv", framework="lightning",
                      reported_loss_kind=kind, roles=roles.to_dict(), notes=notes, extra_meta=extra)


def _monitor_from_hparams(path: Any, notes: list[str]) -> dict[str, Any]:
    """The metric the run selects checkpoints or stops by, from ``hparams.yaml`` beside ``metrics.csv``.

    Lightning's ``CSVLogger`` writes the module's saved hyper-parameters there; when they hold a top-level
    ``monitor`` (the convention of ``ModelCheckpoint``/``EarlyStopping`` arguments saved with
    ``save_hyperparameters``) and optionally ``mode: max|min``, the diagnosis judges that metric too. Read as plain
    ``key: value`` lines (no YAML library is a dependency); anything else in the file is ignored.
    """
    import os

    hp = os.path.join(os.path.dirname(os.path.abspath(str(path))), "hparams.yaml")
    if not os.path.isfile(hp):
        return {}
    try:
        with open(hp, encoding="utf-8", errors="replace") as fh:
            lines = fh.read(64 * 1024).splitlines()
    except OSError:
        return {}
    top = {}
    for ln in lines:
        if ln[:1] in (" ", "\t", "#", "-") or ":" not in ln:
            continue
        k, _, v = ln.partition(":")
        top[k.strip()] = v.strip().strip("'\"")
    mon = top.get("monitor")
    if not mon or "loss" in mon.lower():
        return {}
    out: dict[str, Any] = {"metric_for_best_model": mon}
    if top.get("mode") in ("max", "min"):
        out["greater_is_better"] = top["mode"] == "max"
    notes.append(f"hparams.yaml names the monitored metric {mon!r}: the run is judged on it too")
    return out
