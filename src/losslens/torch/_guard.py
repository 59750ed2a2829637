"""The context the PyTorch probe passes run in: no gradients, forked RNGs, module flags and buffers restored."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Protect"]


class Protect:
    """Context for the probe passes: no_grad, forked RNGs, module flags and buffers restored.

    Inside, torch's CPU generator (and the CUDA generators of ``devices``), numpy's
    and Python's global RNGs are seeded with ``seed`` so the probe passes are
    reproducible; on exit every state is put back as it was.
    """

    def __init__(self, model: nn.Module, devices: list[int], seed: int) -> None:
        self.model = model
        self.devices = devices
        self.seed = seed
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def reseed(self, k: int = 0, seed: int | None = None) -> None:
        """Seed torch's CPU generator, the CUDA generators of ``devices``, numpy's and Python's RNGs
        with ``seed`` (default: this context's) and ``k`` (the probe batch number), so a batch's random draws
        do not depend on which batches ran before it (on this rank or another)."""
        s = ((self.seed if seed is None else seed) * 1_000_003 + k) % 2 ** 63
        torch.random.default_generator.manual_seed(s)
        for d in self.devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(s)
        np.random.seed(s % 2 ** 32)
        random.seed(s)

    def __enter__(self) -> "Protect":
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._np_state = np.random.get_state()
        self._py_state = random.getstate()
        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        self._nograd = torch.no_grad()
        self._nograd.__enter__()
        torch.random.default_generator.manual_seed(self.seed)
        for d in self.devices:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        random.seed(self.seed)
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        return self

    def apply_train_flags(self, flags: list[bool] | None) -> None:
        """Train mode: the flags the modules had during training (all on when unknown)."""
        if flags is None or len(flags) != len(self._modes):
            self.model.train()
        else:
            for (m, _), f in zip(self._modes, flags):
                m.training = f
            if not self.model.training:
                self.model.train()

    def restore_buffers(self) -> None:
        for b, saved in self._buffers or ():
            b.copy_(saved)

    def sync_buffers(self, src: int = 0) -> None:
        """Distributed: measure with rank ``src``'s buffers (one ``broadcast_object_list``).

        Under DDP the parameters are equal on every rank, but the batch-norm running
        statistics are each rank's own until the next forward broadcasts rank 0's
        (``broadcast_buffers=True``); the probe passes use rank 0's, so every shard
        is measured on the same model. Each rank's own buffers come back on exit.
        """
        bufs = list(self.model.buffers())
        if not bufs:
            return
        box = [[b.detach().cpu() for b in bufs] if torch.distributed.get_rank() == src else None]
        torch.distributed.broadcast_object_list(box, src=src)
        self._orig = self._buffers
        for b, v in zip(bufs, box[0] or []):
            b.copy_(v.to(b.device))
        self._buffers = [(b, b.detach().clone()) for b in bufs]

    def __exit__(self, *exc: Any) -> None:
        try:
            self.restore_buffers()
            for b, saved in getattr(self, "_orig", None) or ():
                b.copy_(saved)
            for m, t in self._modes:
                m.training = t
        finally:
            self._nograd.__exit__(None, None, None)
            self._fork.__exit__(None, None, None)
            np.random.set_state(self._np_state)
            random.setstate(self._py_state)

