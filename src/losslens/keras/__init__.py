"""Keras 3 adapter: a callback that measures what the loss curves mean.

:class:`LossLens` is a ``keras.callbacks.Callback`` that, during
``model.fit``, measures the quantities of the losslens protocol
(DESIGN.md, "The measurement protocol") and writes them to a
:class:`losslens.store.Store`, so that ``losslens report`` and
:func:`losslens.diagnose.diagnose` work exactly as for the PyTorch adapter.

Per epoch ``e`` (all losses are means **per sample**, in the units of the
compiled loss):

* ``R`` -- the reported training loss, data part: Keras's ``loss`` log minus
  the penalty. Recovered step by step from Keras's loss tracker (see below).
* ``Ω`` -- the penalty Keras adds to the training loss: ``sum(model.losses)``
  (kernel/bias/activity regularizers and ``add_loss``), measured **per step**
  and averaged with the same batch-size weights as Keras's ``loss``.
* ``T`` -- train-mode probe loss: ``model(x, training=True)`` on the probe
  set with the training batch size (batch-norm batch statistics depend on it),
  no gradient, RNG states and non-trainable variables restored afterwards.
* ``C`` -- eval-mode training loss: ``model(x, training=False)`` on the probe
  set (the "true" training loss of ``trueloss``).
* ``V`` -- validation loss, eval mode, data part only (Keras's ``val_loss``
  also contains the penalty; losslens's ``V`` does not).

Keras augmentation layers (``RandomFlip``, ...) run inside the model and only
in training mode, so ``A`` (eval mode on augmented inputs) is not measured:
with such layers the ``train_mode`` term contains the augmentation.

The callback works on every Keras 3 backend (TensorFlow, JAX, PyTorch); the
restoration of the backend's global RNG and the ``no_grad`` context differ by
backend, and on JAX, whose trainer writes the model's state back to its
variables only at the end of an epoch, losses and penalty are recorded per
epoch instead of per step.

Keras does not give callbacks the data passed to ``fit``; :func:`_fit_locals`
reads it from ``fit``'s own arguments (or pass ``train_data=`` / ``val_data=``).
"""

from ..recording.probe import PROBE_CAP
from ._callback import LossLens
from ._data import LossLensError, per_sample_loss
from ._stopping import EarlyStopping

__all__ = ["LossLens", "EarlyStopping", "per_sample_loss", "LossLensError"]

DEFAULT_PROBE_CAP = PROBE_CAP   # the name of the first version of this module
