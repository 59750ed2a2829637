"""The Keras 3 callback on the TensorFlow and JAX backends (issue 15), each in its own process (Keras chooses its
backend once, at import): the same seeded fit, from the same initial weights, gives the same recorded numbers as
on the torch backend within float32 tolerance; what a backend cannot give (JAX: per-step losses) is in the
run's metadata and in the report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    from losslens.keras import LossLens
    from losslens.report import Report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(192, 6)).astype("float32")
    y = (x @ rng.normal(size=(6, 1)) + 0.3 * rng.normal(size=(192, 1))).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)),
                              keras.layers.Dense(16, activation="relu",
                                                 kernel_regularizer=keras.regularizers.l2(0.01)),
                              keras.layers.BatchNormalization(), keras.layers.Dense(1)])
    # the same initial weights on every backend (their initialisers draw differently)
    w = np.random.default_rng(1)
    model.set_weights([w.normal(scale=0.3, size=v.shape).astype("float32") if v.ndim == 2 else
                       (np.ones(v.shape, "float32") if "gamma" in v.path or "variance" in v.path
                        else np.zeros(v.shape, "float32")) for v in model.weights])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    lens = LossLens(store=None, probe_size=96)
    h = model.fit(x, y, batch_size=32, epochs=3, validation_split=0.25, shuffle=False, verbose=0, callbacks=[lens])
    run = lens.run
    text = Report.from_run(run).to_markdown() + Report.from_run(run).to_html()
    print("RESULT " + json.dumps({
        "backend": keras.backend.backend(),
        "R": [e.train_loss for e in run.epochs],
        "penalty": [e.penalty for e in run.epochs],
        "C": [e.get("eval_clean").mean for e in run.epochs],
        "T": [e.get("train_mode").mean for e in run.epochs],
        "V": [e.get("validation").mean for e in run.epochs],
        "val_loss": h.history["val_loss"],
        "loss": h.history["loss"],
        "steps": len(run.steps),
        "step_losses": run.meta.get("step_losses"),
        "report_says_per_epoch": "per epoch only" in text,
    }))
    """
)


def _run(backend: str, tmp_path) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu")
    script = tmp_path / f"fit_{backend}.py"
    script.write_text(SCRIPT)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, f"{backend}: exit {p.returncode}\n{p.stderr[-3000:]}"
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def on_torch(tmp_path_factory):
    pytest.importorskip("torch")
    return _run("torch", tmp_path_factory.mktemp("torch"))


def _needed(module: str) -> None:
    """Under CI=true a missing backend fails (CI installs it); elsewhere the test is skipped."""
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed; CI installs it (pyproject.toml's test extra)")
        pytest.skip(f"{module} is not installed")


def _same_numbers(got: dict, ref: dict) -> None:
    for key in ("C", "T", "V", "penalty", "val_loss", "loss"):
        assert got[key] == pytest.approx(ref[key], rel=2e-4, abs=1e-5), key
    # R (the data part of the reported loss) equals Keras's loss minus the penalty on every backend
    for r, pen, loss in zip(got["R"], got["penalty"], got["loss"]):
        assert r + pen == pytest.approx(loss, rel=1e-4)


def test_tensorflow_backend_records_the_same_numbers_as_torch(on_torch, tmp_path):
    _needed("tensorflow")
    tf = _run("tensorflow", tmp_path)
    assert tf["backend"] == "tensorflow"
    _same_numbers(tf, on_torch)
    assert tf["steps"] == on_torch["steps"] == 3 * 5   # per-step losses, as on torch
    assert tf["R"] == pytest.approx(on_torch["R"], rel=2e-4)
    assert not tf["report_says_per_epoch"]


def test_jax_backend_records_per_epoch_and_says_so(on_torch, tmp_path):
    _needed("jax")
    jx = _run("jax", tmp_path)
    assert jx["backend"] == "jax"
    # the probes and the validation pass run on the end-of-epoch weights: the same numbers as on torch
    for key in ("C", "T", "V", "val_loss", "loss"):
        assert jx[key] == pytest.approx(on_torch[key], rel=2e-4, abs=1e-5), key
    # JAX synchronises variables at the epoch end only: one step row per epoch, and the report says so
    assert jx["steps"] == 3
    assert jx["step_losses"].startswith("per epoch only")
    assert jx["report_says_per_epoch"]
