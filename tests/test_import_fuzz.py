"""Property-based tests: truncated, reordered, NaN-filled and garbled logs.

Every importer either returns runs that the diagnosis accepts or raises
``LogFormatError`` (a ValueError) whose message names the file. Nothing else
escapes.
"""

import json
import math
import os
import pickle
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from losslens.diagnose import diagnose
from losslens.importers import FORMATS, LogFormatError, load_log
from losslens.record import Run

pytestmark = pytest.mark.filterwarnings("ignore:.*loading a pickle:UserWarning")

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def _keras_csv() -> bytes:
    rows = ["epoch,accuracy,loss,val_accuracy,val_loss"]
    for e in range(6):
        rows.append(f"{e},{0.5 + 0.05 * e},{1.0 / (e + 1)},{0.5 + 0.04 * e},{1.1 / (e + 1)}")
    rows[3] = "2,0.6,0.33,NA,NA"
    return ("\r\n".join(rows) + "\r\n").encode()


def _keras_json() -> bytes:
    return json.dumps({"loss": [1.0, 0.7, 0.5, 0.45, 0.4], "val_loss": [1.1, 0.8, 0.6, 0.58, 0.6],
                       "accuracy": [0.5, 0.6, 0.7, 0.72, 0.75]}).encode()


def _lightning_csv() -> bytes:
    rows = ["epoch,step,train_loss_epoch,train_loss_step,val_loss,lr-Adam"]
    step = 0
    for e in range(4):
        for k in range(5):
            rows.append(f"{e},{step},,{2.0 / (1 + step / 10)},,")
            step += 1
        rows.append(f"{e},{step - 1},,,{1.5 / (e + 1)},")
        rows.append(f"{e},{step - 1},{1.8 / (e + 1)},,,")
    rows.insert(1, ",0,,,,0.001")
    return ("\n".join(rows) + "\n").encode()


def _trainer_state() -> bytes:
    hist = []
    for s in range(10, 201, 10):
        hist.append({"epoch": s / 50, "grad_norm": 1.0, "learning_rate": 1e-4, "loss": 2.0 / (1 + s / 50), "step": s})
        if s % 50 == 0:
            hist.append({"epoch": s / 50, "eval_loss": 1.8 / (1 + s / 50), "eval_runtime": 1.0, "step": s})
    hist.append({"epoch": 4.0, "step": 200, "train_loss": 1.0, "train_runtime": 10.0})
    return json.dumps({"log_history": hist, "global_step": 200, "max_steps": 200, "num_train_epochs": 4,
                       "logging_steps": 10}, indent=2).encode()


def _fastai() -> bytes:
    rows = ["epoch,train_loss,valid_loss,accuracy,time"]
    for e in range(5):
        rows.append(f"{e},{1.0 / (e + 1):.6f},{1.1 / (e + 1):.6f},{0.5 + 0.1 * e:.6f},00:0{e}")
    return ("\n".join(rows) + "\n").encode()


def _pickle() -> bytes:
    return pickle.dumps({"loss": [1.0, 0.6, 0.5, 0.45], "val_loss": [0.9, 0.7, 0.65, 0.66]})


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    out = {
        "keras_csv": ("training.log", _keras_csv()),
        "keras_history": ("history.json", _keras_json()),
        "lightning_csv": ("metrics.csv", _lightning_csv()),
        "trainer_state": ("trainer_state.json", _trainer_state()),
        "fastai": ("history.csv", _fastai()),
        "keras_pickle": ("history.pickle", _pickle()),
    }
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    d = root / "tb"
    w = SummaryWriter(str(d))
    for s in range(1, 41):
        w.add_scalar("train_loss", 2.0 / (1 + s / 10), s)
        if s % 10 == 0:
            w.add_scalar("val_loss", 1.8 / (1 + s / 10), s)
    w.close()
    ev = next(p for p in d.iterdir() if "tfevents" in p.name)
    out["tensorboard"] = ("events.out.tfevents.1.fuzz", ev.read_bytes())
    assert set(out) == set(FORMATS)
    return out


def _check(path, fmt=None, allow_pickle=False):
    try:
        got = load_log(path, format=fmt, allow_pickle=allow_pickle)
    except LogFormatError as exc:
        assert isinstance(exc, ValueError)
        assert str(path) in str(exc) and exc.reason
        return None
    runs = got if isinstance(got, list) else [got]
    for r in runs:
        assert isinstance(r, Run) and r.status == "imported"
        for e in r.epochs:
            assert isinstance(e.index, int) and math.isfinite(e.position) or math.isnan(e.position)
        d = diagnose(r)  # must not raise on any imported run
        json.dumps(d.to_dict(), allow_nan=True)
    return runs


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_clean_samples_import(samples, tmp_path, fmt):
    name, data = samples[fmt]
    p = tmp_path / name
    p.write_bytes(data)
    runs = _check(p, allow_pickle=(fmt == "keras_pickle"))
    assert runs, f"{fmt} sample did not import"
    assert any(r.has("validation") for r in runs)


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(cut=st.floats(0.0, 1.0))
def test_truncated(samples, tmp_path, fmt, cut):
    name, data = samples[fmt]
    p = _write(tmp_path, name, data[: int(len(data) * cut)])
    _check(p, allow_pickle=True)
    _check(p, fmt=fmt, allow_pickle=True)


@pytest.mark.parametrize("fmt", ["keras_csv", "lightning_csv", "fastai", "trainer_state", "keras_history"])
@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), keep_header=st.booleans())
def test_reordered_lines(samples, tmp_path, fmt, seed, keep_header):
    name, data = samples[fmt]
    lines = data.decode().splitlines()
    rng = np.random.default_rng(seed)
    head, rest = (lines[:1], lines[1:]) if keep_header else ([], lines)
    rest = [rest[i] for i in rng.permutation(len(rest))]
    p = _write(tmp_path, name, ("\n".join(head + rest) + "\n").encode())
    _check(p)
    _check(p, fmt=fmt)


_NUM = re.compile(rb"(?<![A-Za-z_])-?\d+\.?\d*(e-?\d+)?")


@pytest.mark.parametrize("fmt", ["keras_csv", "lightning_csv", "fastai", "trainer_state", "keras_history"])
@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), token=st.sampled_from([b"nan", b"NaN", b"inf", b"-inf", b"", b"NA",
                                                                 b"1e309", b"-0", b"x"]),
       frac=st.floats(0.05, 1.0))
def test_nan_filled(samples, tmp_path, fmt, seed, token, frac):
    name, data = samples[fmt]
    rng = np.random.default_rng(seed)

    def sub(m):
        return token if rng.random() < frac else m.group(0)

    p = _write(tmp_path, name, _NUM.sub(sub, data))
    _check(p)
    _check(p, fmt=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 40))
def test_garbled_bytes(samples, tmp_path, fmt, seed, n):
    name, data = samples[fmt]
    rng = np.random.default_rng(seed)
    b = bytearray(data)
    for i in rng.integers(0, len(b), size=n):
        b[i] = int(rng.integers(0, 256))
    p = _write(tmp_path, name, bytes(b))
    _check(p, allow_pickle=True)
    _check(p, fmt=fmt, allow_pickle=True)


@SETTINGS
@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes_under_every_format(tmp_path, blob):
    p = _write(tmp_path, "blob.log", blob)
    _check(p, allow_pickle=True)
    for fmt in FORMATS:
        _check(p, fmt=fmt, allow_pickle=True)


def test_pickles_are_refused_by_default_and_never_execute_code(tmp_path, samples):
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    p = _write(tmp_path, "evil.pickle", pickle.dumps({"loss": [1.0, 0.5], "x": Evil()}))
    with pytest.raises(LogFormatError, match="pickle.*--allow-pickle"):
        load_log(p)
    with pytest.warns(UserWarning, match="pickle"):
        with pytest.raises(LogFormatError, match="refusing to load posix.mkdir|refusing to load"):
            load_log(p, allow_pickle=True)
    assert not marker.exists()
    name, data = samples["keras_pickle"]
    good = _write(tmp_path, name, data)
    with pytest.warns(UserWarning, match="pickle"):
        run = load_log(good, allow_pickle=True)
    assert [e.train_loss for e in run.epochs] == [1.0, 0.6, 0.5, 0.45]


def test_vectorised_csv_parse_agrees_with_the_exact_one(tmp_path, monkeypatch):
    """Large plain CSVs are parsed with pandas; the result equals the exact row-by-row parser's."""
    from losslens.importers import _common

    rng = np.random.default_rng(0)
    rows = ["epoch,step,train_loss_step,val_loss,lr-Adam,created"]
    for s in range(3000):
        e = s // 1000
        loss = rng.choice(["nan", "inf", f"{rng.random():.6f}"], p=[0.01, 0.01, 0.98])
        val = f"{rng.random():.5f}" if s % 1000 == 999 else rng.choice(["", "NA"])
        rows.append(f"{e},{s},{loss},{val},{'0.1' if s % 500 == 0 else ''},t{s}")
    p = tmp_path / "metrics.csv"
    p.write_text("\n".join(rows) + "\n")
    fast = _common.read_csv(p)
    assert fast.numeric, "the vectorised path was not taken"
    monkeypatch.setattr(_common, "_read_csv_fast", lambda *a, **k: None)
    slow = _common.read_csv(p)
    assert not slow.numeric or set(slow.numeric) <= {"epoch"}
    assert fast.names == slow.names and list(fast.lines) == list(slow.lines)
    for name in ("epoch", "step", "train_loss_step", "val_loss", "lr-Adam"):
        np.testing.assert_array_equal(fast.floats(name, p), slow.floats(name, p))
        np.testing.assert_array_equal(fast.present(name), slow.present(name))
    assert fast.text("created") == slow.text("created")
    with pytest.raises(LogFormatError, match="column 'created', line 2: expected a number, got 't0'"):
        fast.floats("created", p)
    monkeypatch.undo()
    run = load_log(p)
    col = fast.floats("train_loss_step", p)
    # logged nan/inf step losses are kept (a divergence is reported, never hidden)
    assert len(run.steps) == 3000
    assert int((~np.isfinite(run.steps.loss)).sum()) == int((~np.isfinite(col)).sum()) > 0
