"""losslens: what your loss curves really mean.

Record a run (``losslens.torch.Lens``, ``losslens.keras.LossLens``) or import
the logs a framework wrote, then diagnose it: the gap between the reported
training loss and the validation loss split into measured parts, the fit
regime, instability, and what to change.
"""

from .record import Epoch, Measurement, Run, Steps
from .store import Store, StoreError

__version__ = "0.1.0"

__all__ = ["Epoch", "Measurement", "Run", "Steps", "Store", "StoreError", "__version__"]
