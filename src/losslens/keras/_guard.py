"""The context of the Keras callback's passes: RNG states and non-trainable variables restored afterwards."""

from __future__ import annotations

import random
from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = ["_StateGuard"]

# ---------------------------------------------------------------------------------------------
# RNG and state guard
# ---------------------------------------------------------------------------------------------
class _StateGuard:
    """Save and restore everything a forward pass may change.

    Restores Python's and NumPy's global RNG, the backend's global RNG (torch
    CPU and CUDA generators; TensorFlow's global generator), Keras's global
    ``SeedGenerator`` and every non-trainable variable of the model (batch-norm
    moving statistics, layer ``SeedGenerator`` states). Inside the block the
    global RNGs are seeded with ``seed`` so probe passes are reproducible.
    """

    def __init__(self, model: Any, seed: int) -> None:
        self.model, self.seed = model, seed

    def __enter__(self) -> "_StateGuard":
        self.py = random.getstate()
        self.np = np.random.get_state()
        # device-side copies: no host transfer; assign() writes them back bit for bit
        self.vars = [(v, ops.copy(v.value)) for v in self.model.non_trainable_variables]
        self.global_sg = None
        try:
            from keras.src.backend.common import global_state
            sg = global_state.get_global_attribute("global_seed_generator")
            if sg is not None:
                self.global_sg = (sg.state, ops.convert_to_numpy(sg.state.value).copy())
        except Exception:  # noqa: BLE001 - private location may move; the rest still restores
            self.global_sg = None
        self.backend = keras.backend.backend()
        self.torch_state = None
        self.no_grad = None
        if self.backend == "torch":
            import torch
            self.torch_state = (torch.get_rng_state(),
                                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
            torch.manual_seed(self.seed)
            self.no_grad = torch.no_grad()
            self.no_grad.__enter__()
        elif self.backend == "tensorflow":
            import tensorflow as tf
            g = tf.random.get_global_generator()
            self.tf_state = (g, g.state.numpy().copy())
        random.seed(self.seed)
        np.random.seed(self.seed % (2 ** 32))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.no_grad is not None:
            self.no_grad.__exit__(*exc)
        for v, val in self.vars:
            v.assign(val)
        if self.global_sg is not None:
            self.global_sg[0].assign(self.global_sg[1])
        if self.torch_state is not None:
            import torch
            torch.set_rng_state(self.torch_state[0])
            if self.torch_state[1] is not None:
                torch.cuda.set_rng_state_all(self.torch_state[1])
        elif self.backend == "tensorflow":
            g, st = self.tf_state
            g.state.assign(st)
        np.random.set_state(self.np)
        random.setstate(self.py)


