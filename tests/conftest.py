"""Shared test setup: Keras runs on the torch backend; figures render off-screen."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("MPLBACKEND", "Agg")
