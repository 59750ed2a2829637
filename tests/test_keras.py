"""losslens.keras.LossLens on real Keras 3 models (torch backend, CPU, seeded, seconds each)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from losslens.diagnose import decompose  # noqa: E402
from losslens.keras import LossLens, LossLensError, per_sample_loss  # noqa: E402
from losslens.record import EVAL_CLEAN, TRAIN_MODE, VALIDATION, fingerprint_indices  # noqa: E402
from losslens.report import Report  # noqa: E402
from losslens.store import Store  # noqa: E402

# Several test processes share two cores; one intra-op thread avoids oversubscription (10x slower otherwise).
torch.set_num_threads(1)

L = keras.layers


def _data(n=120, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    w = rng.normal(size=(d, 1)).astype("float32")
    y = (x @ w + 0.3 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def _model(dropout=0.3, bn=True, reg=None, act_reg=None, opt="adam", seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((4,)), L.Dense(16, activation="relu", kernel_regularizer=reg, activity_regularizer=act_reg)]
    if dropout:
        layers.append(L.Dropout(dropout))
    if bn:
        layers.append(L.BatchNormalization())
    layers.append(L.Dense(1))
    m = keras.Sequential(layers)
    m.compile(optimizer=opt, loss="mse")
    return m


def _batch_data_loss(model, xb, yb):
    yp = model(xb, training=False)
    return float(np.mean((keras.ops.convert_to_numpy(yp) - yb) ** 2))


# --- per-step recovery and the penalty ----------------------------------------------------------------
def test_step_losses_and_penalty_recovered_exactly_with_fixed_weights():
    """With learning rate 0 every step sees the same weights, so each step's data loss and penalty
    (l2 kernel + l1 activity regularizer) can be computed directly and compared per batch,
    including the uneven last batch (50 = 16 + 16 + 16 + 2)."""
    x, y = _data(50)
    reg, act = keras.regularizers.l2(0.05), keras.regularizers.l1(0.01)
    model = _model(dropout=0, bn=False, reg=reg, act_reg=act, opt=keras.optimizers.SGD(0.0))
    lens = LossLens(store=None)
    h = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, callbacks=[lens], verbose=0)
    st = lens.run.steps
    assert st.batch_size.tolist() == [16, 16, 16, 2]
    for k, (a, b) in enumerate([(0, 16), (16, 32), (32, 48), (48, 50)]):
        expected_data = _batch_data_loss(model, x[a:b], y[a:b])   # model(...) also refills model.losses
        expected_pen = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)
        assert st.loss[k] == pytest.approx(expected_data, rel=1e-4, abs=1e-6)
        assert st.penalty[k] == pytest.approx(expected_pen, rel=1e-4)
        assert st.penalty[k] > 0
    ep = lens.run.epochs[0]
    # R and Ω are the batch-size weighted means of the steps; R + Ω is Keras's own "loss".
    assert ep.train_loss == pytest.approx(np.average(st.loss, weights=st.batch_size), rel=1e-6)
    assert ep.penalty == pytest.approx(np.average(st.penalty, weights=st.batch_size), rel=1e-6)
    assert ep.reported_loss == pytest.approx(h.history["loss"][0], rel=1e-6)
    assert ep.n_samples == 50 and ep.n_steps == 4


def test_penalty_term_equals_sum_of_model_losses_during_training():
    """Ω of each step is sum(model.losses) at the weights the step used (recorded independently by a
    callback before LossLens); the decomposition's penalty term is their batch-weighted mean, and Keras's
    val_loss includes the end-of-epoch penalty while losslens's validation loss does not."""
    x, y = _data(96)
    xv, yv = _data(40, seed=1)
    model = _model(dropout=0, bn=False, reg=keras.regularizers.l2(0.02))

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pen, self.end = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.pen.append(sum(float(keras.ops.convert_to_numpy(v)) for v in self.model.losses))

        def on_epoch_end(self, epoch, logs=None):
            self.end.append(sum(float(keras.ops.convert_to_numpy(v)) for v in self.model.losses))

    rec = Record()
    lens = LossLens(store=None)
    h = model.fit(x, y, batch_size=32, epochs=3, validation_data=(xv, yv), callbacks=[rec, lens], verbose=0)
    run = lens.run
    np.testing.assert_allclose(run.steps.penalty, rec.pen, rtol=1e-5)
    dec = decompose(run)
    for e, d in enumerate(dec):
        sel = run.steps.epoch == e
        omega = np.average(run.steps.penalty[sel], weights=run.steps.batch_size[sel])
        assert d.terms["penalty"].value == pytest.approx(omega, rel=1e-9)
        assert h.history["penalty_loss"][e] == pytest.approx(omega, rel=1e-9)
        # Keras's val_loss = data loss + sum(model.losses) at the end-of-epoch weights
        assert h.history["val_loss"][e] == pytest.approx(h.history["losslens_val_loss"][e] + rec.end[e], rel=1e-5)
        assert h.history["val_loss"][e] > h.history["losslens_val_loss"][e]
    assert run.meta["penalty_in_validation"] is True
    assert run.meta["penalty_source"] == "model.losses"


# --- recording never changes training --------------------------------------------------------------------
def test_weights_bit_identical_with_and_without_the_callback():
    """Dropout without a seed (torch's global RNG), batch norm (moving statistics), shuffling and
    validation_split: the probe passes must leave every RNG and variable as they were."""
    x, y = _data(150)

    def train(with_lens):
        model = _model(dropout=0.3, bn=True, reg=keras.regularizers.l2(1e-3))
        cbs = [LossLens(store=None)] if with_lens else []
        h = model.fit(x, y, batch_size=16, epochs=3, validation_split=0.2, callbacks=cbs, verbose=0)
        return [keras.ops.convert_to_numpy(v).copy() for v in model.weights], h.history

    w_on, h_on = train(True)
    w_off, h_off = train(False)
    assert len(w_on) == len(w_off)
    for a, b in zip(w_on, w_off):
        assert np.array_equal(a, b)
    assert h_on["loss"] == h_off["loss"] and h_on["val_loss"] == h_off["val_loss"]


def test_decomposition_identity_and_validation_matches_keras():
    x, y = _data(160)
    xv, yv = _data(64, seed=2)
    model = _model(dropout=0.4, bn=True)
    lens = LossLens(store=None, probe_size=64)
    h = model.fit(x, y, batch_size=16, epochs=3, validation_data=(xv, yv), callbacks=[lens], verbose=0)
    run = lens.run
    dec = decompose(run)
    assert len(dec) == 3
    for e, d in enumerate(dec):
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-9)
        assert d.reported == pytest.approx(h.history["loss"][e], rel=1e-6)
        # no penalty: losslens's validation pass reproduces Keras's val_loss (batch-norm statistics restored
        # after the train-mode pass, before the eval passes)
        assert d.validation == pytest.approx(h.history["val_loss"][e], rel=1e-5)
        assert set(run.epochs[e].measurements) == {TRAIN_MODE, EVAL_CLEAN, VALIDATION}
        assert run.epochs[e].get(EVAL_CLEAN).n == 64
        assert d.terms["train_mode"].status == "measured"
    assert h.history["eval_train_loss"] == [e.get(EVAL_CLEAN).mean for e in run.epochs]
    assert run.meta["dropout_layers"] and run.meta["batchnorm_layers"]
    assert run.meta["per_sample_loss_check"]["consistent"] is True


def test_per_epoch_mode_used_on_jax_keeps_the_identity():
    """On the JAX backend variables are synchronised only at the epoch end, so the callback records one row
    per epoch (mean loss, penalty at the end-of-epoch weights). Forced here on torch: Keras's loss is still
    split exactly into data loss and penalty, and the decomposition still adds up."""

    class PerEpoch(LossLens):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self._per_step = False

    x, y = _data(96)
    model = _model(dropout=0.2, bn=False, reg=keras.regularizers.l2(0.01))
    lens = PerEpoch(store=None)
    h = model.fit(x, y, batch_size=32, epochs=2, validation_split=0.25, callbacks=[lens], verbose=0)
    run = lens.run
    assert len(run.steps) == 2 and run.steps.span.tolist() == [3.0, 3.0]
    assert run.steps.position.tolist() == [0.5, 1.5]
    end_penalty = sum(float(keras.ops.convert_to_numpy(v)) for v in model.losses)   # weights after the run
    assert run.epochs[-1].penalty == pytest.approx(end_penalty, rel=1e-5)
    for e, d in enumerate(decompose(run)):
        assert d.reported == pytest.approx(h.history["loss"][e], rel=1e-6)
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-9)


# --- logs, callbacks ------------------------------------------------------------------------------------------
def test_early_stopping_and_csv_logger_see_eval_train_loss(tmp_path):
    x, y = _data(64)
    model = _model(dropout=0, bn=False)
    log = tmp_path / "log.csv"
    # min_delta larger than any possible improvement: stops after `patience` epochs if it sees the key;
    # without the key Keras only warns and trains all 6 epochs.
    # Keras 3 infers the direction only for "loss"/"val_loss" and compiled metrics: mode="min" is required.
    stop = keras.callbacks.EarlyStopping(monitor="eval_train_loss", mode="min", min_delta=100.0, patience=1)
    lens = LossLens(store=None)
    h = model.fit(x, y, batch_size=16, epochs=6, validation_split=0.25,
                  callbacks=[lens, stop, keras.callbacks.CSVLogger(str(log))], verbose=0)
    assert len(h.history["loss"]) == 2
    assert stop.stopped_epoch == 1
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[1]["eval_train_loss"]) == pytest.approx(h.history["eval_train_loss"][1])
    assert {"data_loss", "penalty_loss", "losslens_val_loss"} <= set(rows[0])
    # no dropout or batch norm: the train-mode pass is skipped, and says why
    assert "train_mode_loss" not in h.history
    assert "dropout" in lens.run.meta["skipped"]["train_mode"]
    assert TRAIN_MODE not in lens.run.epochs[0].measurements


# --- data sources ------------------------------------------------------------------------------------------------
def test_validation_split_probe_from_training_part_only():
    x, y = _data(100)
    model = _model(dropout=0, bn=False)
    lens = LossLens(store=None, probe_size="all")
    h = model.fit(x, y, batch_size=20, epochs=1, validation_split=0.2, callbacks=[lens], verbose=0)
    meta = lens.run.meta
    assert (meta["train_size"], meta["val_size"], meta["probe_size"]) == (80, 20, 80)
    assert lens.probe_indices.max() == 79
    assert meta["probe_fingerprint"] == fingerprint_indices(np.arange(80), 80)
    assert lens.run.epochs[0].get(VALIDATION).mean == pytest.approx(h.history["val_loss"][0], rel=1e-5)
    # C over the whole training part equals a direct computation
    assert h.history["eval_train_loss"][0] == pytest.approx(_batch_data_loss(model, x[:80], y[:80]), rel=1e-5)

    # content fingerprints of the two parts (for checks across the runs of an experiment)
    from losslens.recording.fingerprint import fingerprint_samples
    assert meta["train_fingerprint"] == fingerprint_samples((x[:80], y[:80]))["fingerprint"]
    assert meta["val_fingerprint"] == fingerprint_samples((x[80:], y[80:]))["fingerprint"]
    assert meta["train_fingerprint"] != meta["val_fingerprint"]

    # the full arrays given as probe: the validation tail that fit split off is removed
    model = _model(dropout=0, bn=False)
    lens2 = LossLens(train_data=(x, y), store=None, probe_size="all")
    model.fit(x, y, batch_size=20, epochs=1, validation_split=0.2, callbacks=[lens2], verbose=0)
    assert lens2.run.meta["train_size"] == 80 and lens2.probe_indices.max() == 79


class _Seq(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.bs = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.bs)

    def __getitem__(self, i):
        sl = slice(i * self.bs, (i + 1) * self.bs)
        return self.x[sl], self.y[sl]


def test_pydataset_training_and_validation():
    x, y = _data(90)
    xv, yv = _data(30, seed=3)
    model = _model(dropout=0.2, bn=False)
    lens = LossLens(store=None)
    h = model.fit(_Seq(x, y, 16), validation_data=_Seq(xv, yv, 16), epochs=2, callbacks=[lens], verbose=0)
    meta = lens.run.meta
    assert (meta["train_size"], meta["val_size"], meta["probe_size"], meta["batch_size"]) == (90, 30, 30, 16)
    assert h.history["losslens_val_loss"][1] == pytest.approx(h.history["val_loss"][1], rel=1e-5)
    # fit shuffles the order of a PyDataset's batches; the uneven batch is weighted by its size
    first = lens.run.steps.for_epoch(0)
    assert sorted(first.batch_size.tolist()) == [10, 16, 16, 16, 16, 16]
    assert lens.run.epochs[0].n_samples == 90


def test_unindexable_training_data_gets_a_clear_error():
    x, y = _data(64)

    def gen():
        while True:
            for i in range(0, 64, 16):
                yield x[i:i + 16], y[i:i + 16]

    model = _model(dropout=0, bn=False)
    with pytest.raises(LossLensError, match=r"train_data=\(x_train, y_train\)"):
        model.fit(gen(), steps_per_epoch=4, epochs=1, callbacks=[LossLens(store=None)], verbose=0)
    # with an explicit probe it works
    model = _model(dropout=0, bn=False)
    lens = LossLens(train_data=(x, y), store=None)
    model.fit(gen(), steps_per_epoch=4, epochs=2, callbacks=[lens], verbose=0)
    assert len(lens.run.epochs) == 2 and VALIDATION not in lens.run.epochs[0].measurements
    assert "validation" in lens.run.meta["skipped"]


def test_store_roundtrip_and_diagnose(tmp_path):
    x, y = _data(80)
    model = _model(dropout=0.3, bn=False)
    path = tmp_path / "ll.db"
    lens = LossLens(run="roundtrip", store=str(path))
    model.fit(x, y, batch_size=16, epochs=4, validation_split=0.25, callbacks=[lens], verbose=0)
    with Store(path) as s:
        back = s.load_run("roundtrip")
    assert back.status == "finished" and len(back.epochs) == 4
    assert back.meta["framework"] == "keras" and back.meta["keras_backend"] == "torch"
    for a, b in zip(back.epochs, lens.run.epochs):
        assert a.train_loss == b.train_loss and a.penalty == b.penalty
        assert np.array_equal(a.get(EVAL_CLEAN).values, b.get(EVAL_CLEAN).values)
    np.testing.assert_array_equal(back.steps.loss, lens.run.steps.loss)
    report = Report.from_run(lens)
    codes = [f.code for f in report.findings]
    assert "gap.decomposition" in codes
    # passed to evaluate() outside fit, the callback records nothing and does not fail
    model.evaluate(x, y, callbacks=[lens], verbose=0)
    assert len(lens.run.epochs) == 4


def test_invalid_arguments():
    with pytest.raises(ValueError, match="probe_size"):
        LossLens(probe_size=-1)
    with pytest.raises(ValueError, match="probe_size"):
        LossLens(probe_size="some")
    with pytest.raises(ValueError, match="probe_budget"):
        LossLens(probe_budget=0)
    with pytest.raises(ValueError, match="probe_budget"):
        LossLens(probe_budget=1.5)
    with pytest.raises(ValueError, match="train_mode"):
        LossLens(train_mode="yes")
    with pytest.raises(RuntimeError, match="no epoch"):
        LossLens(store=None).diagnose()


# --- probe size: cost budget ------------------------------------------------------------------------------------
def _budget_fit(budget=None, probe_size="auto", store=None, n=3000, epochs=2):
    """3000 training and 3000 validation samples, dropout (T is measured), batch 64: the validation size
    (3000) would cost far more than 3 % of an epoch."""
    x, y = _data(n)
    xv, yv = _data(n, seed=5)
    model = _model(dropout=0.2, bn=False)
    kw = {} if budget is None else {"probe_budget": budget}
    lens = LossLens(store=store, probe_size=probe_size, **kw)
    h = model.fit(x, y, batch_size=64, epochs=epochs, validation_data=(xv, yv), callbacks=[lens], verbose=0)
    return lens, h


def _expected_auto_size(meta, budget, passes=2):
    """The rule of docs/keras.md: a training sample counts as 1.5 probe-pass samples, ``passes`` per probe sample."""
    cap = min(meta["val_size"], 10_000, meta["train_size"])
    by_budget = int(budget * 1.5 * meta["train_size"] / passes)
    return min(cap, max(min(200, cap), by_budget))


@pytest.mark.parametrize("budget", [None, 0.2])
def test_auto_probe_size_is_bounded_by_the_cost_budget(tmp_path, budget):
    path = tmp_path / "ll.db"
    lens, h = _budget_fit(budget, store=str(path))
    run, meta = lens.run, lens.run.meta
    b = 0.03 if budget is None else budget
    assert meta["probe_budget"] == b
    n = meta["probe_size"]
    # the size follows from sample counts alone (no timing), and is below the validation size
    assert meta.get("probe_cost_per_sample_s") is None
    assert n == _expected_auto_size(meta, b) == {0.03: 200, 0.2: 450}[b]
    assert 200 <= n < meta["val_size"] == 3000
    assert meta["probe_size_reason"].startswith("auto: ")
    # the reason names the binding limit
    by_budget = int(b * 3 * 3000 / 2)
    why = ("raised to the minimum 200" if by_budget < 200 else "limited by the cost budget" if by_budget < 3000
           else "limited by the validation size (3000)")
    assert why in meta["probe_size_reason"]
    # a seeded permutation's prefix, fixed at the first epoch end and measured in every epoch from the first
    perm = np.random.default_rng(0).permutation(3000)
    np.testing.assert_array_equal(lens.probe_indices, np.sort(perm[:n]))
    assert meta["probe_fingerprint"] == fingerprint_indices(np.sort(perm[:n]), 3000)
    assert len(h.history["eval_train_loss"]) == len(h.history["train_mode_loss"]) == 2
    for e in run.epochs:
        assert e.get(EVAL_CLEAN).n == e.get(TRAIN_MODE).n == n
        assert e.get(VALIDATION).n == 3000                   # the validation pass is never subsampled
    # C equals a direct computation on exactly these samples
    x, y = _data(3000)
    assert h.history["eval_train_loss"][-1] == pytest.approx(
        _batch_data_loss(lens.model, x[lens.probe_indices], y[lens.probe_indices]), rel=1e-5)
    # the stored metadata was updated when the probe was fixed
    with Store(path) as s:
        back = s.load_run(run.name)
    for k in ("probe_size", "probe_budget", "probe_size_reason", "probe_fingerprint"):
        assert back.meta[k] == meta[k]


def test_auto_probe_takes_the_whole_cap_when_the_budget_allows():
    """A budget of 100 % of a 3000-sample epoch covers a 600-sample validation-sized probe."""
    x, y = _data(3000)
    xv, yv = _data(150, seed=5)
    model = _model(dropout=0.2, bn=False)
    lens = LossLens(store=None, probe_budget=1.0)
    model.fit(x, y, batch_size=64, epochs=1, validation_data=(xv, yv), callbacks=[lens], verbose=0)
    meta = lens.run.meta
    assert meta["probe_size"] == _expected_auto_size(meta, 1.0) == 150
    assert "limited by the validation size (150)" in meta["probe_size_reason"]


def test_timed_probe_size_is_an_explicit_option():
    """probe_size="timed" keeps the wall-clock budget of a timed pilot pass, and says so."""
    lens, _ = _budget_fit(budget=0.2, probe_size="timed", epochs=1)
    meta = lens.run.meta
    cap = 3000
    by_budget = int(0.2 * lens.run.epochs[0].seconds / meta["probe_cost_per_sample_s"])
    assert meta["probe_size"] == min(cap, max(200, by_budget))
    assert meta["probe_size_reason"].startswith("timed: ")


@pytest.mark.parametrize("probe_size, expected", [(50, 50, ), ("all", 3000), (5000, 3000)])
def test_probe_size_int_or_all_overrides_the_budget(probe_size, expected):
    lens, h = _budget_fit(budget=0.001, probe_size=probe_size, epochs=1)
    meta = lens.run.meta
    assert meta["probe_size"] == expected == lens.run.epochs[0].get(EVAL_CLEAN).n
    assert meta["probe_size_reason"] == f"probe_size={probe_size!r}"
    assert meta.get("probe_cost_per_sample_s") is None and meta["probe_budget"] is None
    assert lens.probe_indices.tolist() == np.sort(np.random.default_rng(0).permutation(3000)[:expected]).tolist()


# --- exact duplicates across the split -----------------------------------------------------------------------------
def test_exact_duplicate_check_at_the_start_of_training():
    x, y = _data(200)
    xv, yv = _data(60, seed=4)
    rows = np.random.default_rng(1).choice(200, size=20, replace=False)     # training rows copied ...
    at = np.arange(0, 60, 3)                                                 # ... to these validation rows
    xv[at] = x[rows]
    model = _model(dropout=0, bn=False)
    lens = LossLens(store=None)
    model.fit(x, y, batch_size=32, epochs=1, validation_data=(xv, yv), callbacks=[lens], verbose=0)
    d = lens.run.meta["split_exact_duplicates"]
    assert d["n_val_duplicated"] == 20 and d["n_train_duplicated"] == 20 and d["n_pairs"] == 20
    assert (d["n_train"], d["n_val"]) == (200, 60)
    assert d["pairs"] == [[int(r), int(v)] for r, v in zip(rows, at)]
    from losslens.diagnose import diagnose
    assert "split.exact_duplicates" in diagnose(lens.run).codes()

    # validation_split: the training part and the split-off tail (rows 80..99); rows 80..84 copy rows 3..7
    x2, y2 = _data(100, seed=6)
    x2[80:85] = x2[3:8]
    model = _model(dropout=0, bn=False)
    lens = LossLens(store=None)
    model.fit(x2, y2, batch_size=20, epochs=1, validation_split=0.2, callbacks=[lens], verbose=0)
    d = lens.run.meta["split_exact_duplicates"]
    assert (d["n_train"], d["n_val"], d["n_val_duplicated"]) == (80, 20, 5)
    assert d["pairs"] == [[3 + k, k] for k in range(5)]

    # switched off: not computed, not recorded
    model = _model(dropout=0, bn=False)
    lens = LossLens(store=None, check_duplicates=False)
    model.fit(x, y, batch_size=32, epochs=1, validation_data=(xv, yv), callbacks=[lens], verbose=0)
    assert lens.run.info.split.exact_duplicates is None


def test_exact_duplicate_check_on_a_multi_input_model():
    """Two input arrays per sample: a validation sample is a copy only when both of its arrays are;
    -0.0 equals 0.0."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(90, 3)).astype("float32"), rng.integers(0, 5, size=(90, 2)).astype("int64")
    y = rng.normal(size=(90, 1)).astype("float32")
    av, bv = rng.normal(size=(30, 3)).astype("float32"), rng.integers(0, 5, size=(30, 2)).astype("int64")
    a[10, 0] = 0.0
    av[[0, 5, 7]], bv[[0, 5, 7]] = a[[10, 11, 12]], b[[10, 11, 12]]
    av[0, 0] = -0.0
    av[9], bv[9] = a[20], (b[20] + 1) % 5                       # first input equal, second not: no copy
    yv = rng.normal(size=(30, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    i1, i2 = keras.Input((3,)), keras.Input((2,))
    h = L.Concatenate()([i1, L.Lambda(lambda t: keras.ops.cast(t, "float32"))(i2)])
    model = keras.Model([i1, i2], L.Dense(1)(h))
    model.compile(optimizer="adam", loss="mse")
    lens = LossLens(store=None)
    model.fit([a, b], y, batch_size=30, epochs=1, validation_data=([av, bv], yv), callbacks=[lens], verbose=0)
    d = lens.run.meta["split_exact_duplicates"]
    assert d["pairs"] == [[10, 0], [11, 5], [12, 7]] and d["n_val_duplicated"] == 3


def test_a_failing_duplicate_check_is_recorded_not_raised(monkeypatch):
    import losslens.recording.duplicates as duplicates

    def broken(train, val, **kw):
        raise MemoryError("out of memory while hashing")

    monkeypatch.setattr(duplicates, "array_duplicates", broken)
    x, y = _data(64)
    model = _model(dropout=0, bn=False)
    lens = LossLens(store=None)
    h = model.fit(x, y, batch_size=16, epochs=2, validation_split=0.25, callbacks=[lens], verbose=0)
    assert lens.run.meta["split_exact_duplicates"] == {"error": "MemoryError: out of memory while hashing"}
    assert len(h.history["eval_train_loss"]) == 2 and lens.run.status == "finished"


# --- per-sample losses ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss, y_kind", [
    ("mse", "reg_flat"),
    ("mae", "reg"),
    (keras.losses.MeanSquaredError(), "reg"),
    ("categorical_crossentropy", "onehot"),
    (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), "onehot_logits"),
    ("sparse_categorical_crossentropy", "sparse"),
    (keras.losses.BinaryCrossentropy(), "binary"),
])
def test_per_sample_loss_mean_equals_keras_loss(loss, y_kind):
    rng = np.random.default_rng(0)
    n = 37
    if y_kind in ("reg", "reg_flat"):
        yp = rng.normal(size=(n, 1)).astype("float32")
        yt = rng.normal(size=(n,) if y_kind == "reg_flat" else (n, 1)).astype("float32")
    elif y_kind in ("onehot", "onehot_logits", "sparse"):
        logits = rng.normal(size=(n, 5)).astype("float32")
        yp = logits if y_kind == "onehot_logits" else keras.ops.convert_to_numpy(keras.ops.softmax(logits))
        lab = rng.integers(0, 5, n)
        yt = lab if y_kind == "sparse" else np.eye(5, dtype="float32")[lab]
    else:
        yp = rng.uniform(0.05, 0.95, size=(n, 1)).astype("float32")
        yt = rng.integers(0, 2, (n, 1)).astype("float32")
    vals = keras.ops.convert_to_numpy(per_sample_loss(loss)(yt, yp))
    assert vals.shape == (n,)
    ref = keras.losses.get(loss) if isinstance(loss, str) else loss
    expected = float(keras.ops.convert_to_numpy(keras.ops.mean(ref(yt, yp))))
    if isinstance(ref, keras.losses.Loss):
        expected = float(keras.ops.convert_to_numpy(ref(yt, yp)))
    elif y_kind == "reg_flat":
        expected = float(np.mean((yt - yp[:, 0]) ** 2))
    assert vals.mean() == pytest.approx(expected, rel=1e-5)


def test_per_sample_loss_rejects_multi_output_losses():
    with pytest.raises(LossLensError, match="loss_fn"):
        per_sample_loss(["mse", "mae"])


def test_auto_probe_and_measurements_do_not_depend_on_machine_load():
    """The same seeded fit alone and beside two CPU-burning processes: the same probe, bit-identical losses."""
    import subprocess
    import sys

    def one():
        lens, h = _budget_fit(epochs=2)
        return lens.run

    quiet = one()
    burn = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
    try:
        busy = one()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert quiet.meta["probe_size"] == busy.meta["probe_size"] == 200
    for eq, eb in zip(quiet.epochs, busy.epochs):
        for kind in eq.measurements:
            np.testing.assert_array_equal(eq.get(kind).values, eb.get(kind).values)


def test_resume_continues_the_stored_run_from_initial_epoch(tmp_path):
    """``LossLens(resume=lens.state_dict())`` with ``fit(initial_epoch=k)`` (Keras's resume) continues the stored
    run at epoch k: later stored epochs are dropped and recorded again, no second run is created."""
    x, y = _data(200)
    store = str(tmp_path / "k.db")
    model = _model()
    first = LossLens(run="k", store=store, probe_size=64)
    model.fit(x, y, batch_size=20, epochs=4, validation_split=0.25, callbacks=[first], verbose=0)
    state = dict(first.state_dict(), epochs=2)          # as saved beside the checkpoint of epoch 1
    with pytest.raises(RuntimeError, match="nothing recorded yet"):
        LossLens(store=None).state_dict()
    resumed = LossLens(run="ignored", store=store, probe_size=64, resume=state)
    h = model.fit(x, y, batch_size=20, epochs=5, initial_epoch=2, validation_split=0.25, callbacks=[resumed],
                  verbose=0)
    assert resumed.run.id == first.run.id and len(h.history["eval_train_loss"]) == 3
    with Store(store) as st:
        assert len(st.list_runs()) == 1
        run = st.load_run(first.run.id)
    assert [e.index for e in run.epochs] == [0, 1, 2, 3, 4] and run.status == "finished"
    assert run.epochs[1].train_loss == first.run.epochs[1].train_loss          # kept
    assert run.epochs[2].train_loss != first.run.epochs[2].train_loss          # trained again from epoch 4's weights
    assert run.meta["probe_fingerprint"] == first.run.meta["probe_fingerprint"]
    assert resumed.probe_indices.tolist() == first.probe_indices.tolist()


@pytest.mark.parametrize("shape, expected", [((4,), 2048), ((32, 32, 3), 16)])
def test_default_eval_batch_follows_the_fit_batch_and_the_input_size(shape, expected):
    """The eval-mode batch is the fit batch size, or more samples while their inputs fit in 32 KiB (as in
    losslens.torch), and the validation pass still reproduces Keras's val_loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, *shape)).astype("float32")
    y = rng.normal(size=(96, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape), L.Flatten(), L.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    lens = LossLens(store=None)
    h = model.fit(x[:64], y[:64], batch_size=16, epochs=1, validation_data=(x[64:], y[64:]), callbacks=[lens],
                  verbose=0)
    assert lens.eval_batch_size == expected
    assert lens.run.epochs[0].get(VALIDATION).mean == pytest.approx(h.history["val_loss"][0], rel=1e-5)


def test_logs_carry_the_decomposition_and_the_verdict_for_keras_callbacks(tmp_path):
    """Write-back (issue 15): Keras's CSVLogger, listed after the losslens callback, writes every term with its
    standard error and the verdict's index; the values are the recorded run's. ``log_metrics=False`` keeps the
    logs as Keras made them."""
    from losslens.diagnose import VERDICT_CODES, diagnose
    from losslens.diagnose.gap import decompose_epoch

    x, y = _data(160)
    model = _model(dropout=0.2, bn=False, reg=keras.regularizers.l2(0.01))
    log = tmp_path / "log.csv"
    lens = LossLens(store=None)
    model.fit(x, y, batch_size=16, epochs=3, validation_split=0.25, verbose=0,
              callbacks=[lens, keras.callbacks.CSVLogger(str(log))])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row, ep in zip(rows, lens.run.epochs):
        d = decompose_epoch(ep)
        for term, name in (("penalty", "gap_penalty"), ("timing", "gap_timing"), ("train_mode", "gap_train_mode"),
                           ("generalization_gap", "generalization_gap")):
            assert float(row[name]) == pytest.approx(d.terms[term].value, rel=1e-5, abs=1e-7)
            assert float(row[name + "_se"]) == pytest.approx(d.terms[term].se, rel=1e-5, abs=1e-9)
        assert float(row["losslens_val_loss_se"]) == pytest.approx(ep.get(VALIDATION).sem, rel=1e-5)
    assert VERDICT_CODES[int(float(rows[-1]["verdict_code"]))] == diagnose(lens.run).verdict.code
    # off
    quiet = LossLens(store=None, log_metrics=False)
    h = _model(dropout=0.2, bn=False).fit(x, y, batch_size=16, epochs=1, validation_split=0.25, verbose=0,
                                          callbacks=[quiet])
    assert set(h.history) == {"loss", "val_loss"}
    assert quiet.live is None
