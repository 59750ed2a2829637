"""torch.distributed for the PyTorch recorder: the step exchange, the sharded passes and the probe decision.

When a default process group is initialised with more
than one rank (plain DDP, Lightning ``strategy="ddp"``, Hugging Face
``Trainer`` under ``torchrun``), every rank constructs its own recorder with the
same arguments and calls :meth:`step` / :meth:`end_epoch` as usual:

* the probe and validation passes are sharded without padding duplicates
  (eval passes: rank ``r`` takes positions ``r::world`` of the index list;
  train-mode passes: rank ``r`` takes batches ``r::world`` of the very same
  training-size batches one process would use, so batch-norm statistics are
  those of a single process; each batch's random draws are seeded by its
  batch number), all on rank 0's buffers (one ``broadcast_object_list``),
  and one ``all_gather_object`` per :meth:`end_epoch` puts every per-sample
  loss back in the single-process order on every rank: the measurements
  equal a one-process run's (tests/test_distributed.py);
* the step losses are exchanged once per epoch (one ``all_gather_object``):
  a recorded step is the batch-size weighted mean of the ranks' losses at
  that step, its batch size the global batch;
* the automatic probe size is decided by rank 0 and broadcast (once);
* only rank 0 opens and writes the store (``store`` is ignored on other
  ranks, which never touch the file); every rank holds the full :attr:`run`.

A model wrapped in ``DistributedDataParallel`` is unwrapped (its ``module``
is used for the probe passes, so no collective runs inside them). Pass
``distributed=False`` to record each rank on its own. See docs/distributed.md.

Every function here runs one collective (``all_gather_object`` or ``broadcast_object_list``) and is called on
every rank at the same point of :meth:`losslens.torch.LossLens.end_epoch`. The merging itself is
framework-free (:func:`losslens.recording.merge_rank_steps`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Measurement
from ..recording import merge_rank_steps
from ..recording.probe import baseline_loss
from ._data import as_measurement

if TYPE_CHECKING:
    from ._lens import LossLens

__all__ = ["gather_steps", "measure_distributed", "broadcast_decision", "is_sharded"]


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model`` (or a submodule) is sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``) or wrapped
    by FSDP1: its forward runs collectives, so every rank must run as many forward passes as the others."""
    kinds: list[type] = []
    for path, name in (("torch.distributed.fsdp", "FSDPModule"), ("torch.distributed._composable.fsdp", "FSDPModule"),
                       ("torch.distributed.fsdp", "FullyShardedDataParallel")):
        try:
            mod = __import__(path, fromlist=[name])
            kinds.append(getattr(mod, name))
        except (ImportError, AttributeError):
            continue
    return bool(kinds) and any(isinstance(m, tuple(kinds)) for m in model.modules())


def gather_steps(losses: np.ndarray, pens: np.ndarray, bs: np.ndarray, seconds: float, sized: bool,
                 b_train: int, world: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, bool, int]:
    """The epoch's step losses of all ranks, in one ``all_gather_object``, merged by
    :func:`~losslens.recording.merge_rank_steps`; ``seconds`` and the training batch size are rank 0's (so
    every rank runs the same train-mode batches). Returns ``(losses, penalties, batch_sizes, seconds, sized,
    b_train)``; ``sized`` is True when every rank knew its batch sizes."""
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, (losses, pens, bs, seconds, sized, b_train))
    lo, pe, den = merge_rank_steps([(p[0], p[1], p[2]) for p in parts])
    return lo, pe, den, float(parts[0][3]), all(p[4] for p in parts), int(parts[0][5])


def broadcast_decision(n: int, reason: str, cost: Any) -> tuple[int, str, Any]:
    """Rank 0's probe size holds on every rank (a timed one can differ between ranks): one broadcast."""
    box = [(n, reason, cost)]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def measure_distributed(lens: "LossLens", epoch_seconds: float, b_train: int) -> dict[str, Measurement]:
    """The passes of one epoch sharded over the ranks and gathered in one collective, in single-process order.

    Eval passes: rank ``r`` takes positions ``r::world`` of the index list; train-mode passes: batches
    ``r::world`` of the very batches one process would run. Every rank gets every per-sample loss.

    Raises
    ------
    RuntimeError
        If samples are missing after the gather (the ranks disagree on the probe set).
    """
    r, w = lens._rank, lens._world
    meta = lens.run.meta
    local: dict[str, Any] = {}
    with lens._protected() as prot:
        prot.sync_buffers(0)
        if lens._val is not None:
            prot.reseed(0, lens.eval_seed)
            pos = np.arange(len(lens._val))[r::w]
            # pad: the largest shard (rank 0's) in forward passes, for a sharded model (FSDP)
            local[VALIDATION] = (pos, lens._eval_pass(lens._val, pos, collect_targets=False,
                                                      pad=(len(range(0, len(lens._val), w)), 0))[0])
        if lens._probes_on:
            idx = lens._probe_indices(epoch_seconds, b_train, prot)
            pos = np.arange(len(idx))[r::w]
            prot.reseed(1, lens.eval_seed)
            want_t = meta.get("baseline_loss") is None
            clean, targets = lens._eval_pass(lens._probe, idx[pos], collect_targets=want_t,
                                             pad=(len(range(0, len(idx), w)), int(idx[0])))
            local[EVAL_CLEAN] = (pos, clean)
            if want_t and targets is not None:
                local["targets"] = (pos, targets.detach().cpu().numpy())
            if lens._run_T or lens._run_A:
                t_vals, a_vals, tpos = lens._train_mode_pass(idx, b_train, prot, shard=(r, w))
                if t_vals is not None:
                    local[TRAIN_MODE] = (tpos, t_vals)
                if a_vals is not None:
                    local[EVAL_AUGMENTED] = (tpos, a_vals)
    lens._note_pass_settings()
    parts: list[Any] = [None] * w
    torch.distributed.all_gather_object(parts, local)  # the one collective of the passes
    out: dict[str, Measurement] = {}
    probe = lens.probe_indices
    sizes = {VALIDATION: len(lens._val) if lens._val is not None else 0,
             EVAL_CLEAN: len(probe) if probe is not None else 0}
    for kind in (VALIDATION, EVAL_CLEAN, TRAIN_MODE, EVAL_AUGMENTED, "targets"):
        got = [p[kind] for p in parts if kind in p]
        if not got:
            continue
        n = sizes.get(kind, sizes[EVAL_CLEAN])
        first = got[0][1]
        full = np.zeros((n,) + tuple(first.shape[1:]), dtype=first.dtype)
        seen = np.zeros(n, dtype=bool)
        for pos, vals in got:
            full[pos] = vals
            seen[pos] = True
        if kind in (TRAIN_MODE, EVAL_AUGMENTED):  # a merged final batch may leave no gap; check anyway
            full, seen = full[seen], seen[seen]
        if not seen.all():
            raise RuntimeError(f"distributed probe pass {kind!r}: {int((~seen).sum())} samples missing "
                               "after the gather (ranks disagree on the probe set?)")
        if kind == "targets":
            meta["baseline_loss"] = baseline_loss(lens._loss_kind, full)
        else:
            out[kind] = as_measurement(kind, full)
    return out
