"""Logs written by the real libraries, imported back.

Lightning (CSVLogger and TensorBoardLogger), torch.utils.tensorboard, Keras
(CSVLogger, History JSON, and the same run recorded live by
``losslens.keras.LossLens``). Keras's TensorBoard callback needs TensorFlow
even on the torch backend (keras/src/callbacks/tensorboard.py imports
``tensorflow.summary``); its test runs only where TensorFlow is installed.
Small seeded CPU runs.
"""

import json
import logging
import os
import warnings

import numpy as np
import pytest

from losslens.diagnose.timing import with_end_of_epoch_estimates
from losslens.importers import load_log
from losslens.importers.fastai import ema_lag
from losslens.record import END_OF_EPOCH_ESTIMATE, EVAL_CLEAN, VALIDATION

torch = pytest.importorskip("torch")


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype("float32"), y.astype("int64")


# ----------------------------------------------------------------------------------------------- Lightning
@pytest.fixture(scope="module")
def lightning_logs(tmp_path_factory):
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("lightning")
    X, y = _digits()
    X, y = torch.tensor(X[:700]), torch.tensor(y[:700])
    torch.manual_seed(0)

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, batch, i):
            xb, yb = batch
            loss = torch.nn.functional.cross_entropy(self.net(xb), yb)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            xb, yb = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(xb), yb))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    train = DataLoader(TensorDataset(X[:500], y[:500]), batch_size=25, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(X[500:], y[500:]), batch_size=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_epochs=4, log_every_n_steps=2, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, accelerator="cpu", devices=1,
                            logger=[CSVLogger(str(root / "csv")), TensorBoardLogger(str(root / "tb"))])
        trainer.fit(M(), train, val)
    csv_file = root / "csv" / "lightning_logs" / "version_0" / "metrics.csv"
    tb_dir = root / "tb" / "lightning_logs" / "version_0"
    return csv_file, tb_dir


def test_lightning_csv_places_step_losses_and_reads_epoch_means(lightning_logs):
    import pandas as pd

    csv_file, _ = lightning_logs
    df = pd.read_csv(csv_file)
    run = load_log(csv_file)
    assert run.meta["importer"] == "lightning_csv" and run.status == "imported"
    assert [e.index for e in run.epochs] == [0, 1, 2, 3]
    spe = 20  # 500 samples / batch 25
    for e in run.epochs:
        rows = df[(df.epoch == e.index) & df.train_loss_epoch.notna()]
        assert e.train_loss == pytest.approx(float(rows.train_loss_epoch.iloc[-1]))
        v = df[(df.epoch == e.index) & df.val_loss.notna()].val_loss.iloc[-1]
        assert e.measurements[VALIDATION].mean == pytest.approx(float(v))
        assert e.measurements[VALIDATION].source == "imported"
        assert e.position == e.index + 1
    st = df[df.train_loss_step.notna()]
    assert len(run.steps) == len(st)
    # a value logged at global step s (0-based) is the loss of that batch: centre of the step
    expect = st.epoch.to_numpy() + ((st.step.to_numpy() % spe) + 0.5) / spe
    assert np.allclose(run.steps.position, expect)
    assert np.allclose(run.steps.loss, st.train_loss_step.to_numpy())
    assert run.meta["steps_per_epoch"] == spe
    # 10 logged steps per epoch: the end-of-epoch loss is estimated from the within-epoch trend
    run = with_end_of_epoch_estimates(run)
    assert run.meta["timing_method"].startswith("steps")
    assert all(e.measurements[END_OF_EPOCH_ESTIMATE].source == "estimated" for e in run.epochs)


def test_lightning_tensorboard_gives_the_same_run_as_its_csv(lightning_logs):
    csv_file, tb_dir = lightning_logs
    a = load_log(csv_file)
    b = load_log(tb_dir)
    assert b.meta["importer"] == "tensorboard" and b.meta["writer"] == "lightning"
    assert [e.index for e in a.epochs] == [e.index for e in b.epochs]
    for x, y in zip(a.epochs, b.epochs):
        assert y.train_loss == pytest.approx(x.train_loss, rel=1e-6)
        assert y.measurements[VALIDATION].mean == pytest.approx(x.measurements[VALIDATION].mean, rel=1e-6)
    assert np.allclose(a.steps.position, b.steps.position)
    assert np.allclose(a.steps.loss, b.steps.loss, rtol=1e-6)


# ------------------------------------------------------------------------------------ torch SummaryWriter
def test_torch_summarywriter_per_step_and_per_epoch(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    X, y = _digits()
    X, y = torch.tensor(X), torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    w = SummaryWriter(str(tmp_path / "steps"))
    w2 = SummaryWriter(str(tmp_path / "epochs"))
    spe, bs = 30, 40
    val = []
    means = []
    step = 0
    for e in range(3):
        ls = []
        for k in range(spe):
            idx = slice(k * bs, (k + 1) * bs)
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            w.add_scalar("Loss/train", loss.item(), step)  # step = optimizer steps done
            ls.append(loss.item())
        with torch.no_grad():
            v = torch.nn.functional.cross_entropy(model(X[1200:]), y[1200:]).item()
        val.append(v)
        means.append(float(np.mean(ls)))
        w.add_scalar("Loss/val", v, step)
        w2.add_scalar("Loss/train", means[-1], e)
        w2.add_scalar("Loss/val", v, e)
    w.close()
    w2.close()
    run = load_log(tmp_path / "steps")
    assert run.meta["roles"]["train_loss"] == "Loss/train" and run.meta["roles"]["val_loss"] == "Loss/val"
    assert len(run.epochs) == 3 and len(run.steps) == 3 * spe
    assert [e.measurements[VALIDATION].mean for e in run.epochs] == pytest.approx(val, rel=1e-6)
    assert [e.train_loss for e in run.epochs] == pytest.approx(means, rel=1e-5)
    # the k-th step of epoch e (counter e*spe + k + 1 after it) sits at the centre of its step
    k = np.arange(3 * spe)
    assert np.allclose(run.steps.position, k // spe + (k % spe + 0.5) / spe)
    assert with_end_of_epoch_estimates(run).meta["timing_method"] == "steps"
    per_epoch = load_log(tmp_path / "epochs")
    assert [e.train_loss for e in per_epoch.epochs] == pytest.approx(means, rel=1e-6)
    assert with_end_of_epoch_estimates(per_epoch).meta["timing_method"] == "means"


# ------------------------------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def keras_run(tmp_path_factory):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    LossLens = pytest.importorskip("losslens.keras").LossLens

    root = tmp_path_factory.mktemp("keras")
    X, y = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lens = LossLens(store=None)
    hist = model.fit(X[:1200], y[:1200], validation_data=(X[1200:], y[1200:]), epochs=4, batch_size=64, verbose=0,
                     callbacks=[lens, keras.callbacks.CSVLogger(str(root / "training.log"))])
    with open(root / "history.json", "w") as fh:
        json.dump({k: [float(v) for v in vs] for k, vs in hist.history.items()}, fh)
    # validation every second epoch: CSVLogger writes NA in the val_ columns of the others
    keras.utils.set_random_seed(1)
    small = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    small.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h2 = small.fit(X[:600], y[:600], validation_data=(X[600:800], y[600:800]), validation_freq=2, epochs=4,
                   batch_size=100, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(root / "freq2.csv"))])
    return root, lens.run, hist.history, h2.history


def test_keras_csv_import_matches_the_live_callback(keras_run):
    root, live, history, _ = keras_run
    run = load_log(root / "training.log")
    assert run.meta["importer"] == "keras_csv"
    assert [e.index for e in run.epochs] == [e.index for e in live.epochs] == [0, 1, 2, 3]
    for imp, rec in zip(run.epochs, live.epochs):
        # no penalty in this model: the reported loss is the data loss
        assert imp.train_loss == pytest.approx(rec.reported_loss, rel=1e-5)
        assert imp.measurements[VALIDATION].mean == pytest.approx(rec.measurements[VALIDATION].mean, rel=1e-5)
        assert imp.position == rec.position
    assert [e.train_loss for e in run.epochs] == pytest.approx(history["loss"], rel=1e-6)


def test_keras_history_json_matches_the_csv(keras_run):
    root, _, history, _ = keras_run
    a = with_end_of_epoch_estimates(load_log(root / "training.log"))
    b = with_end_of_epoch_estimates(load_log(root / "history.json"))
    assert b.meta["importer"] == "keras_history"
    assert [e.train_loss for e in b.epochs] == pytest.approx([e.train_loss for e in a.epochs], rel=1e-6)
    assert [e.measurements[VALIDATION].mean for e in b.epochs] == pytest.approx(
        [e.measurements[VALIDATION].mean for e in a.epochs], rel=1e-6)
    # both hold the losslens callback's columns: the same C (and so no end-of-epoch estimate is needed)
    assert [e.measurements[EVAL_CLEAN].mean for e in b.epochs] == pytest.approx(
        [e.measurements[EVAL_CLEAN].mean for e in a.epochs], rel=1e-6)
    assert not a.has(END_OF_EPOCH_ESTIMATE) and not b.has(END_OF_EPOCH_ESTIMATE)


def test_keras_csv_na_columns_with_validation_freq(keras_run):
    root, _, _, h2 = keras_run
    text = (root / "freq2.csv").read_text()
    assert "NA" in text
    run = load_log(root / "freq2.csv")
    has_v = [VALIDATION in e.measurements for e in run.epochs]
    assert has_v == [False, True, False, True]
    assert [run.epochs[i].measurements[VALIDATION].mean for i in (1, 3)] == pytest.approx(h2["val_loss"], rel=1e-6)


def test_keras_tensorboard_callback(tmp_path):
    pytest.importorskip("tensorflow")  # Keras's TensorBoard callback writes through tf.summary
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    X, y = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    h = model.fit(X[:1000], y[:1000], validation_data=(X[1000:], y[1000:]), epochs=3, batch_size=100, verbose=0,
                  callbacks=[keras.callbacks.TensorBoard(str(tmp_path), update_freq=1)])
    run = load_log(tmp_path)
    assert [e.train_loss for e in run.epochs] == pytest.approx(h.history["loss"], rel=1e-5)
    assert [e.measurements[VALIDATION].mean for e in run.epochs] == pytest.approx(h.history["val_loss"], rel=1e-5)
    # Keras < 3.6 stamps every batch scalar with one step (its optimizer-iterations variable): no step losses to
    # recover then, and the epochs above are what the log holds
    from losslens.importers.tensorboard import event_files, load_scalars

    batch_steps = [load_scalars(f).get("batch_loss", (np.zeros(0),))[0] for fs in event_files(tmp_path).values()
                   for f in fs]
    batch_steps = np.concatenate([b for b in batch_steps if b.size]) if any(b.size for b in batch_steps) else None
    if batch_steps is None or np.unique(batch_steps).size < 30:
        return
    assert len(run.steps) == 30
    # running means turned back into batch losses average to the epoch mean (equal batch sizes)
    for e in run.epochs:
        assert np.mean(run.steps.loss[run.steps.epoch == e.index]) == pytest.approx(e.train_loss, rel=1e-4)


# ------------------------------------------------------------------------------------------------ fastai
def test_fastai_history_lag_correction(tmp_path):
    """history.csv as fastai's Recorder writes it (AvgSmoothLoss, β = 0.98) from a real torch run's step losses."""
    from test_import_timing import _fastai_avg_smooth_loss, _train_digits

    ep, pos, loss, end = _train_digits(epochs=4, seed=2)
    spe = int(np.sum(ep == 0))
    ema = _fastai_avg_smooth_loss(loss, 0.98)
    lines = ["epoch,train_loss,valid_loss,accuracy,time"]
    for e in range(4):
        last = np.flatnonzero(ep == e)[-1]
        lines.append(f"{e},{ema[last]:.6f},{end[e] + 0.05:.6f},0.9,00:0{e + 1}")
    (tmp_path / "history.csv").write_text("\n".join(lines) + "\n")
    run = load_log(tmp_path / "history.csv")
    assert run.meta["importer"] == "fastai" and run.meta["reported_loss_kind"] == "ema"
    assert not with_end_of_epoch_estimates(run).has(END_OF_EPOCH_ESTIMATE)  # steps per epoch unknown
    assert run.epochs[0].seconds == 1.0
    run = with_end_of_epoch_estimates(load_log(tmp_path / "history.csv", steps_per_epoch=spe))
    lag = run.meta["ema_lag_steps"]
    assert 40 < lag < 49.01
    # each EMA is placed lag + 0.5 steps before its epoch's end
    lags = np.array([ema_lag(0.98, (e + 1) * spe) for e in range(4)])
    assert np.allclose(run.steps.position, np.arange(4) + 1 - (lags + 0.5) / spe)
    est = np.array([e.measurements[END_OF_EPOCH_ESTIMATE].mean for e in run.epochs])
    r = np.array([e.train_loss for e in run.epochs])
    # the lag-corrected estimate is closer to the true end-of-epoch loss than the EMA itself
    assert np.mean(np.abs(est - end)) < np.mean(np.abs(r - end))


def test_keras_tf2_batch_running_means_become_batch_losses(tmp_path):
    """Keras 3 / TF2 event layout without TensorFlow.

    Keras's TensorBoard callback needs TensorFlow to write; this test writes the same records with
    tensorboard's own writer and protos (rank-0 float tensors with the ``scalars`` plugin, as
    ``tf.summary.scalar`` does — the same encoding as the real Keras file in ../shared/real-logs):
    ``train/epoch_loss`` at step = epoch, ``train/batch_loss`` = running mean since the epoch start at step =
    global batch count (1-based, as in keras/src/callbacks/tensorboard.py), ``validation/epoch_loss`` and
    ``validation/evaluation_loss_vs_iterations`` at step = optimizer iterations. The step losses come from a
    real torch run.
    """
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.scalar import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util
    from test_import_timing import _train_digits

    ep, pos, loss, end = _train_digits(epochs=3, seed=3)
    md = metadata.create_summary_metadata(display_name="", description="")

    def put(writer, tag, value, step):
        v = Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(value)), metadata=md)
        writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=[v])))

    (tmp_path / "train").mkdir()
    (tmp_path / "validation").mkdir()
    tr = EventFileWriter(str(tmp_path / "train"))
    va = EventFileWriter(str(tmp_path / "validation"))
    g = 0
    for e in range(3):
        ls = loss[ep == e]
        running = np.cumsum(ls) / np.arange(1, ls.size + 1)  # per-batch running mean (Keras weights by batch size)
        for k in range(ls.size):
            g += 1
            put(tr, "batch_loss", running[k], g)
        put(tr, "epoch_loss", running[-1], e)
        put(va, "epoch_loss", end[e], e)
        put(va, "evaluation_loss_vs_iterations", end[e], g)
    tr.close()
    va.close()
    run = load_log(tmp_path)
    assert run.meta["writer"] == "keras-tf2" and len(run.epochs) == 3
    assert [e.measurements[VALIDATION].mean for e in run.epochs] == pytest.approx(end, rel=1e-6)
    assert len(run.steps) == loss.size
    np.testing.assert_allclose(run.steps.loss, loss, rtol=2e-3, atol=2e-4)  # float32 running means
    np.testing.assert_allclose(run.steps.position, pos)
    assert with_end_of_epoch_estimates(run).meta["timing_method"] == "steps"


def test_hugging_face_tensorboard_equals_its_trainer_state(tmp_path):
    """transformers' TensorBoardCallback writes log_history through torch's SummaryWriter as
    ``train/<key>`` (``train/epoch`` included) and ``eval/<key>`` at ``global_step``."""
    from torch.utils.tensorboard import SummaryWriter

    hist = []
    for s in range(20, 401, 20):
        hist.append({"epoch": s / 100, "learning_rate": 1e-4, "loss": 2.0 / (1 + s / 100) + 0.01 * (s % 3),
                     "step": s})
        if s % 100 == 0:
            hist.append({"epoch": s / 100, "eval_loss": 1.5 / (1 + s / 100), "eval_accuracy": 0.5 + s / 1000,
                         "step": s})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": hist, "logging_steps": 20}))
    w = SummaryWriter(str(tmp_path / "runs"))
    for h in hist:
        for k, v in h.items():
            if k == "step":
                continue
            if k.startswith("eval_"):
                w.add_scalar("eval/" + k[5:], v, h["step"])
            else:
                w.add_scalar("train/" + k, v, h["step"])
    w.close()
    a = with_end_of_epoch_estimates(load_log(tmp_path / "trainer_state.json"))
    b = with_end_of_epoch_estimates(load_log(tmp_path / "runs"))
    assert b.meta["writer"] == "transformers" and len(a.epochs) == len(b.epochs) == 4
    assert [e.train_loss for e in b.epochs] == pytest.approx([e.train_loss for e in a.epochs], rel=1e-6)
    assert [e.measurements[VALIDATION].mean for e in b.epochs] == pytest.approx(
        [e.measurements[VALIDATION].mean for e in a.epochs], rel=1e-6)
    np.testing.assert_allclose(b.steps.position, a.steps.position)
    assert [e.measurements[END_OF_EPOCH_ESTIMATE].mean for e in b.epochs] == pytest.approx(
        [e.measurements[END_OF_EPOCH_ESTIMATE].mean for e in a.epochs], rel=1e-5)


def test_keras_csv_reads_the_losslens_callbacks_columns_as_measurements(keras_run, tmp_path):
    """A CSVLogger file written beside the losslens callback: eval_train_loss, train_mode_loss and
    losslens_val_loss are the callback's C, T and V, not metrics of the training loop (issue 16, item 2)."""
    from click.testing import CliRunner

    from losslens.cli import main
    from losslens.record import EVAL_CLEAN, TRAIN_MODE

    root, live, _, _ = keras_run
    header = (root / "training.log").read_text().splitlines()[0]
    assert "eval_train_loss" in header and "train_mode_loss" in header
    run = load_log(root / "training.log")
    for imp, rec in zip(run.epochs, live.epochs):
        for kind in (EVAL_CLEAN, TRAIN_MODE, VALIDATION):
            assert imp.measurements[kind].mean == pytest.approx(rec.measurements[kind].mean, rel=1e-5)
            assert imp.measurements[kind].source == "imported"
        assert imp.train_loss == pytest.approx(rec.train_loss, rel=1e-5)
        assert not {"eval_train_loss", "train_mode_loss", "losslens_val_loss", "data_loss"} & set(imp.metrics)
    res = CliRunner().invoke(main, ["diagnose", str(root / "training.log"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "probe set: measured by the losslens callback" in res.output
    assert "add the losslens callback" not in res.output and "gap.decomposition" in res.output
