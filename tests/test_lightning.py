"""Lightning callback: real tiny Trainer.fit runs on CPU (one process, and strategy="ddp" with 2 CPU devices)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")
from torch import nn  # noqa: E402

from losslens.diagnose import decompose  # noqa: E402
from losslens.lightning import LossLens  # noqa: E402
from losslens.recording.probe import class_strata, probe_permutation  # noqa: E402
from losslens.store import Store  # noqa: E402
from losslens.torch import LossLens as TorchLossLens  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

# The module and data, shared by the in-process tests and the DDP script (written to a file).
COMMON = textwrap.dedent(
    """
    import torch
    from torch import nn
    import lightning.pytorch as L
    from sklearn.datasets import load_digits

    def digits():
        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        return X[:800], y[:800], X[800:1100], y[800:1100]

    def net():
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net()
            self.lossf = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.lossf(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
    """
)
_ns: dict = {}
exec(COMMON, _ns)  # the same definitions the DDP script runs  # noqa: S102
digits, Module = _ns["digits"], _ns["Module"]


def trainer(callbacks, epochs=3, **kw):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kw)


def fit(with_lens, tmp_path=None, accumulate=1, probe_size=256):
    Xtr, ytr, Xva, yva = digits()
    L.seed_everything(0)
    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True)
    cbs = []
    if with_lens:
        cbs.append(LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="lit",
                            store=tmp_path / "runs.db", probe_size=probe_size))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        trainer(cbs, accumulate_grad_batches=accumulate).fit(module, loader)
    return module, (cbs[0] if cbs else None), torch.random.get_rng_state()


@pytest.fixture(scope="module")
def lit_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lit")
    off, _, rng_off = fit(False)
    on, lens, rng_on = fit(True, tmp)
    return off, on, lens, rng_off, rng_on, tmp


def test_weights_bit_identical_with_and_without_callback(lit_runs):
    off, on, _, rng_off, rng_on, _ = lit_runs
    for (k, a), (_, b) in zip(off.state_dict().items(), on.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(rng_off, rng_on)


def test_store_has_every_epoch_and_the_decomposition_identity(lit_runs):
    _, on, lens, _, _, tmp = lit_runs
    with Store(tmp / "runs.db") as store:
        run = store.load_run(lens.run.id)
    assert run.status == "finished"
    assert run.meta["framework"] == "lightning"
    assert run.meta["optimizer"] == "SGD"
    assert [e.index for e in run.epochs] == [0, 1, 2]
    for e in run.epochs:
        assert e.n_steps == 25 and e.n_samples == 800  # 800 samples, batches of 32
        assert set(e.measurements) == {"train_mode", "eval_clean", "validation"}
        d = decompose(run)[e.index]
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-12)
    # the last epoch's C and V equal an independent computation with the final weights
    Xtr, ytr, Xva, yva = digits()
    idx = np.sort(probe_permutation(0, 800, class_strata(ytr.numpy()))[:256])
    on.eval()
    with torch.no_grad():
        c = nn.functional.cross_entropy(on(Xtr[idx]), ytr[idx], reduction="none").numpy()
        v = nn.functional.cross_entropy(on(Xva), yva, reduction="none").numpy()
    np.testing.assert_allclose(run.epochs[-1].get("eval_clean").values, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run.epochs[-1].get("validation").values, v, rtol=1e-5, atol=1e-6)


def test_accumulate_grad_batches_records_the_batch_loss(tmp_path):
    """With accumulate_grad_batches=4 Lightning divides the hook's loss by 4; the record is the batch mean."""
    class Spy(L.Callback):
        def __init__(self):
            self.losses = []

        def on_before_backward(self, trainer, module, loss):
            self.losses.append(float(loss.detach()) * 4)

    Xtr, ytr, Xva, yva = digits()
    L.seed_everything(0)
    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True)
    spy = Spy()
    lens = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None, probe_size=128)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer([spy, lens], epochs=1, accumulate_grad_batches=4).fit(module, loader)
    np.testing.assert_allclose(lens.run.steps.loss, spy.losses, rtol=1e-6)
    assert lens.run.meta["accumulate_grad_batches"] == 4


DDP_SCRIPT = COMMON + textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    from losslens.lightning import LossLens

    class Save(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.global_rank == 0:
                torch.save(module.state_dict(), os.path.join(OUT, f"weights_epoch{trainer.current_epoch}.pt"))

    if __name__ == "__main__":
        OUT = sys.argv[1]
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")
        Xtr, ytr, Xva, yva = digits()
        L.seed_everything(0)
        module = Module()
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=20, shuffle=True)
        lens = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="lit-ddp",
                        store=os.path.join(OUT, "runs.db"), probe_size=256)
        tr = L.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                       callbacks=[Save(), lens])  # Save first: the weights the probes see
        tr.fit(module, loader)
        r = tr.global_rank
        np.savez(os.path.join(OUT, f"rank{r}.npz"),
                 **{f"{k}_{e.index}": m.values for e in lens.run.epochs for k, m in e.measurements.items()})
        with open(os.path.join(OUT, f"rank{r}.json"), "w") as f:
            json.dump({"run_id": lens.run.id, "world_size": lens.run.meta.get("world_size")}, f)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lightning_ddp_two_cpu_processes_equal_one_process(tmp_path):
    script = tmp_path / "fit_ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    info0 = json.loads((tmp_path / "rank0.json").read_text())
    info1 = json.loads((tmp_path / "rank1.json").read_text())
    assert info0["world_size"] == 2 and info1["run_id"] is None
    with Store(tmp_path / "runs.db") as store:
        assert len(store.list_runs()) == 1
        run = store.load_run(info0["run_id"])
    assert run.status == "finished" and [e.index for e in run.epochs] == [0, 1, 2]
    for e in run.epochs:
        assert e.n_samples == 800 and e.n_steps == 20  # 400 samples per rank, batches of 20
    Xtr, ytr, Xva, yva = digits()
    idx = np.sort(probe_permutation(0, 800, class_strata(ytr.numpy()))[:256])
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    for e in range(3):
        model = Module()
        model.load_state_dict(torch.load(tmp_path / f"weights_epoch{e}.pt"))
        model.eval()
        with torch.no_grad():
            c = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx], reduction="none").numpy()
            v = nn.functional.cross_entropy(model(Xva), yva, reduction="none").numpy()
        np.testing.assert_allclose(r0[f"eval_clean_{e}"], c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r0[f"validation_{e}"], v, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(run.epochs[e].get("validation").values, v, rtol=1e-5, atol=1e-6)
        assert r0[f"train_mode_{e}"].shape == (256,)
        ref = TorchLossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                            probe_size=256)
        for _ in range(e + 1):  # T of one process: batches of the per-device size 20, same random draws
            model.train()
            ref.step(torch.tensor(0.0), batch_size=20)
            ep = ref.end_epoch()
        np.testing.assert_allclose(r0[f"train_mode_{e}"], ep.get("train_mode").values, rtol=1e-5, atol=1e-6)
        for k in ("eval_clean", "validation", "train_mode"):
            np.testing.assert_array_equal(r0[f"{k}_{e}"], r1[f"{k}_{e}"])


def test_a_fit_resumed_from_a_checkpoint_continues_the_stored_run(tmp_path):
    """Lightning saves the callback's state (the stored run's id) in its checkpoints; a fit resumed with
    ckpt_path= continues that run: the epochs recorded after the checkpoint are dropped and recorded again, and
    the resumed epochs equal those of an uninterrupted run."""
    Xtr, ytr, Xva, yva = digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=False)
    store = tmp_path / "runs.db"

    def run_fit(epochs, ckpt_path=None, save=False, name="lit"):
        L.seed_everything(0)
        cb = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run=name, store=store,
                      probe_size=128)
        cbs = [cb]
        if save:
            # dirpath as a str: Lightning 2.0 stores it as given, and torch >= 2.6 refuses a pickled Path on load
            cbs.append(L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, every_n_epochs=1,
                                                   filename="{epoch}"))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
            L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=save, callbacks=cbs,
                      ).fit(Module(), loader, ckpt_path=ckpt_path)
        return cb

    first = run_fit(4, save=True)                      # records epochs 0..3, checkpoints after each
    resumed = run_fit(5, ckpt_path=str(tmp_path / "ckpt" / "epoch=1.ckpt"))   # from the end of epoch 1
    straight = run_fit(5, name="straight")             # the same training without interruption
    assert resumed.run.id == first.run.id
    with Store(store) as st:
        runs = st.list_runs()
        run = st.load_run(first.run.id)
        ref = st.load_run(straight.run.id)
    assert len(runs) == 2                              # no third run: the resumed fit continued the first
    assert [e.index for e in run.epochs] == [0, 1, 2, 3, 4] and run.status == "finished"
    for a, b in zip(run.epochs[:2], ref.epochs[:2]):   # before the checkpoint: the first fit's epochs, kept
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
        assert a.get("validation").mean == pytest.approx(b.get("validation").mean, rel=1e-6)
    # after it, trained again from the checkpoint's weights and optimizer state (dropout draws differ: Lightning
    # does not checkpoint the RNG), so the same trajectory up to other dropout draws, still learning
    for a, b in zip(run.epochs[2:], ref.epochs[2:]):
        assert a.get("validation").mean == pytest.approx(b.get("validation").mean, rel=0.25)
    assert run.epochs[4].get("validation").mean < run.epochs[0].get("validation").mean
    assert run.epochs[2].seconds != first.run.epochs[2].seconds
    assert run.meta["probe_fingerprint"] == ref.meta["probe_fingerprint"]
    assert len(run.steps) == len(ref.steps)


def test_noise_aware_early_stopping_stops_an_overfitting_fit_and_restores_the_best_epoch():
    from losslens.lightning import EarlyStopping

    X, y = digits()[0], digits()[1]
    g = torch.Generator().manual_seed(0)
    y = torch.where(torch.rand(len(y), generator=g) < 0.3, torch.randint(0, 10, (len(y),), generator=g), y)

    class Big(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    L.seed_everything(0)
    module = Big()
    lens = LossLens(nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=(X[400:], y[400:]), store=None,
                    probe_size=0)
    stop = EarlyStopping(lens=lens, restore_best_weights=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:400], y[:400]), batch_size=20)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer(callbacks=[lens, stop], epochs=80).fit(module, loader)
    v = [e.get("validation").mean for e in lens.run.epochs]
    assert stop.decision.stop and len(v) < 80
    assert stop.decision.best_epoch == int(np.argmin(v)) < len(v) - 1
    with torch.no_grad():
        restored = float(nn.functional.cross_entropy(module(X[400:]), y[400:]))
    assert restored == pytest.approx(v[stop.decision.best_epoch], rel=1e-4)


def test_the_measurements_reach_every_lightning_logger_and_are_read_back(tmp_path):
    """self.log through the module (issue 15, write-back): a CSVLogger's metrics.csv carries C, T and V per epoch
    under the Keras callback's names, and `losslens diagnose` reads them back as measurements."""
    from lightning.pytorch.loggers import CSVLogger

    from losslens.importers import load_log
    from losslens.record import LOGGED_NAMES

    class Logged(Module):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

    Xtr, ytr, Xva, yva = digits()
    L.seed_everything(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True)
    cb = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="logged", store=None,
                  probe_size=256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)),
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[cb]).fit(Logged(), loader)
    metrics = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    header = metrics.read_text().splitlines()[0].split(",")
    for kind in ("eval_clean", "train_mode", "validation"):
        assert LOGGED_NAMES[kind] in header
    run = load_log(metrics)
    assert [e.index for e in run.epochs] == [0, 1, 2]
    for imp, rec in zip(run.epochs, cb.run.epochs):
        for kind in ("eval_clean", "train_mode", "validation"):
            assert imp.measurements[kind].mean == pytest.approx(rec.measurements[kind].mean, rel=1e-6)
            assert imp.measurements[kind].source == "imported"
    assert run.meta["probe_set"] == "measured by the losslens callback"
    # the decomposition terms with their standard errors and the verdict reach the loggers too, per epoch
    import csv

    from losslens.diagnose import VERDICT_CODES, diagnose
    from losslens.diagnose.gap import decompose_epoch

    rows = [r for r in csv.DictReader(metrics.open()) if r.get("gap_timing")]
    assert len(rows) == 3
    for row, rec in zip(rows, cb.run.epochs):
        d = decompose_epoch(rec)
        for term, name in (("timing", "gap_timing"), ("train_mode", "gap_train_mode"),
                           ("generalization_gap", "generalization_gap")):
            assert float(row[name]) == pytest.approx(d.terms[term].value, rel=1e-5, abs=1e-7)
            assert float(row[name + "_se"]) == pytest.approx(d.terms[term].se, rel=1e-5)
        assert float(row["eval_train_loss_se"]) == pytest.approx(rec.measurements["eval_clean"].sem, rel=1e-5)
    assert VERDICT_CODES[int(float(rows[-1]["verdict_code"]))] == diagnose(cb.run).verdict.code
    # the new columns are never taken for the training loop's loss
    assert run.meta["roles"]["train_loss"] == "train_loss"
    assert not any(v.split("/")[-1].startswith(("gap_", "generalization")) or str(v).endswith("_se")
                   for v in run.meta["roles"].values() if isinstance(v, str))
    # and off when asked
    cb2 = LossLens(nn.CrossEntropyLoss(), train_data=(Xtr, ytr), run="quiet", store=None, probe_size=64,
                   log_metrics=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path / "q")),
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[cb2]).fit(Logged(), loader)
    q = next((tmp_path / "q").rglob("metrics.csv"), None)
    assert q is None or "eval_train_loss" not in q.read_text()
