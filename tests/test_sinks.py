"""Write-back, live (issue 15): the PyTorch recorder's sinks write each epoch's measurements, decomposition terms
with standard errors and headline verdict into real TensorBoard event files, a real MLflow tracking store and
real W&B offline run files, and the values read back from each equal the recorded run's."""

from __future__ import annotations

import glob
import struct
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from losslens.diagnose import VERDICT_CODES, diagnose  # noqa: E402
from losslens.diagnose.gap import decompose_epoch  # noqa: E402
from losslens.diagnose.live import TERM_NAMES, live_values  # noqa: E402
from losslens.record import LOGGED_NAMES  # noqa: E402
from losslens.torch import LossLens  # noqa: E402

EPOCHS = 3


def _train(sinks, epochs=EPOCHS):
    """A small seeded MLP with dropout on digits, recorded with ``sinks``; returns the recorder."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    lens = LossLens(model, loss_fn, (x[:1200], y[:1200]), (x[1200:], y[1200:]), store=None, probe_size=300,
                    sinks=sinks)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(1200, generator=g).split(64):
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(idx))
        lens.end_epoch()
    return lens


def _expected(run, e):
    """The values the sinks must hold for epoch ``e``: from the recorded epoch itself, not from the live code."""
    ep = run.epochs[e]
    out = {}
    for kind, name in LOGGED_NAMES.items():
        if kind in ep.measurements:
            out[name] = ep.measurements[kind].mean
            out[name + "_se"] = ep.measurements[kind].sem
    d = decompose_epoch(ep)
    for term, name in TERM_NAMES.items():
        if d.terms[term].status in ("measured", "skipped"):
            out[name] = d.terms[term].value
            out[name + "_se"] = d.terms[term].se
    return out


def _wandb_records(path):
    """The protobuf records of a W&B offline run file (LevelDB log format: 7-byte file header, 32 KiB blocks,
    7-byte record headers ``crc32c, length, type`` with full/first/middle/last types)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_tensorboard_mlflow_and_wandb_receive_every_epoch(tmp_path, monkeypatch):
    pytest.importorskip("tbparse")
    mlflow = pytest.importorskip("mlflow")
    wandb = pytest.importorskip("wandb")
    from tbparse import SummaryReader
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    writer = SummaryWriter(str(tmp_path / "tb"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wb = wandb.init(project="losslens-test", dir=str(tmp_path))
        with mlflow.start_run() as active:
            lens = _train([writer, active, wb])
        wb.finish()
    writer.close()
    run = lens.run
    verdict = diagnose(run).verdict.code
    assert lens.live is not None and lens.live.verdict == verdict
    assert lens.live.values["verdict_code"] == VERDICT_CODES.index(verdict)

    # TensorBoard: one scalar per name and epoch, at global_step = epoch
    tb = SummaryReader(str(tmp_path / "tb")).scalars
    for e in range(EPOCHS):
        want = _expected(run, e)
        assert {"eval_train_loss", "train_mode_loss", "losslens_val_loss", "gap_timing", "gap_train_mode",
                "generalization_gap_se"} <= set(want)
        got = {t[len("losslens/"):]: v for t, v in tb[tb.step == e][["tag", "value"]].itertuples(index=False)}
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    texts = SummaryReader(str(tmp_path / "tb")).text
    assert texts[texts.step == EPOCHS - 1]["value"].iloc[0] == verdict

    # MLflow: metric histories in the SQLite tracking store, step = epoch, and the verdict tag
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in ("eval_train_loss", "gap_timing", "gap_timing_se", "generalization_gap"):
        hist = sorted(client.get_metric_history(active.info.run_id, "losslens/" + name), key=lambda m: m.step)
        assert [m.step for m in hist] == list(range(EPOCHS))
        assert [m.value for m in hist] == pytest.approx([_expected(run, e)[name] for e in range(EPOCHS)], rel=1e-9)
    assert client.get_run(active.info.run_id).data.tags["losslens.verdict"] == verdict

    # W&B: the offline run file's history rows (against losslens/epoch) and the summary's verdict
    (path,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    rows = []
    summary = {}
    for rec in _wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): float(i.value_json) for i in rec.history.item
                         if (i.key or "/".join(i.nested_key)).startswith("losslens/")})
        elif kind == "summary":
            summary.update({u.key or "/".join(u.nested_key): u.value_json for u in rec.summary.update})
    rows = [r for r in rows if r]
    assert [int(r["losslens/epoch"]) for r in rows] == list(range(EPOCHS))
    for e, row in enumerate(rows):
        for name, value in _expected(run, e).items():
            assert row["losslens/" + name] == pytest.approx(value, rel=1e-9), name
    assert summary["losslens/verdict"] == f'"{verdict}"'


class _Broken:
    def write(self, live):
        raise OSError("disk full")


class _Collect:
    def __init__(self):
        self.seen = []

    def write(self, live):
        self.seen.append(live)


def test_a_failing_sink_warns_once_and_never_stops_training():
    """A sink that raises is dropped after one warning naming it; the other sinks still get every epoch, and the
    run equals one recorded without sinks."""
    good = _Collect()
    with pytest.warns(RuntimeWarning, match="_Broken failed .*disk full") as w:
        lens = _train([_Broken(), good])
    assert sum("_Broken" in str(x.message) for x in w) == 1
    assert [lv.epoch for lv in good.seen] == list(range(EPOCHS))
    plain = _train(None)
    for a, b in zip(lens.run.epochs, plain.run.epochs):
        assert a.train_loss == b.train_loss
        for kind in a.measurements:
            np.testing.assert_array_equal(a.measurements[kind].values, b.measurements[kind].values)
    assert plain.live is None   # no sink, no adapter asking: no diagnosis at each epoch end


def test_live_values_leave_out_non_finite_numbers_and_need_an_epoch():
    from losslens.record import Epoch, Measurement, Run

    run = Run(name="r")
    assert live_values(run) is None
    run.epochs.append(Epoch(0, train_loss=float("inf"), measurements={
        "validation": Measurement.from_values("validation", [1.0, 2.0])}))
    lv = live_values(run)
    assert lv is not None and lv.values["losslens_val_loss"] == 1.5
    assert all(np.isfinite(v) for v in lv.values.values())
    assert "gap_timing" not in lv.values


def test_an_unknown_object_is_refused_by_name():
    with pytest.raises(TypeError, match="sinks: .*got int"):
        LossLens(torch.nn.Linear(2, 2), torch.nn.CrossEntropyLoss(), store=None, sinks=[3])

