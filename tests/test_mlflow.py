"""MLflow as a source (issue 15): ``losslens diagnose --mlflow URI`` against a real local ``mlflow server`` with a
SQLite backend, started by the test; runs logged by a real Lightning ``MLFlowLogger`` and by the MLflow client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from click.testing import CliRunner  # noqa: E402
from test_cli_scripting import _runner  # noqa: E402  (stdout apart from stderr on every click)

from losslens.cli import main  # noqa: E402
from losslens.importers import LogFormatError  # noqa: E402
from losslens.importers.mlflow_runs import load_mlflow  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("mlflow server exited: " + (tmp / "server.log").read_text()[-2000:])
                time.sleep(0.25)
        else:
            pytest.fail("mlflow server did not answer within 60 s: " + (tmp / "server.log").read_text()[-2000:])
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _log_curves(client, exp_id, name, train, val):
    """A run logged as Keras autologging does: loss and val_loss at step = epoch."""
    run = client.create_run(exp_id, run_name=name)
    rid = run.info.run_id
    for e, (t, v) in enumerate(zip(train, val)):
        client.log_metric(rid, "loss", float(t), step=e, timestamp=1000 + e)
        client.log_metric(rid, "val_loss", float(v), step=e, timestamp=1000 + e)
    client.log_metric(rid, "accuracy", 0.9, step=len(train) - 1)
    client.set_terminated(rid)
    return rid


@pytest.fixture(scope="module")
def experiment(server):
    """Three runs of known shape from the client, one from a real Lightning fit, one without any loss."""
    client = mlflow.tracking.MlflowClient(server)
    exp_id = client.create_experiment("curves")
    e = np.arange(30)
    rng = np.random.default_rng(0)
    ids = {
        "overfits": _log_curves(client, exp_id, "overfits", 1.5 * np.exp(-e / 5) + 0.05,
                                0.9 * np.exp(-e / 5) + 0.5 + 0.02 * np.maximum(0, e - 12) ** 1.3
                                + 0.004 * rng.normal(size=30)),
        "improving": _log_curves(client, exp_id, "improving", 2.0 - 0.04 * e, 2.05 - 0.04 * e
                                 + 0.002 * rng.normal(size=30)),
        "plateau": _log_curves(client, exp_id, "plateau", 0.3 + 1.2 * np.exp(-e / 3),
                               0.45 + 1.0 * np.exp(-e / 3) + 0.002 * rng.normal(size=30)),
    }
    bad = client.create_run(exp_id, run_name="no-loss")
    client.log_metric(bad.info.run_id, "accuracy", 0.5, step=0)
    ids["no-loss"] = bad.info.run_id
    ids["lightning"] = _lightning_run(server)
    return server, ids


def _lightning_run(uri):
    L = pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    from lightning.pytorch.loggers import MLFlowLogger
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def training_step(self, b, i):
            loss = torch.nn.functional.cross_entropy(self.net(b[0]), b[1])
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, b, i):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(b[0]), b[1]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.seed_everything(0)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1200], y[:1200]), batch_size=64,
                                     shuffle=True)
    vl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[1200:], y[1200:]), batch_size=256)
    logger = MLFlowLogger(experiment_name="curves", tracking_uri=uri, run_name="lightning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(max_epochs=4, accelerator="cpu", logger=logger, log_every_n_steps=5, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(M(), dl, vl)
    return logger.run_id


def test_the_runs_of_an_experiment_are_imported_with_their_histories(experiment):
    uri, ids = experiment
    errors: list[str] = []
    runs = load_mlflow(uri, experiment="curves", errors=errors)
    by = {r.name: r for r in runs}
    assert set(by) == {"overfits", "improving", "plateau", "lightning"}
    assert len(errors) == 1 and ids["no-loss"] in errors[0] and "no metric with 'loss'" in errors[0]
    r = by["overfits"]
    assert len(r.epochs) == 30 and r.meta["mlflow_run_id"] == ids["overfits"]
    assert r.epochs[3].train_loss == pytest.approx(1.5 * np.exp(-3 / 5) + 0.05)
    assert r.meta["mlflow_metrics"] == {"accuracy": 0.9}
    lt = by["lightning"]   # the logger's epoch metric gives the epochs; its per-step losses are steps
    assert len(lt.epochs) == 4 and len(lt.steps) > 4
    assert np.all(np.isfinite([e.get("validation").mean for e in lt.epochs]))
    # a fixed order: oldest first, the same on every call
    assert [r.name for r in runs] == [r.name for r in load_mlflow(uri, experiment="curves", errors=[])]


def test_cli_diagnoses_an_experiment_in_a_process_pool_with_an_overview(experiment, tmp_path):
    uri, ids = experiment
    out1, out2 = tmp_path / "one", tmp_path / "two"
    res = CliRunner().invoke(main, ["diagnose", "--mlflow", uri, "--experiment", "curves", "--out", str(out1),
                                    "--workers", "2", "-q"])
    assert res.exit_code == 1, res.output   # the run without a loss is named and the others are diagnosed
    assert ids["no-loss"] in res.output
    rows = json.loads((out1 / "overview.json").read_text())
    verdicts = {r["run"]: r["headline"] for r in rows}
    assert verdicts["overfits"] == "overfitting"
    assert verdicts["improving"] == "still_improving"
    assert verdicts["plateau"] == "converged"
    # one plotly.js for all pages, loaded by each; the reports equal a one-process run's
    assert (out1 / "plotly.min.js").stat().st_size > 1_000_000
    page = (out1 / "overfits" / "report.html").read_text()
    assert '<script src="../plotly.min.js"></script>' in page and len(page) < 1_000_000
    CliRunner().invoke(main, ["diagnose", "--mlflow", uri, "--experiment", "curves", "--out", str(out2),
                              "--workers", "1", "-q"])
    for name in verdicts:
        a = json.loads((out1 / name / "report.json").read_text())
        b = json.loads((out2 / name / "report.json").read_text())
        assert a["findings"] == b["findings"] and a["verdict"] == b["verdict"]
    # chosen runs only
    res = _runner().invoke(main, ["diagnose", "--mlflow", uri, "--run-id", ids["improving"], "--out",
                                  str(tmp_path / "single"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verdict"]["code"] == "still_improving"


def test_bad_sources_get_one_clear_line(experiment, tmp_path):
    uri, _ = experiment
    with pytest.raises(LogFormatError, match="no experiment named 'nope'"):
        load_mlflow(uri, experiment="nope")
    res = CliRunner().invoke(main, ["diagnose", "--mlflow", uri, "--experiment", "nope", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "no experiment named 'nope'" in res.output
    res = CliRunner().invoke(main, ["diagnose", "--mlflow", uri, "--run-id", "0" * 32, "--out", str(tmp_path)])
    assert res.exit_code == 1 and "run id '" + "0" * 32 + "'" in res.output
    res = CliRunner().invoke(main, ["diagnose", "--experiment", "curves"])
    assert res.exit_code == 2 and "--mlflow" in res.output
    port = _free_port()
    res = CliRunner().invoke(main, ["diagnose", "--mlflow", f"http://127.0.0.1:{port}", "--experiment", "x",
                                    "--out", str(tmp_path)], env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                                                                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    assert res.exit_code == 1 and "cannot reach the tracking server" in res.output
