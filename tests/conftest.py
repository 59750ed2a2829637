"""Shared test setup: Keras runs on the torch backend; figures render off-screen; one math thread."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")
# TensorFlow is installed for Keras's TensorFlow backend (tests/test_keras_backends.py); Hugging Face transformers
# must not load its TensorFlow models beside it (transformers 4.41 refuses Keras 3 there).
os.environ.setdefault("USE_TF", "0")
# Small models train faster on one thread; two threads on a 2-core CI machine shared with a
# second process oversubscribe it (measured: 30x slower for one LSTM fit under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property-based tests explore new examples on every local run; in CI (CI=true) they replay a fixed
# derandomized sequence, so a submission's result does not depend on the draw.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
