"""Noise-aware early stopping: the rule on curves with a known answer, its false-alarm rate on noise, and the
stoppers of the plain PyTorch recorder and of Keras in real training runs."""

from __future__ import annotations

import numpy as np
import pytest

from losslens.recording.stopping import NoiseAwareStopper


def _per_sample(rng, means, n=400, sd=0.3):
    """Per-sample losses of a fixed set: sample difficulty shared across epochs, plus small epoch noise."""
    base = rng.normal(0, sd, n)
    return [m + base - base.mean() + rng.normal(0, 0.02, n) for m in means]


def _run(means, samples=None, **kw):
    st = NoiseAwareStopper(**kw)
    for t, m in enumerate(means):
        d = st.update(t, m, None if samples is None else samples[t])
        if d.stop:
            return t, d
    return None, st.decision


def test_overfitting_stops_two_epochs_after_the_rise_and_keeps_the_best():
    rng = np.random.default_rng(0)
    means = [1.0 / (t + 1) + 0.5 for t in range(10)] + [0.6 + 0.02 * k for k in range(1, 15)]
    s = _per_sample(rng, means)
    stop, d = _run([x.mean() for x in s], s)
    best = int(np.argmin([x.mean() for x in s]))
    assert d.best_epoch == best
    assert stop is not None and best < stop <= best + 6
    assert "worse than the best" in d.reason


def test_a_slow_steady_improvement_is_not_stopped():
    """Each epoch improves by less than its noise; the trend over the patience window keeps training."""
    rng = np.random.default_rng(1)
    means = list(1.0 - 0.004 * np.arange(40) + rng.normal(0, 0.01, 40))
    stop, d = _run(means, patience=10)
    assert stop is None or stop >= 35


def test_a_plateau_stops_after_the_patience_bound():
    rng = np.random.default_rng(2)
    means = [1.0 / (t + 1) + 0.3 for t in range(8)] + list(0.43 + rng.normal(0, 0.01, 32))
    stop, d = _run(means, patience=6)
    assert stop is not None and stop < 30


def test_false_alarm_rate_on_noise():
    """Pure noise around a constant (no overfitting): the 'worse beyond noise' stop fires in few runs (the patience
    bound is the expected way out of a plateau)."""
    rng = np.random.default_rng(3)
    worse = 0
    for _ in range(200):
        means = list(0.5 + rng.normal(0, 0.01, 30))
        stop, d = _run(means, patience=30)
        worse += stop is not None and "worse than the best" in d.reason
    assert worse / 200 <= 0.10, worse


def test_a_diverged_run_stops_after_worse_epochs_non_finite_epochs():
    """A non-finite value counts once toward the consecutive worse epochs (WORSE_EPOCHS = 3), not twice."""
    means = [1.0, 0.8, 0.7, 0.65, 0.6, 0.58] + [float("nan")] * 5
    stop, d = _run(means, patience=30)
    assert stop == 6 + 3 - 1 and d.evidence["worse_streak"] == 3


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="mode"):
        NoiseAwareStopper(mode="lowest")
    with pytest.raises(ValueError, match="patience"):
        NoiseAwareStopper(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        NoiseAwareStopper(min_delta=-1)


def test_torch_should_stop_in_a_real_overfitting_run(tmp_path):
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits
    from torch import nn

    from losslens.torch import LossLens

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    y = np.where(rng.random(len(y)) < 0.3, rng.integers(0, 10, len(y)), y)   # label noise: it will overfit
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=(X[400:], y[400:]),
                    store=tmp_path / "s.db", probe_size=0)
    stopped = None
    for epoch in range(80):
        for i in range(0, 400, 20):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X[i:i + 20]), y[i:i + 20])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=20)
        lens.end_epoch()
        if lens.should_stop():
            stopped = epoch
            break
    v = [e.get("validation").mean for e in lens.run.epochs]
    assert stopped is not None and stopped < 79
    assert lens.stop_decision.best_epoch == int(np.argmin(v)) < stopped
    assert lens.run.meta["early_stopping"]["best_epoch"] == lens.stop_decision.best_epoch
    run = lens.finish()
    from losslens.store import Store

    with Store(tmp_path / "s.db") as st:
        assert st.load_run(run.id).meta["early_stopping"]["stop"] is True


def test_keras_early_stopping_restores_the_truly_best_epoch():
    pytest.importorskip("keras")
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    from losslens.keras import EarlyStopping, LossLens

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 20)).astype("float32")
    y = (x[:, :1] + 0.8 * rng.normal(size=(240, 1))).astype("float32")        # few samples, much noise: overfits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    lens = LossLens(store=None, probe_size=0)
    stop = EarlyStopping(lens=lens, restore_best_weights=True, patience=10)
    h = model.fit(x[:160], y[:160], validation_data=(x[160:], y[160:]), epochs=150, batch_size=16, verbose=0,
                  callbacks=[lens, stop])
    v = [e.get("validation").mean for e in lens.run.epochs]
    assert 0 < stop.stopped_epoch < 149 and len(h.history["loss"]) == stop.stopped_epoch + 1
    assert stop.best_epoch == int(np.argmin(v))
    restored = float(np.mean((model.predict(x[160:], verbose=0) - y[160:]) ** 2))
    assert restored == pytest.approx(v[stop.best_epoch], rel=1e-4)       # the best epoch's weights, not the last
    assert restored < v[-1]
