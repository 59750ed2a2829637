"""stopping.checkpoints: which saved checkpoint to keep, from trainer_state.json and the folders beside it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from losslens.diagnose import diagnose
from losslens.importers import load_log


def _state(tmp_path, keep_steps, state_in=None):
    """A 10-evaluation fine-tune (100 steps per epoch) whose validation loss bottoms out at step 400 and then rises,
    with checkpoint folders only for ``keep_steps`` (as save_total_limit leaves them)."""
    rng = np.random.default_rng(0)
    hist = []
    for s in range(10, 1001, 10):
        hist.append({"epoch": s / 100, "loss": float(2.0 * np.exp(-s / 300) + 0.1 + 0.01 * rng.normal()), "step": s})
        if s % 100 == 0:
            v = 0.5 + 0.3 * np.exp(-s / 150) + 0.0004 * (s - 400) ** 2 / 100 + 0.002 * rng.normal()
            hist.append({"epoch": s / 100, "eval_loss": float(v), "step": s})
    out = tmp_path / "out"
    out.mkdir()
    for s in keep_steps:
        (out / f"checkpoint-{s}").mkdir()
    folder = out / f"checkpoint-{state_in}" if state_in else out
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": hist, "logging_steps": 10,
                                                             "global_step": 1000}))
    return folder / "trainer_state.json", hist


def test_the_best_checkpoint_on_disk_is_advised_and_a_deleted_best_is_said(tmp_path):
    path, hist = _state(tmp_path, [800, 900, 1000], state_in=1000)
    run = load_log(path)
    assert run.info.extras["checkpoints_on_disk"] == [800, 900, 1000]
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None
    evals = {h["step"]: h["eval_loss"] for h in hist if "eval_loss" in h}
    best = min(evals, key=evals.get)
    assert f.data["best_step"] == best and not f.data["best_on_disk"]
    assert f.data["keep"] == min((800, 900, 1000), key=evals.get)
    assert f"checkpoint of the best evaluation (step {best}) is not on disk" in f.message
    assert best in f.data["within_noise_of_best"] and 1000 not in f.data["within_noise_of_best"]
    assert f.data["epochs_after_last_improvement"] >= 5
    assert f.recommendation.startswith(f"Keep checkpoint-{f.data['keep']}")


def test_no_finding_without_checkpoint_information(tmp_path):
    path, _ = _state(tmp_path, [])
    run = load_log(path)
    assert run.info.extras["checkpoints_on_disk"] == []
    assert diagnose(run).get("stopping.checkpoints") is None          # a log copied without its folders
    run.meta["best_model_checkpoint"] = "out/checkpoint-400"            # the run did save checkpoints
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None and "No checkpoint is on disk" in f.message and f.data["keep"] is None
    data = json.loads(json.dumps({"log_history": json.loads(path.read_text())["log_history"]}))
    from losslens.importers.trainer_state import read

    assert "checkpoints_on_disk" not in read("<memory>", obj=data).meta   # not a file: what was saved is unknown


def test_the_cli_prints_the_advice_and_the_json_carries_it(tmp_path):
    from losslens.cli import main

    path, _ = _state(tmp_path, [300, 400, 500])
    res = CliRunner().invoke(main, ["diagnose", str(path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "Which checkpoint to keep" in res.output and "checkpoint-400" in res.output
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    f = next(x for x in data["findings"] if x["code"] == "stopping.checkpoints")
    assert f["data"]["keep"] == 400 and f["data"]["best_on_disk"] is True


def _digits(n=900):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X[:n] / 16.0).astype("float32"), y[:n].astype("int64")


def test_keras_checkpoints_beside_a_csv_log_and_a_restart_from_the_advice(tmp_path):
    """A real Keras run saves a checkpoint every epoch; the best ones are deleted (as a keep-last-k policy does).
    The advice names the best file still on disk, and loading it gives the validation loss the advice promised."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    X, y = _digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(3e-2), loss=keras.losses.SparseCategoricalCrossentropy(True))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hist = model.fit(X[:300], y[:300], validation_data=(X[300:], y[300:]), epochs=14, batch_size=32, verbose=0,
                     callbacks=[keras.callbacks.CSVLogger(str(run_dir / "log.csv")),
                                keras.callbacks.ModelCheckpoint(str(run_dir / "model.{epoch:02d}.keras"))])
    val = hist.history["val_loss"]
    best = int(np.argmin(val)) + 1                                     # Keras names files by the 1-based epoch
    deleted = {best, best - 1, best + 1} & set(range(1, 15))
    for k in deleted:
        (run_dir / f"model.{k:02d}.keras").unlink()
    run = load_log(run_dir / "log.csv")
    assert run.info.extras["checkpoints_on_disk"] == sorted(set(range(1, 15)) - deleted)
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None and not f.data["best_on_disk"] and f.data["best_step"] == best
    keep = f.data["keep"]
    assert keep == min(set(range(1, 15)) - deleted, key=lambda k: val[k - 1])
    assert f.recommendation.startswith(f"Keep model.{keep:02d}.keras")
    # the framework's own way to keep the best, when the file kept is worse than noise allows
    assert ("save_best_only=True" in f.recommendation) == (keep not in f.data["within_noise_of_best"])
    assert "losslens.keras.EarlyStopping" in f.recommendation or f.data["epochs_after_last_improvement"] < 1
    assert f"epoch {best}" in f.message and "is not on disk" in f.message
    # restart from the advised checkpoint: the validation loss it was advised for
    restored = keras.models.load_model(run_dir / f"model.{keep:02d}.keras")
    got = restored.evaluate(X[300:], y[300:], batch_size=32, verbose=0)
    assert got == pytest.approx(val[keep - 1], rel=1e-5)
    assert f.evidence[-1].value == pytest.approx(val[keep - 1], rel=1e-6)


def test_lightning_checkpoints_beside_metrics_csv_and_a_restart_from_the_advice(tmp_path):
    import logging
    import warnings

    L = pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader, TensorDataset

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    X, y = _digits()
    X, y = torch.tensor(X), torch.tensor(y)
    L.seed_everything(0)

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

        def training_step(self, batch, i):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, i):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-2)

    train = DataLoader(TensorDataset(X[:300], y[:300]), batch_size=30, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(X[300:], y[300:]), batch_size=600)
    ck = ModelCheckpoint(monitor="val_loss", save_top_k=3, filename="{epoch}-{step}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(max_epochs=12, enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)), callbacks=[ck],
                            num_sanity_val_steps=0)
        trainer.fit(M(), train, val)
    metrics = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    run = load_log(metrics)
    on_disk = run.info.extras["checkpoints_on_disk"]
    assert len(on_disk) == 3 and all(s % 10 == 0 for s in on_disk)   # 10 steps per epoch
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None and f.data["keep"] == f.data["best_step"]     # save_top_k keeps the best
    name = run.info.extras["checkpoint_names"][str(f.data["keep"])]
    assert f.recommendation.startswith(f"Keep {name}") and name == os.path.basename(ck.best_model_path)
    model = M.load_from_checkpoint(ck.best_model_path)
    model.eval()
    with torch.no_grad():
        got = float(torch.nn.functional.cross_entropy(model.net(X[300:]), y[300:]))
    assert got == pytest.approx(f.evidence[-1].value, rel=1e-5)
