"""The forward passes of the PyTorch backend: eval-mode passes in large batches, and the paired train-mode and
eval-mode passes on augmented batches of the training batch size (T and A), as per-sample losses.

The recorder (:class:`losslens.torch.LossLens`) decides what to measure and when; this class only runs the model,
inside the protected context of :class:`~losslens.torch._guard.Protect` that the recorder opens.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..recording.probe import default_eval_batch_size
from ..recording.recorder import per_sample_check
from ._data import Source, batch_len, input_bytes, loss_name, per_sample_loss_fn, slice_batch, to_device
from ._guard import Protect

__all__ = ["Passes", "CUDA_EVAL_BATCH"]

#: On CUDA the eval batch starts here (samples) and is halved on out-of-memory errors. On CPU it is the batch size
#: of the user's validation ``DataLoader`` when one is given, otherwise
#: :func:`losslens.recording.probe.default_eval_batch_size` of the training batch size.
CUDA_EVAL_BATCH = 8192


def per_sample_train_mode(model: nn.Module) -> bool:
    """Whether the model's train-mode loss of a sample is independent of the rest of its batch: every module is a
    ``torch.nn`` built-in (whose train-mode behaviour is known: dropout draws per element) and none is a batch
    norm. A module of any other class may use batch statistics in train mode, so it keeps the training batch
    size."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or not type(m).__module__.startswith("torch.nn."):
            return False
    return True


class Passes:
    """Per-sample losses of a model on indexed samples.

    Parameters
    ----------
    model : torch.nn.Module
    loss_fn : callable
        The user's loss; per-sample losses come from :func:`~losslens.torch.per_sample_loss_fn`.
    unpack, forward : callable
        ``unpack(batch) -> (inputs, target)``, ``forward(model, inputs) -> outputs``.
    eval_batch_size : int or None
        Batch size of the eval-mode passes (None: :meth:`default_eval_batch_size`).
    user_eval_bs : int or None
        The batch size of the validation ``DataLoader`` the user gave (``val_data=``): the default eval batch on
        CPU.

    Attributes
    ----------
    check : dict or None
        The per-sample loss check on the first finite batch (:func:`losslens.recording.per_sample_check`).
    train_flags : list of bool or None
        The modules' ``training`` flags during training (read by the recorder at an epoch's first step); the
        train-mode pass uses them, so frozen submodules stay frozen.
    per_sample_train_mode : bool
        Whether a sample's train-mode loss cannot depend on the other samples of its batch
        (:func:`per_sample_train_mode`): the train-mode pass then runs in eval-sized batches, since only batch
        statistics (batch norm) need the training batch size.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor], unpack: Callable[[Any], Any],
                 forward: Callable[[nn.Module, Any], Any], eval_batch_size: int | None,
                 user_eval_bs: int | None = None) -> None:
        self.model, self.loss_fn, self.unpack, self.forward = model, loss_fn, unpack, forward
        self.per_sample, self.method = per_sample_loss_fn(loss_fn)
        self.eval_bs = eval_batch_size
        self.user_eval_bs = user_eval_bs
        self.train_bs = 32          # the training batch size, set by the recorder before the first pass
        self.check: dict[str, Any] | None = None
        self.train_flags: list[bool] | None = None
        self.per_sample_train_mode = per_sample_train_mode(model)
        #: Under torch.distributed with a sharded model (FSDP): every rank runs the same number of forward passes.
        self.pad_forwards = False
        self._warned_fallback = False

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        for b in self.model.buffers():
            return b.device
        return torch.device("cpu")

    def cuda_devices(self) -> list[int]:
        devs = {p.device.index for p in self.model.parameters() if p.device.type == "cuda"}
        devs |= {b.device.index for b in self.model.buffers() if b.device.type == "cuda"}
        if devs and torch.cuda.is_available():
            return sorted(d if d is not None else torch.cuda.current_device() for d in devs)
        return []

    def protected(self, seed: int) -> Protect:
        """The context of the passes (no gradients, forked and seeded RNGs, flags and buffers restored)."""
        return Protect(self.model, self.cuda_devices(), seed)

    def default_eval_batch_size(self, sample: Any) -> int:
        """8192 on CUDA. On CPU the batch size of the user's validation ``DataLoader`` (:attr:`user_eval_bs`) when
        there is one, otherwise :func:`losslens.recording.probe.default_eval_batch_size` of the training batch size
        and the bytes of one sample's inputs.

        Why the user's batch on CPU: the recorder's passes replace the user's validation pass, and the size of the
        blocks they allocate changes how fast the *training steps* run. On glibc, freeing a large block raises
        malloc's dynamic mmap and trim thresholds (``mallopt(3)``); passes in smaller blocks than the user's leave
        them low, and the training steps then return memory to the system and fault it back in at every step
        (the CNN of ``benchmarks/overhead.py`` on 5 000 images, ``resource.getrusage`` around each epoch's training
        steps: 330 000-430 000 page faults and 6 % more time per epoch with eval batches of 64 than with the user's
        256). Passes in the user's own batches leave the allocator as
        the user's loop leaves it, and cost per sample what the user's pass costs."""
        if self.device.type == "cuda":
            return CUDA_EVAL_BATCH
        if self.user_eval_bs:
            return self.user_eval_bs
        per = input_bytes(sample) / max(1, batch_len(sample) or 1)
        return default_eval_batch_size(self.train_bs, per)

    def _losses_of(self, inputs: Any, target: Any) -> torch.Tensor:
        """Per-sample losses of one batch (float32 on the device), split on CUDA out-of-memory."""
        try:
            out = self.forward(self.model, inputs)
            vals = self.per_sample(out, target)
        except torch.OutOfMemoryError:
            n = batch_len(inputs) or 1
            if n <= 1:
                raise
            out = None
            torch.cuda.empty_cache()
            half = n // 2
            self.eval_bs = max(1, min(self.eval_bs or n, half))
            return torch.cat([self._losses_of(slice_batch(inputs, slice(0, half)),
                                              slice_batch(target, slice(0, half))),
                              self._losses_of(slice_batch(inputs, slice(half, n)),
                                              slice_batch(target, slice(half, n)))])
        if self.check is None:
            self._check_per_sample(out, target, vals)
        if not self._warned_fallback and self.method == "per-sample calls":
            self._warned_fallback = True
            warnings.warn(
                f"loss_fn {loss_name(self.loss_fn)!r} takes no reduction argument: per-sample losses are computed "
                "one sample at a time (slow). Pass a torch.nn loss or a function accepting reduction='none'.",
                stacklevel=5)
        return vals

    def _check_per_sample(self, out: Any, target: Any, vals: torch.Tensor) -> None:
        try:
            ref = float(torch.as_tensor(self.loss_fn(out, target)).float().mean())
        except Exception as exc:  # the loss cannot be called on this batch as a whole
            self.check = {"consistent": None, "error": str(exc)}
            return
        # None for a non-finite batch: judged on the next finite one
        v = vals.double()
        mean = float((v[:, 0] * v[:, 1]).sum() / v[:, 1].sum()) if v.ndim == 2 else float(v.mean())
        self.check = per_sample_check(mean, ref, what=loss_name(self.loss_fn), method=self.method)

    def eval(self, src: Source | None, indices: np.ndarray, collect_targets: bool,
             pad: tuple[int, int] | None = None) -> tuple[np.ndarray, Any]:
        """Eval mode, large batches; per-sample losses (float32, in ``indices`` order) and the targets if asked.

        ``pad=(samples, index)``: run as many forward passes as ``samples`` samples need (the largest shard of the
        ranks), the missing ones on sample ``index`` with their outputs discarded: a sharded model
        (FSDP) gathers its parameters in every forward, so every rank must run the same number.
        """
        assert src is not None
        self.model.eval()
        device = self.device
        parts: list[torch.Tensor] = []
        targets: list[torch.Tensor] = []
        i = 0
        batches = 0
        while i < len(indices):
            if self.eval_bs is None:
                self.eval_bs = self.default_eval_batch_size(self.unpack(src.batch(indices[:1]))[0])
            chunk = indices[i:i + self.eval_bs]
            inputs, target = self.unpack(src.batch(chunk))
            inputs, target = to_device(inputs, device), to_device(target, device)
            parts.append(self._losses_of(inputs, target))
            if collect_targets and isinstance(target, torch.Tensor):
                # token labels (batch, tokens) differ in length between batches: kept as one flat list
                targets.append(target.detach().reshape(-1) if self.method == "token-weighted" else target.detach())
            i += len(chunk)
            batches += 1
        if pad is not None and pad[0] > 0:
            filler = np.array([pad[1]])
            if self.eval_bs is None:
                self.eval_bs = self.default_eval_batch_size(self.unpack(src.batch(filler))[0])
            self._pad_forwards(src, filler, -(-pad[0] // self.eval_bs) - batches, [None])
        vals = torch.cat(parts).cpu().numpy().astype(np.float32) if parts else np.zeros(0, np.float32)
        tg = torch.cat(targets).cpu() if collect_targets and targets else None
        return vals, tg

    def _pad_forwards(self, src: Source, filler: np.ndarray, count: int, modes: list[Any],
                      prot: Protect | None = None) -> None:
        """``count`` forward passes on the samples ``filler``, one per mode (train flags, or None for eval mode),
        outputs discarded: the collectives of a sharded model's forward, matched across ranks."""
        if count <= 0 or not len(filler):
            return
        inputs, _ = self.unpack(src.batch(filler))
        inputs = to_device(inputs, self.device)
        for _ in range(count):
            for flags in modes:
                if flags is None:
                    self.model.eval()
                else:
                    assert prot is not None
                    prot.apply_train_flags(flags)
                self.forward(self.model, inputs)
                if flags is not None and prot is not None:
                    prot.restore_buffers()

    def train_mode(self, src: Source, indices: np.ndarray, b_train: int, prot: Protect, run_t: bool, run_a: bool,
                   shard: tuple[int, int] | None = None) -> tuple[Any, ...]:
        """T and A on the same augmented batches of the training batch size (sorted probe order), or of the
        eval batch size when train mode is per sample (:attr:`per_sample_train_mode`).

        A final batch smaller than half the training batch size is merged into the
        previous one (a batch of one sample cannot be normalised by batch norm).
        With ``shard=(rank, world)`` only batches ``rank::world`` are run and the
        positions (into ``indices``) of the values are returned third.
        """
        device = self.device
        n = len(indices)
        if not run_t or self.per_sample_train_mode:  # batch composition does not matter
            if self.eval_bs is None:
                self.eval_bs = self.default_eval_batch_size(self.unpack(src.batch(indices[:1]))[0])
            b_train = max(b_train, self.eval_bs)
        starts = list(range(0, n, b_train))
        if len(starts) > 1 and n - starts[-1] < b_train / 2:
            starts.pop()
        bounds = list(zip(starts, starts[1:] + [n]))
        numbered = list(enumerate(bounds))
        if shard is not None:
            numbered = numbered[shard[0]::shard[1]]
            bounds = [b for _, b in numbered]
        t_parts: list[torch.Tensor] = []
        a_parts: list[torch.Tensor] = []
        for k, (lo, hi) in numbered:
            prot.reseed(k)  # batch k draws the same augmentation and dropout masks on any rank
            inputs, target = self.unpack(src.batch(indices[lo:hi]))
            inputs, target = to_device(inputs, device), to_device(target, device)
            if run_t:
                prot.apply_train_flags(self.train_flags)
                t_parts.append(self.per_sample(self.forward(self.model, inputs), target))
                if run_a:  # eval mode reads the running statistics the train-mode forward just moved
                    prot.restore_buffers()
            if run_a:
                self.model.eval()
                a_parts.append(self.per_sample(self.forward(self.model, inputs), target))
        if shard is not None and self.pad_forwards:   # every rank runs as many batches as rank 0 (FSDP)
            filler = indices[:min(n, b_train)]
            modes: list[Any] = ([self.train_flags] if run_t else []) + ([None] if run_a else [])
            self._pad_forwards(src, filler, -(-len(starts) // shard[1]) - len(numbered), modes, prot)
        self.model.eval()
        prot.restore_buffers()
        t_vals = torch.cat(t_parts).cpu().numpy().astype(np.float32) if t_parts else None
        a_vals = torch.cat(a_parts).cpu().numpy().astype(np.float32) if a_parts else None
        if shard is not None:
            pos = (np.concatenate([np.arange(lo, hi) for lo, hi in bounds]) if bounds
                   else np.zeros(0, dtype=np.int64))
            empty = np.zeros(0, np.float32)
            return (t_vals if t_vals is not None or not run_t else empty,
                    a_vals if a_vals is not None or not run_a else empty, pos)
        return t_vals, a_vals
