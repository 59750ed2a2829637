"""losslens.torch.LossLens: the measurement protocol, checked against independent computations.

Real (small) training runs on scikit-learn's digits, CPU, seeded.
"""

from __future__ import annotations

import copy
import math
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from losslens.diagnose import decompose, diagnose  # noqa: E402
from losslens.record import (  # noqa: E402
    EVAL_AUGMENTED,
    EVAL_CLEAN,
    TRAIN_MODE,
    VALIDATION,
    fingerprint_indices,
)
from losslens.recording.probe import class_strata, probe_permutation  # noqa: E402
from losslens.report._model import run_facts  # noqa: E402
from losslens.store import Store  # noqa: E402
from losslens.torch import LossLens  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    p = np.random.default_rng(0).permutation(len(y))
    X = torch.tensor(X[p] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[p], dtype=torch.long)
    return X[:1200], y[:1200], X[1200:], y[1200:]


class NoisyDigits(torch.utils.data.Dataset):
    """Training transform: Gaussian pixel noise from torch's RNG, plus a numpy-RNG jitter when asked."""

    def __init__(self, X, y, sigma=0.3, use_numpy=False):
        self.X, self.y, self.sigma, self.use_numpy = X, y, sigma, use_numpy

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.X[i] + self.sigma * torch.randn(self.X.shape[1])
        if self.use_numpy:
            x = x * float(np.random.uniform(0.9, 1.1))
        return x, self.y[i]


class ShiftedDigits(torch.utils.data.Dataset):
    """A deterministic 'augmentation' (a fixed per-sample perturbation), so A can be recomputed exactly."""

    def __init__(self, X, y):
        g = torch.Generator().manual_seed(123)
        self.X = X + 0.4 * torch.randn(X.shape, generator=g)
        self.y = y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def mlp(dropout=0.0, bn=False, hidden=64, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(64, hidden)]
    if bn:
        layers.append(nn.BatchNorm1d(hidden))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, 10))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------
def test_decomposition_terms_match_independent_computation(digits):
    """Every term equals the test's own recomputation; the terms add up to reported − validation."""
    Xtr, ytr, Xva, yva = digits
    model = mlp(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    aug = ShiftedDigits(Xtr, ytr)
    lam = 1e-3
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), train_augmented=aug, val_data=(Xva, yva),
                    store=None, probe_size=320, optimizer=opt)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for epoch in range(3):
        model.train()
        data_losses, sizes, pens = [], [], []
        for xb, yb in loader:
            opt.zero_grad()
            data = F.cross_entropy(model(xb), yb)
            pen = lam * sum((p ** 2).sum() for p in model.parameters())
            (data + pen).backward()
            opt.step()
            lens.step(data + pen, batch_size=len(yb), penalty=pen)
            data_losses.append(data.item())
            pens.append(pen.item())
            sizes.append(len(yb))
        ep = lens.end_epoch()

        # probe indices: the documented seeded subset, stratified by the class labels
        idx = np.sort(probe_permutation(0, len(ytr), class_strata(ytr.numpy()))[:320])
        np.testing.assert_array_equal(lens.probe_indices, idx)
        assert lens.run.meta["probe_strata"] == 10
        assert lens.run.meta["probe_fingerprint"] == fingerprint_indices(idx, len(ytr))

        # independent recomputation with the end-of-epoch weights
        w = np.asarray(sizes, float)
        r = float(np.sum(w * np.asarray(data_losses)) / w.sum())
        omega = float(np.sum(w * np.asarray(pens)) / w.sum())
        ref = copy.deepcopy(model)
        with torch.no_grad():
            ref.eval()
            c = F.cross_entropy(ref(Xtr[idx]), ytr[idx], reduction="none").numpy()
            a = F.cross_entropy(ref(aug.X[idx]), ytr[idx], reduction="none").numpy()
            v = F.cross_entropy(ref(Xva), yva, reduction="none").numpy()
            ref.train()  # batch norm on batch statistics, batches of the training batch size, sorted order
            t = torch.cat([F.cross_entropy(ref(aug.X[idx[i:i + 32]]), ytr[idx[i:i + 32]], reduction="none")
                           for i in range(0, 320, 32)]).numpy()
        np.testing.assert_allclose(ep.get(EVAL_CLEAN).values, c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ep.get(EVAL_AUGMENTED).values, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ep.get(TRAIN_MODE).values, t, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ep.get(VALIDATION).values, v, rtol=1e-5, atol=1e-6)
        assert ep.train_loss == pytest.approx(r, rel=1e-6)
        assert ep.penalty == pytest.approx(omega, rel=1e-6)
        np.testing.assert_allclose(lens.run.steps.for_epoch(epoch).loss, data_losses, rtol=1e-6)

        d = decompose(lens.run)[epoch]
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-12)
        assert d.reported == pytest.approx(r + omega, rel=1e-6)
        expect = {"penalty": omega, "timing": r - t.mean(), "train_mode": t.mean() - a.mean(),
                  "augmentation": a.mean() - c.mean(), "generalization_gap": v.mean() - c.mean()}
        for name, value in expect.items():
            assert d.terms[name].value == pytest.approx(value, abs=2e-5), name
        # paired standard errors of the probe terms
        assert d.terms["train_mode"].se == pytest.approx(np.std(t - a, ddof=1) / math.sqrt(320), rel=1e-3)
    assert lens.run.meta["weight_decay"] == 0.0 and lens.run.meta["optimizer"] == "SGD"
    assert lens.run.meta["batchnorm_layers"] == ["1 (BatchNorm1d)"] and lens.run.meta["dropout_layers"] == []


def test_train_mode_pass_with_dropout_agrees_with_monte_carlo(digits):
    """With dropout T is random; it must agree with the test's own train-mode passes within noise,
    and be clearly above the eval-mode loss on the same inputs."""
    Xtr, ytr, Xva, yva = digits
    model = mlp(dropout=0.5, hidden=128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                    probe_size="all")
    for _ in range(2):
        for i in range(0, 1200, 32):
            opt.zero_grad()
            loss = F.cross_entropy(model(Xtr[i:i + 32]), ytr[i:i + 32])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=32)
        ep = lens.end_epoch()
    assert model.training  # the mode the user left is restored
    t = ep.get(TRAIN_MODE)
    assert t.n == 1200 and EVAL_AUGMENTED not in ep.measurements
    with torch.no_grad():
        torch.manual_seed(99)
        ref = copy.deepcopy(model).train()
        mc = np.mean([F.cross_entropy(ref(Xtr), ytr).item() for _ in range(5)])
    assert abs(t.mean - mc) < 4 * t.sem
    c = ep.get(EVAL_CLEAN)
    assert t.mean - c.mean > 4 * np.std(t.values - c.values, ddof=1) / math.sqrt(1200)


def test_step_does_not_read_the_loss():
    """step() keeps the tensor on its device: a meta-device loss (no data at all) is accepted."""
    model = mlp()
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(torch.zeros(10, 64), torch.zeros(10, dtype=torch.long)),
                store=None)
    for _ in range(3):
        lens.step(torch.empty((), device="meta"), batch_size=4, penalty=torch.empty((), device="meta"))
    assert len(lens._losses) == 3 and lens._losses[0].device.type == "meta"


# ------------------------------------------------------------------------------------------------
def _train_for_identity(X, y, use_lens, tmp_path=None, epochs=3):
    torch.manual_seed(7)
    np.random.seed(7)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_ds = NoisyDigits(X, y, sigma=0.2, use_numpy=True)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=50, shuffle=True)
    lens = None
    if use_lens:
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=torch.utils.data.TensorDataset(X, y),
                        train_augmented=train_ds, val_data=(X[:200], y[:200]), store=str(tmp_path / "ident.db"),
                        probe_size=300, optimizer=opt)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            if lens is not None:
                lens.step(loss, batch_size=len(yb))
        if lens is not None:
            lens.end_epoch()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, lens, torch.rand(3), np.random.rand(3)


def test_parameters_bit_identical_with_and_without_lens(digits, tmp_path):
    Xtr, ytr, _, _ = digits
    X, y = Xtr[:600], ytr[:600]
    off, _, rng_off, np_off = _train_for_identity(X, y, use_lens=False)
    on, lens, rng_on, np_on = _train_for_identity(X, y, use_lens=True, tmp_path=tmp_path)
    assert set(lens.run.epochs[-1].measurements) == {TRAIN_MODE, EVAL_AUGMENTED, EVAL_CLEAN, VALIDATION}
    assert off.keys() == on.keys()
    for k in off:
        assert torch.equal(off[k], on[k]), f"{k} differs with the recorder on"
    assert torch.equal(rng_off, rng_on) and np.array_equal(np_off, np_on)


# ------------------------------------------------------------------------------------------------
_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, torch
    from torch import nn
    from losslens.torch import LossLens
    torch.set_num_threads(1)
    store, out, kill_epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = np.load(os.path.join(out, "digits.npz"))
    X, y = torch.tensor(data["X"]), torch.tensor(data["y"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=(X[400:], y[400:]),
                run="killed", store=store, probe_size=250)
    for epoch in range(10):
        for i in range(0, 400, 40):
            if epoch == kill_epoch and i == 200:
                os.kill(os.getpid(), signal.SIGKILL)
            opt.zero_grad(); loss = nn.functional.cross_entropy(model(X[i:i+40]), y[i:i+40])
            loss.backward(); opt.step(); lens.step(loss, batch_size=40)
        ep = lens.end_epoch()
        np.savez(os.path.join(out, f"epoch{epoch}.npz"),
                 **{k: m.values for k, m in ep.measurements.items()}, steps=lens.run.steps.for_epoch(epoch).loss)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_leaves_the_committed_epochs(digits, tmp_path):
    np.savez(tmp_path / "digits.npz", X=digits[0][:600].numpy(), y=digits[1][:600].numpy())
    script = tmp_path / "train.py"
    script.write_text(_KILL_SCRIPT)
    db = tmp_path / "killed.db"
    k = 3
    proc = subprocess.run([sys.executable, str(script), str(db), str(tmp_path), str(k)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Store(db) as store:
        run = store.load_run("killed")
    assert [e.index for e in run.epochs] == list(range(k))
    assert run.status == "running"
    assert sorted(set(run.steps.epoch.tolist())) == list(range(k))
    for e in run.epochs:
        saved = np.load(tmp_path / f"epoch{e.index}.npz")
        assert set(e.measurements) == {TRAIN_MODE, EVAL_CLEAN, VALIDATION}
        for kind, m in e.measurements.items():
            np.testing.assert_array_equal(m.values, saved[kind])
            assert m.n == len(saved[kind]) == (250 if kind != VALIDATION else 200)
        np.testing.assert_array_equal(run.steps.for_epoch(e.index).loss, saved["steps"])


# ------------------------------------------------------------------------------------------------
def test_nan_losses_are_recorded_and_diagnosed(digits):
    Xtr, ytr, Xva, yva = digits
    X = Xtr[:400].clone()
    model = mlp(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X, ytr[:400]), val_data=(Xva, yva), store=None)
    for epoch in range(4):
        for i in range(0, 400, 50):
            xb = X[i:i + 50].clone()
            if epoch == 2 and i == 100:
                xb[0, 0] = float("nan")  # one corrupted input poisons the weights
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), ytr[i:i + 50])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=50)
        lens.end_epoch()
    run = lens.run
    assert math.isfinite(run.epochs[1].train_loss)
    assert math.isnan(run.epochs[2].train_loss) and math.isnan(run.epochs[3].get(VALIDATION).mean)
    assert np.isnan(run.steps.for_epoch(2).loss).sum() == 6  # steps 2..7 of epoch 2
    assert np.isnan(run.epochs[3].get(EVAL_CLEAN).values).all()
    dg = diagnose(run)
    codes = dg.codes()
    assert "stability.non_finite" in codes
    assert dg.get("stability.non_finite").data["first_epoch"] == 2


def test_divergence_with_a_huge_learning_rate_is_recorded(digits):
    """MSE regression with a learning rate far too large: the loss grows geometrically to inf."""
    Xtr, ytr, Xva, yva = digits
    Y, Yva = F.one_hot(ytr[:300], 10).float(), F.one_hot(yva, 10).float()
    torch.manual_seed(0)
    model = nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    lens = LossLens(model, nn.MSELoss(), train_data=(Xtr[:300], Y), val_data=(Xva, Yva), store=None)
    for _ in range(3):
        for i in range(0, 300, 30):
            opt.zero_grad()
            loss = F.mse_loss(model(Xtr[i:i + 30]), Y[i:i + 30])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=30)
        lens.end_epoch()
    assert np.isfinite(lens.run.steps.loss[:5]).all() and not np.isfinite(lens.run.steps.loss[-1])
    assert not np.isfinite(lens.run.epochs[-1].get(VALIDATION).values).all()
    codes = diagnose(lens.run).codes()
    assert {"stability.non_finite", "stability.divergence"} & set(codes), codes


# ------------------------------------------------------------------------------------------------
class PlainDigits(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


class BatchedDigits(PlainDigits):
    """A dataset with ``__getitems__`` (batched reads, as torch's DataLoader uses them)."""

    calls = 0

    def __getitems__(self, indices):
        BatchedDigits.calls += 1
        idx = torch.as_tensor(indices)
        return list(zip(self.X[idx], self.y[idx]))


class DictDigits(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixels": self.X[i], "label": self.y[i]}


class KwModel(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, pixels):
        return self.net(pixels)


class TwoInput(nn.Module):
    """The 64 pixels split into two inputs: the same function as ``net`` on the concatenation."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, left, right):
        return self.net(torch.cat([left, right], dim=1))


class TripleDigits(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i, :32], self.X[i, 32:], self.y[i]


def _measure_once(model, probe, val, **kw):
    # the whole set: a form whose labels cannot be read without the inputs gets a simple random probe, the others
    # a stratified one; over every sample the losses must be the same
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=probe, val_data=val, store=None, probe_size="all", **kw)
    lens.step(torch.tensor(1.0), batch_size=25)
    ep = lens.end_epoch()
    return ep.get(EVAL_CLEAN).values, ep.get(VALIDATION).values


def test_every_dataset_form_gives_the_same_losses(digits):
    Xtr, ytr, Xva, yva = digits
    X, y, Xv, yv = Xtr[:500], ytr[:500], Xva[:100], yva[:100]
    net = mlp(hidden=32)
    ref_c, ref_v = _measure_once(net, (X, y), (Xv, yv))
    TD = torch.utils.data.TensorDataset
    forms = {
        "tensor dataset": dict(probe=TD(X, y), val=TD(Xv, yv)),
        "numpy tuple": dict(probe=(X.numpy(), y.numpy()), val=(Xv.numpy(), yv.numpy())),
        "dataloader": dict(probe=torch.utils.data.DataLoader(TD(X, y), batch_size=7, shuffle=True),
                           val=torch.utils.data.DataLoader(TD(Xv, yv), batch_size=7)),
        "map-style dataset": dict(probe=PlainDigits(X, y), val=TD(Xv, yv)),
        "__getitems__ dataset": dict(probe=BatchedDigits(X, y), val=BatchedDigits(Xv, yv)),
    }
    for name, f in forms.items():
        c, v = _measure_once(net, **f)
        np.testing.assert_allclose(c, ref_c, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(v, ref_v, rtol=1e-6, err_msg=name)
    assert BatchedDigits.calls >= 2
    # dict items: the target comes from "label", the model is called with model(pixels=...)
    c, v = _measure_once(KwModel(net), DictDigits(X, y), torch.utils.data.DataLoader(DictDigits(Xv, yv)))
    np.testing.assert_allclose(c, ref_c, rtol=1e-6)
    np.testing.assert_allclose(v, ref_v, rtol=1e-6)
    # several inputs: (left, right, y) -> model(left, right)
    c, v = _measure_once(TwoInput(net), TripleDigits(X, y), TripleDigits(Xv, yv))
    np.testing.assert_allclose(c, ref_c, rtol=1e-6)
    # custom unpack/forward hooks
    c, v = _measure_once(
        net, DictDigits(X, y), DictDigits(Xv, yv),
        unpack=lambda b: ((b["pixels"][:, :32], b["pixels"][:, 32:]), b["label"]),
        forward=lambda m, inp: m(torch.cat(inp, dim=1)))
    np.testing.assert_allclose(c, ref_c, rtol=1e-6)
    np.testing.assert_allclose(v, ref_v, rtol=1e-6)


class TargetsDigits(PlainDigits):
    """A map-style dataset that keeps its labels in ``targets`` (torchvision's convention)."""

    @property
    def targets(self):
        return self.y.tolist()


def test_the_probe_is_stratified_when_the_labels_are_readable(digits):
    Xtr, ytr, Xva, yva = digits
    X, y = Xtr[:400], ytr[:400]
    expect = np.sort(probe_permutation(0, 400, class_strata(y.numpy()))[:120])
    forms = {
        "tensors": ((X, y), {}, 10),
        "torchvision-style targets": (TargetsDigits(X, y), {}, 10),
        "map-style, labels only inside items": (PlainDigits(X, y), {}, None),
        "custom unpacking": ((X, y), {"unpack": lambda b: (b[0], b[1])}, None),
        "regression target": ((X, X[:, :1]), {}, None),
    }
    for name, (data, kw, strata) in forms.items():
        lf = nn.MSELoss() if name == "regression target" else nn.CrossEntropyLoss()
        net = nn.Linear(64, 1) if name == "regression target" else mlp(hidden=16)
        lens = LossLens(net, lf, train_data=data, store=None, probe_size=120, **kw)
        lens.step(torch.tensor(1.0), batch_size=40)
        lens.end_epoch()
        assert lens.run.meta["probe_strata"] == strata, name
        probe_fact = dict(run_facts(lens.run))["probe set"]
        assert ("stratified by 10 classes" in probe_fact) == bool(strata), probe_fact
        if strata:
            np.testing.assert_array_equal(lens.probe_indices, expect, err_msg=name)
        else:
            np.testing.assert_array_equal(lens.probe_indices, np.sort(probe_permutation(0, 400)[:120]), err_msg=name)
        # every class in proportion: 120 of 400 is 30 %, within one sample per class
        if strata:
            got = np.bincount(y.numpy()[lens.probe_indices], minlength=10)
            assert np.abs(got - 0.3 * np.bincount(y.numpy(), minlength=10)).max() < 2


def test_train_mode_pass_uses_the_training_batch_only_where_batch_statistics_can_matter(digits):
    """Dropout-only torch.nn models: the train-mode pass in eval-sized batches (cheaper); batch norm or a user module
    keeps the training batch size, and T stays the train-mode loss of each sample."""
    Xtr, ytr, Xva, yva = digits
    X, y = Xtr[:600], ytr[:600]
    cases = {"dropout only": (mlp(dropout=0.5, hidden=32), 256),
             "batch norm": (mlp(dropout=0.5, bn=True, hidden=32), 20),
             # a user-defined module: losslens cannot know how it behaves in train mode
             "user module": (KwModel(mlp(dropout=0.5, hidden=32)), 20)}
    for name, (net, expect) in cases.items():
        sizes = []
        first = next(m for m in net.modules() if isinstance(m, nn.Linear))
        first.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]) if m.training else None)
        lens = LossLens(net, nn.CrossEntropyLoss(), train_data=(X, y), store=None, probe_size=512,
                        eval_batch_size=256)
        net.train()
        for i in range(0, 600, 20):
            lens.step(torch.tensor(1.0), batch_size=20)
        sizes.clear()
        ep = lens.end_epoch()
        assert max(sizes) == expect, (name, sizes)
        t, c = ep.get(TRAIN_MODE), ep.get(EVAL_CLEAN)
        assert t is not None and t.n == 512 and t.mean > c.mean    # dropout 0.5 raises the loss


def test_bad_arguments_name_the_argument(digits, tmp_path):
    Xtr, ytr, Xva, yva = digits
    net = mlp()
    ce = nn.CrossEntropyLoss()
    probe = (Xtr[:100], ytr[:100])
    cases = [
        (TypeError, "model", lambda: LossLens("net", ce, probe, store=None)),
        (TypeError, "loss_fn", lambda: LossLens(net, 3, probe, store=None)),
        (TypeError, "train_data", lambda: LossLens(net, ce, 42, store=None)),
        (ValueError, "train_data", lambda: LossLens(net, ce, (Xtr[:100], ytr[:99]), store=None)),
        (ValueError, "train_data", lambda: LossLens(net, ce, (Xtr[:0], ytr[:0]), store=None)),
        (ValueError, "train_augmented", lambda: LossLens(net, ce, probe, train_augmented=(Xtr[:90], ytr[:90]),
                                                         store=None)),
        (TypeError, "probe= and train_data= both", lambda: LossLens(net, ce, probe, probe=probe, store=None)),
        (TypeError, "unexpected keyword argument 'valid'", lambda: LossLens(net, ce, probe, valid=1, store=None)),
        (TypeError, "val_data", lambda: LossLens(net, ce, probe, val_data={"x": 1}, store=None)),
        (TypeError, "train_data", lambda: LossLens(net, ce, _NoTarget(), store=None)),
        (ValueError, "probe_size", lambda: LossLens(net, ce, probe, probe_size="most", store=None)),
        (ValueError, "probe_size", lambda: LossLens(net, ce, probe, probe_size=-1, store=None)),
        (ValueError, "probe_budget", lambda: LossLens(net, ce, probe, probe_budget=0, store=None)),
        (TypeError, "penalty", lambda: LossLens(net, ce, probe, penalty="l2", store=None)),
        (TypeError, "optimizer", lambda: LossLens(net, ce, probe, optimizer="sgd", store=None)),
        (ValueError, "eval_batch_size", lambda: LossLens(net, ce, probe, eval_batch_size=0, store=None)),
        (TypeError, "store", lambda: LossLens(net, ce, probe, store=12)),
        (ValueError, "run", lambda: LossLens(net, ce, probe, run="", store=None)),
        (TypeError, "meta", lambda: LossLens(net, ce, probe, meta={"model": net}, store=None)),
    ]
    for exc, word, make in cases:
        with pytest.raises(exc, match=word):
            make()
    it = _Stream()
    with pytest.raises(TypeError, match="val.*iterable"):
        LossLens(net, ce, probe, val_data=it, store=None)
    lens = LossLens(net, ce, probe, store=None)
    with pytest.raises(ValueError, match="loss"):
        lens.step(torch.ones(3))
    with pytest.raises(ValueError, match="batch_size"):
        lens.step(torch.tensor(1.0), batch_size=0)
    with pytest.raises(ValueError, match="penalty"):
        lens.step(torch.tensor(1.0), penalty=torch.ones(2))


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([])


class _NoTarget(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"pixels": torch.zeros(64)}


# ------------------------------------------------------------------------------------------------
def test_store_round_trip_equals_lens_run(digits, tmp_path):
    Xtr, ytr, Xva, yva = digits
    model = mlp(dropout=0.3, bn=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    Xtr, ytr = Xtr[:400], ytr[:400]
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), train_augmented=NoisyDigits(Xtr, ytr),
                    val_data=(Xva, yva), run="roundtrip", store=tmp_path / "rt.db", experiment="exp", seed=3,
                    optimizer=opt, meta={"note": "round trip"})
    for _ in range(2):
        for i in range(0, 400, 64):
            opt.zero_grad()
            loss = F.cross_entropy(model(Xtr[i:i + 64]), ytr[i:i + 64])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(ytr[i:i + 64]))
        lens.end_epoch(metrics={"lr": opt.param_groups[0]["lr"], "acc": torch.tensor(0.5)})
    lens.finish()
    with Store(tmp_path / "rt.db") as store:
        stored = store.load_run(lens.run.id)
    run = lens.run
    assert (stored.name, stored.experiment, stored.status) == ("roundtrip", "exp", "finished")
    assert stored.meta == run.meta
    assert stored.meta["weight_decay"] == 0.05 and stored.meta["optimizer"] == "AdamW"
    assert stored.meta["batch_size"] == 64 and stored.meta["seed"] == 3 and stored.meta["note"] == "round trip"
    assert len(stored.epochs) == len(run.epochs) == 2
    for a, b in zip(stored.epochs, run.epochs):
        assert (a.index, a.n_steps, a.n_samples, a.position, a.metrics) == (b.index, b.n_steps, b.n_samples,
                                                                            b.position, b.metrics)
        assert a.train_loss == b.train_loss and a.penalty == b.penalty and a.seconds == b.seconds
        assert set(a.measurements) == set(b.measurements) == set((TRAIN_MODE, EVAL_AUGMENTED, EVAL_CLEAN,
                                                                  VALIDATION))
        for k in a.measurements:
            ma, mb = a.measurements[k], b.measurements[k]
            assert (ma.mean, ma.sem, ma.n, ma.source) == (mb.mean, mb.sem, mb.n, mb.source)
            np.testing.assert_array_equal(ma.values, mb.values)
    for col in stored.steps.COLUMNS:
        np.testing.assert_array_equal(getattr(stored.steps, col), getattr(run.steps, col))
    # positions are batch centres in fractional epochs
    pos = run.steps.for_epoch(1).position
    assert pos[0] == pytest.approx(1 + 32 / 400) and pos[-1] == pytest.approx(1 + (384 + 8) / 400)


# ------------------------------------------------------------------------------------------------
def test_per_sample_losses_from_modules_functionals_and_plain_callables(digits):
    Xtr, ytr, _, _ = digits
    X = Xtr[:300]
    torch.manual_seed(0)
    reg = nn.Linear(64, 3)
    Y = torch.randn(300, 3)
    # MSE with several outputs: per sample = mean over outputs; baseline = mean target variance
    lens = LossLens(reg, nn.MSELoss(), train_data=(X, Y), store=None, probe_size="all")
    lens.step(torch.tensor(0.0))
    ep = lens.end_epoch()
    with torch.no_grad():
        expect = ((reg(X) - Y) ** 2).mean(dim=1).numpy()
    np.testing.assert_allclose(ep.get(EVAL_CLEAN).values, expect, rtol=1e-5)
    assert lens.run.meta["loss_kind"] == "mse"
    assert lens.run.meta["baseline_loss"] == pytest.approx(float(Y.var(dim=0, unbiased=False).mean()), rel=1e-6)
    assert lens.run.meta["per_sample_loss_check"]["consistent"] is True

    net = mlp(hidden=16)
    with torch.no_grad():
        ce = F.cross_entropy(net(X), ytr[:300], reduction="none").numpy()
    prior = np.bincount(ytr[:300].numpy(), minlength=10) / 300
    # functional with reduction=
    lens = LossLens(net, F.cross_entropy, train_data=(X, ytr[:300]), store=None, probe_size="all")
    lens.step(torch.tensor(0.0))
    np.testing.assert_allclose(lens.end_epoch().get(EVAL_CLEAN).values, ce, rtol=1e-5)
    assert lens.run.meta["loss_kind"] == "cross_entropy" and lens.run.meta["per_sample_method"] == "reduction=none"
    assert lens.run.meta["baseline_loss"] == pytest.approx(-np.sum(prior[prior > 0] * np.log(prior[prior > 0])))
    # a plain callable without reduction: per-sample calls, with one warning
    lens = LossLens(net, lambda out, y: F.cross_entropy(out, y), train_data=(X, ytr[:300]), store=None,
                    probe_size="all")
    lens.step(torch.tensor(0.0))
    with pytest.warns(UserWarning, match="one sample at a time"):
        ep = lens.end_epoch()
    np.testing.assert_allclose(ep.get(EVAL_CLEAN).values, ce, rtol=1e-5)
    # class weights: the per-sample mean is not the weighted mean; warned and recorded
    w = torch.linspace(0.2, 3.0, 10)
    lens = LossLens(net, nn.CrossEntropyLoss(weight=w), train_data=(X, ytr[:300]), store=None, probe_size="all")
    lens.step(torch.tensor(0.0))
    with pytest.warns(UserWarning, match="differs"):
        lens.end_epoch()
    assert lens.run.meta["per_sample_loss_check"]["consistent"] is False


def test_penalty_callable_constant_and_per_step(digits):
    Xtr, ytr, _, _ = digits
    X, y = Xtr[:256], ytr[:256]
    for mode in ("callable", "constant"):
        model = mlp(hidden=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def l2(m):
            return 1e-3 * sum((p ** 2).sum() for p in m.parameters())

        pen_arg = l2 if mode == "callable" else 0.25
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), store=None, penalty=pen_arg, probe_size=0)
        totals, pens = [], []
        for i in range(0, 256, 32):
            opt.zero_grad()
            data = F.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            total = data + (l2(model) if mode == "callable" else 0.25)
            total.backward()
            opt.step()
            lens.step(total, batch_size=32)
            totals.append(total.item())
            with torch.no_grad():  # the documented point: weights after this step's update
                pens.append(l2(model).item() if mode == "callable" else 0.25)
        ep = lens.end_epoch()
        assert lens.run.meta["penalty_source"] == mode
        assert ep.penalty == pytest.approx(np.mean(pens), rel=1e-6)
        assert ep.train_loss == pytest.approx(np.mean(totals) - np.mean(pens), rel=1e-6)
        np.testing.assert_allclose(lens.run.steps.penalty, pens, rtol=1e-6)
        assert EVAL_CLEAN not in ep.measurements  # probe_size=0: no probe passes
        assert "probe_size=0" in lens.run.meta["skipped"][EVAL_CLEAN]


def test_probe_size_auto_is_bounded_by_the_budget_and_fixed(digits):
    Xtr, ytr, Xva, yva = digits
    model = mlp(dropout=0.2, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva[:300], yva[:300]), store=None,
                probe_budget=1.0)
    for _ in range(2):
        for i in range(0, 1200, 16):
            opt.zero_grad()
            loss = F.cross_entropy(model(Xtr[i:i + 16]), ytr[i:i + 16])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=16)
        lens.end_epoch()
    meta = lens.run.meta
    n = meta["probe_size"]
    # 1200 samples per epoch x 1.5 probe-pass samples each x budget 1.0 / 2 passes (C, T) = 900: capped at the
    # validation size
    assert n == 300
    assert [e.get(EVAL_CLEAN).n for e in lens.run.epochs] == [n, n]
    assert "auto" in meta["probe_size_reason"] and meta["probe_budget"] == 1.0
    assert meta.get("probe_cost_per_sample_s") is None   # nothing was timed
    # a budget that binds: 0.1 x 1.5 x 1200 / 2 = 90 -> the minimum 200; 0.5 -> 450 (cap 1200 without val)
    for budget, expected in ((0.1, 200), (0.5, 450)):
        lb = LossLens(mlp(dropout=0.2, hidden=32), nn.CrossEntropyLoss(), train_data=(Xtr, ytr), store=None,
                  probe_budget=budget)
        for i in range(0, 1200, 16):
            lb.step(torch.tensor(1.0), batch_size=16)
        lb.end_epoch()
        assert lb.run.meta["probe_size"] == expected, budget
    # a tiny budget still gives the documented minimum
    lens2 = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                     probe_budget=1e-6)
    lens2.step(torch.tensor(1.0), batch_size=16)
    lens2.end_epoch()
    assert lens2.run.meta["probe_size"] == 200 and "minimum" in lens2.run.meta["probe_size_reason"]
    # "all"
    lens3 = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), store=None, probe_size="all")
    lens3.step(torch.tensor(1.0), batch_size=16)
    assert lens3.end_epoch().get(TRAIN_MODE).n == 1200


def test_model_without_dropout_or_batchnorm_skips_the_train_mode_pass(digits):
    Xtr, ytr, Xva, yva = digits
    lens = LossLens(mlp(), nn.CrossEntropyLoss(), train_data=(Xtr[:300], ytr[:300]), val_data=(Xva, yva), store=None)
    lens.step(torch.tensor(1.0), batch_size=10)
    ep = lens.end_epoch()
    assert set(ep.measurements) == {EVAL_CLEAN, VALIDATION}
    assert TRAIN_MODE in lens.run.meta["skipped"] and EVAL_AUGMENTED in lens.run.meta["skipped"]
    d = decompose(lens.run)[0]
    assert d.terms["train_mode"].status == "skipped" and d.terms["augmentation"].status == "skipped"


def test_diagnose_returns_a_report(digits):
    pytest.importorskip("losslens.report")
    from losslens.report import Report

    Xtr, ytr, Xva, yva = digits
    lens = LossLens(mlp(), nn.CrossEntropyLoss(), train_data=(Xtr[:300], ytr[:300]), val_data=(Xva, yva), store=None)
    lens.step(torch.tensor(1.0), batch_size=10)
    lens.end_epoch()
    with pytest.warns(FutureWarning, match="Report.from_run"):   # the deprecated path still works
        report = lens.diagnose()
    assert isinstance(report, Report)
    assert Report.from_run(lens).to_dict()["report"]["codes"] == report.to_dict()["report"]["codes"]
    assert "gap.decomposition" in report.to_dict()["report"]["codes"]


class _OOMAbove(nn.Module):
    """Wraps a model and raises torch.OutOfMemoryError for batches above ``limit`` (as CUDA would)."""

    def __init__(self, net, limit):
        super().__init__()
        self.net, self.limit = net, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"batch {x.shape[0]} > {self.limit}")
        return self.net(x)


def test_eval_batches_are_halved_on_out_of_memory(digits):
    Xtr, ytr, Xva, yva = digits
    net = mlp(hidden=16)
    model = _OOMAbove(net, limit=100)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                    probe_size="all")
    lens.step(torch.tensor(1.0), batch_size=10)
    ep = lens.end_epoch()
    assert lens._fw.eval_bs <= 100
    with torch.no_grad():
        np.testing.assert_allclose(ep.get(EVAL_CLEAN).values, F.cross_entropy(net(Xtr), ytr, reduction="none"),
                                   rtol=1e-5)
        np.testing.assert_allclose(ep.get(VALIDATION).values, F.cross_entropy(net(Xva), yva, reduction="none"),
                                   rtol=1e-5)


def test_frozen_batchnorm_stays_frozen_in_the_train_mode_pass(digits):
    """T uses the module flags of training: with the only batch norm frozen (eval) during training,
    the train-mode pass equals the eval-mode pass."""
    Xtr, ytr, _, _ = digits
    model = mlp(bn=True, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr[:320], ytr[:320]), store=None, probe_size="all")
    for frozen in (True, False):
        model.train()
        if frozen:
            model[1].eval()
        for i in range(0, 320, 32):
            opt.zero_grad()
            loss = F.cross_entropy(model(Xtr[i:i + 32]), ytr[i:i + 32])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=32)
        ep = lens.end_epoch()
        t, c = ep.get(TRAIN_MODE).values, ep.get(EVAL_CLEAN).values
        if frozen:
            np.testing.assert_allclose(t, c, rtol=1e-5, atol=1e-6)
            assert not model[1].training and model.training  # flags restored as the user left them
        else:
            assert np.abs(t - c).max() > 1e-3


def test_finish_and_metrics(digits, tmp_path):
    Xtr, ytr, Xva, yva = digits
    store = Store(tmp_path / "s.db")
    lens = LossLens(mlp(), nn.CrossEntropyLoss(), train_data=(Xtr[:300], ytr[:300]), val_data=(Xva, yva), store=store,
                    run="m")
    lens.step(torch.tensor(1.0), batch_size=10)
    with pytest.raises(TypeError, match="metrics"):
        lens.end_epoch(metrics={"acc": "high"})
    assert lens.end_epoch().n_steps == 1  # the bad call recorded nothing and lost nothing
    lens2 = LossLens(mlp(), nn.CrossEntropyLoss(), train_data=(Xtr[:300], ytr[:300]), val_data=(Xva, yva),
                     store=store, run="m2")
    lens2.step(torch.tensor(1.0), batch_size=10)
    lens2.end_epoch(metrics={"acc": 0.75})
    assert lens2.finish().status == "finished"
    assert [r["name"] for r in store.list_runs()] == ["m", "m2"]
    again = store.load_run("m2")
    assert again.status == "finished" and again.epochs[0].metrics == {"acc": 0.75}
    store.close()


def test_augmented_batches_are_shared_by_T_and_A_and_reproducible(digits):
    """T and A see the same augmented draw (paired), and the probe passes are seeded."""
    Xtr, ytr, _, _ = digits
    X, y = Xtr[:400], ytr[:400]

    def one_run():
        model = mlp(bn=True, hidden=32)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), train_augmented=NoisyDigits(X, y, sigma=0.8),
                        store=None, probe_size="all")
        for i in range(0, 400, 40):
            opt.zero_grad()
            loss = F.cross_entropy(model(X[i:i + 40]), y[i:i + 40])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=40)
        return lens.end_epoch()

    ep = one_run()
    t, a, c = (ep.get(k).values.astype(np.float64) for k in (TRAIN_MODE, EVAL_AUGMENTED, EVAL_CLEAN))
    # same inputs: T − A varies far less than A − C, where the noise draw itself differs from the clean input
    assert np.std(t - a) < 0.5 * np.std(a - c)
    assert np.corrcoef(t, a)[0, 1] > 0.9
    again = one_run()
    np.testing.assert_array_equal(again.get(TRAIN_MODE).values, ep.get(TRAIN_MODE).values)
    np.testing.assert_array_equal(again.get(EVAL_AUGMENTED).values, ep.get(EVAL_AUGMENTED).values)


def test_probe_size_timed_is_an_explicit_option(digits):
    """probe_size="timed" keeps the wall-clock budget (not reproducible across machines), and says so."""
    Xtr, ytr, Xva, yva = digits
    model = mlp(dropout=0.2, hidden=32)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva[:300], yva[:300]), store=None,
                probe_size="timed", probe_budget=1.0)
    for i in range(0, 1200, 16):
        lens.step(F.cross_entropy(model(Xtr[i:i + 16]), ytr[i:i + 16]).detach(), batch_size=16)
    lens.end_epoch()
    meta = lens.run.meta
    budget_n = 1.0 * lens.run.epochs[0].seconds / meta["probe_cost_per_sample_s"]
    assert meta["probe_size"] == min(300, max(200, int(budget_n)))
    assert meta["probe_size_reason"].startswith("timed: ")


def test_auto_probe_size_does_not_depend_on_machine_load(digits):
    """The same seeded run, once alone and once beside a CPU-burning process: bit-identical measurements."""
    import subprocess
    import sys

    Xtr, ytr, Xva, yva = digits

    def one_run():
        torch.manual_seed(0)
        model = mlp(dropout=0.3, hidden=32)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None)
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            for idx in torch.randperm(len(ytr), generator=g).split(32):
                opt.zero_grad()
                loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
                loss.backward()
                opt.step()
                lens.step(loss, batch_size=len(idx))
            lens.end_epoch()
        return lens.run

    quiet = one_run()
    burn = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]   # one per core
    try:
        busy = one_run()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert quiet.meta["probe_size"] == busy.meta["probe_size"]
    assert quiet.meta["probe_size_reason"] == busy.meta["probe_size_reason"]
    for eq, eb in zip(quiet.epochs, busy.epochs):
        assert set(eq.measurements) == set(eb.measurements)
        for kind in eq.measurements:
            np.testing.assert_array_equal(eq.get(kind).values, eb.get(kind).values)


def test_runs_of_one_experiment_share_the_auto_probe_set(digits, tmp_path):
    """Later runs of an experiment reuse the first run's probe size (and so its probe samples)."""
    Xtr, ytr, Xva, yva = digits
    store = Store(tmp_path / "s.db")
    metas = []
    # a budget of 0.001 gives the minimum size on its own, 1.0 the cap (the validation size)
    for seed, budget, experiment in ((0, 0.001, "mlp"), (1, 1.0, "mlp"), (2, 1.0, "other")):
        model = mlp(seed=seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run=f"seed{seed}",
                    store=store, experiment=experiment, probe_budget=budget)
        for xb, yb in torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=50):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(yb))
        lens.end_epoch()
        metas.append(lens.run.meta)
    assert metas[0]["probe_size"] < metas[2]["probe_size"] == len(yva)  # the budgets alone differ
    assert metas[1]["probe_size"] == metas[0]["probe_size"]
    assert metas[1]["probe_fingerprint"] == metas[0]["probe_fingerprint"]
    assert "first of experiment 'mlp'" in metas[1]["probe_size_reason"]
    assert store.load_run("seed1").meta["probe_size"] == metas[0]["probe_size"]


def test_with_block_finishes_the_run(digits, tmp_path):
    Xtr, ytr, Xva, yva = digits
    model = mlp(hidden=16)
    with LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr[:200], ytr[:200]), val_data=(Xva[:100], yva[:100]),
              store=tmp_path / "s.db", run="w") as lens:
        lens.step(torch.tensor(1.0), batch_size=16)
        lens.end_epoch()
    assert lens.run.status == "finished"
    with Store(tmp_path / "s.db") as s:
        assert s.load_run("w").status == "finished"
    with pytest.raises(RuntimeError):
        with LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr[:200], ytr[:200]), store=None) as lens2:
            raise RuntimeError("user code failed")
    assert lens2.run.status == "running"   # a crashed run is not reported as finished


class _BrokenAfter(torch.utils.data.Dataset):
    """A probe dataset that cannot be read from a given read on (a file that disappeared, a bad sample)."""

    def __init__(self, X, y, ok_reads):
        self.X, self.y, self.left = X, y, ok_reads

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.left -= 1
        if self.left < 0:
            raise OSError(f"sample {i}: cannot read")
        return self.X[i], self.y[i]


def test_a_failing_measurement_never_stops_training(digits, tmp_path):
    """The probe passes fail from epoch 2 on: every epoch is still recorded (no merging), training goes on."""
    Xtr, ytr, Xva, yva = digits
    model = mlp(hidden=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = _BrokenAfter(Xtr[:300], ytr[:300], ok_reads=10**9)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=probe, val_data=(Xva[:100], yva[:100]),
                    store=tmp_path / "s.db", run="broken", probe_size=100)
    for epoch in range(4):
        for i in range(0, 300, 50):
            opt.zero_grad()
            loss = F.cross_entropy(model(Xtr[i:i + 50]), ytr[i:i + 50])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=50)
        if epoch == 2:
            probe.left = 0            # from now on every read fails
        with pytest.warns(RuntimeWarning, match="training goes on") if epoch == 2 else _nullcontext():
            lens.end_epoch()
    lens.finish()
    run = Store(tmp_path / "s.db").load_run("broken")
    assert [e.index for e in run.epochs] == [0, 1, 2, 3] and all(e.n_steps == 6 for e in run.epochs)
    assert EVAL_CLEAN in run.epochs[1].measurements and not run.epochs[2].measurements
    assert [x["epoch"] for x in run.meta["measurement_errors"]] == [2, 3]
    assert "cannot read" in run.meta["measurement_errors"][0]["error"]
    assert diagnose(run).get("recording.measurement_failed") is not None


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_a_failed_store_write_is_retried_and_never_merges_epochs(digits, tmp_path, monkeypatch):
    """The store refuses two writes (as a full disk does): training goes on, the epochs keep their own steps,
    and every epoch reaches the store once it accepts writes again."""
    import sqlite3

    Xtr, ytr, Xva, yva = digits
    model = mlp(hidden=16)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr[:200], ytr[:200]), val_data=(Xva[:100], yva[:100]),
                store=tmp_path / "s.db", run="disk", probe_size=50)
    real = lens._store.append_epoch
    fails = {"left": 0}

    def flaky(*a, **k):
        if fails["left"] > 0:
            fails["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real(*a, **k)

    monkeypatch.setattr(lens._store, "append_epoch", flaky)
    for epoch in range(4):
        for _ in range(8):
            lens.step(torch.tensor(1.0), batch_size=25)
        if epoch == 1:
            fails["left"] = 2            # the writes of epoch 1, then its retry at epoch 2, fail
            with pytest.warns(RuntimeWarning, match="disk is full"):
                lens.end_epoch()
        elif epoch == 2:
            with pytest.warns(RuntimeWarning, match="retried"):
                lens.end_epoch()
        else:
            lens.end_epoch()
    assert [(e.index, e.n_steps) for e in lens.run.epochs] == [(0, 8), (1, 8), (2, 8), (3, 8)]
    lens.finish()
    with Store(tmp_path / "s.db") as s:
        run = s.load_run("disk")
    assert [(e.index, e.n_steps) for e in run.epochs] == [(0, 8), (1, 8), (2, 8), (3, 8)]
    assert run.status == "finished" and len(run.steps) == 32


def test_a_store_that_stays_unwritable_is_reported_at_finish(digits, tmp_path, monkeypatch):
    import sqlite3

    from losslens.store import StoreError

    Xtr, ytr, _, _ = digits
    lens = LossLens(mlp(hidden=16), nn.CrossEntropyLoss(), train_data=(Xtr[:200], ytr[:200]), store=tmp_path / "s.db",
                run="full", probe_size=50)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(lens._store, "append_epoch", full)
    lens.step(torch.tensor(1.0), batch_size=25)
    with pytest.warns(RuntimeWarning):
        lens.end_epoch()
    with pytest.raises(StoreError, match="s.db"):
        lens.finish()
    assert len(lens.run.epochs) == 1 and lens.run.status != "finished"


def test_state_dict_resumes_the_stored_run_in_a_new_process(digits, tmp_path):
    """A plain loop checkpoints lens.state_dict() with the model, optimizer and RNG; a process restarted from the
    checkpoint continues the same stored run: epochs after the checkpoint are recorded again, and with the RNG
    restored every number equals an uninterrupted run's."""
    Xtr, ytr, Xva, yva = digits
    store = tmp_path / "runs.db"

    def make(name, resume=None):
        model = mlp(dropout=0.3, bn=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run=name,
                        store=store, probe_size=300, resume=resume)
        return model, opt, lens

    def epoch(model, opt, lens, e):
        model.train()
        g = torch.Generator().manual_seed(100 + e)
        order = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 100):
            idx = order[i:i + 100]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(idx))
        lens.end_epoch()

    torch.manual_seed(0)
    model, opt, lens = make("interrupted")
    for e in range(2):
        epoch(model, opt, lens, e)
    ckpt = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
            "rng": torch.random.get_rng_state(), "lens": lens.state_dict()}
    assert ckpt["lens"] == {"run_id": lens.run.id, "epochs": 2}
    epoch(model, opt, lens, 2)               # recorded, then the process "dies" without finish()
    del model, opt, lens

    model, opt, lens = make("ignored name", resume=ckpt["lens"])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    torch.random.set_rng_state(ckpt["rng"])
    assert [e.index for e in lens.run.epochs] == [0, 1] and lens.run.name == "interrupted"
    for e in range(2, 4):
        epoch(model, opt, lens, e)
    lens.finish()

    torch.manual_seed(0)
    model, opt, ref = make("straight")
    for e in range(4):
        epoch(model, opt, ref, e)
    ref.finish()
    with Store(store) as st:
        assert [r["name"] for r in st.list_runs()] == ["interrupted", "straight"]
        run = st.load_run("interrupted")
    assert [e.index for e in run.epochs] == [0, 1, 2, 3] and run.status == "finished"
    assert len(run.steps) == len(ref.run.steps)
    for a, b in zip(run.epochs, ref.run.epochs):
        assert a.train_loss == b.train_loss
        for kind in ("validation", "eval_clean", "train_mode"):
            np.testing.assert_array_equal(a.get(kind).values, b.get(kind).values)


@pytest.mark.parametrize("shape, batch, expected", [((3, 32, 32), 16, 16), ((40,), 16, 204), ((3, 32, 32), 300, 300)])
def test_default_eval_batch_follows_the_training_batch_and_the_input_size(shape, batch, expected):
    """On CPU the eval-mode batch is the training batch size, or more samples while their inputs fit in 32 KiB (a CNN
    on 32x32x3 images evaluates in its training batches, an MLP on 40 features in batches of 204); the values do
    not depend on it beyond float rounding."""
    from losslens.recording.probe import default_eval_batch_size

    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, *shape, generator=g)
    y = torch.randint(0, 3, (600,), generator=g)
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 3))
    lens = LossLens(net, nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=(X[400:], y[400:]),
                    store=None)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for i in range(0, 400, batch):
        loss = F.cross_entropy(net(X[i:i + batch]), y[i:i + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        lens.step(loss, batch_size=len(y[i:i + batch]))
    lens.end_epoch()
    assert lens._fw.eval_bs == expected == default_eval_batch_size(batch, X[0].numel() * 4)
    assert lens.run.meta["eval_batch_size"] == expected
    with torch.no_grad():
        exact = F.cross_entropy(net(X[400:]), y[400:], reduction="none").numpy()
    np.testing.assert_allclose(lens.run.epochs[0].get("validation").values, exact, rtol=1e-5, atol=1e-6)
    assert default_eval_batch_size(64, 1) == 2048 and default_eval_batch_size(4096, 10 ** 9) == 4096


def test_a_validation_loader_sets_the_eval_batch_on_cpu(tmp_path):
    """With ``val_data=`` a DataLoader, the eval-mode passes (validation and C) run in its batches, as the user's own
    validation pass did (benchmarks/overhead.py: smaller blocks than the user's make the training steps fault); the
    batch size is stored with the run, and an explicit eval_batch_size= still wins."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (600,), generator=g)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[400:], y[400:]), batch_size=96)
    seen: dict[str, list[int]] = {}
    for name, kw in (("loader", {}), ("explicit", {"eval_batch_size": 50})):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
        sizes: list[int] = []
        net.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])) if not m.training else None)
        lens = LossLens(net, nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=val_loader,
                        store=str(tmp_path / f"{name}.db"), **kw)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for i in range(0, 400, 16):
            loss = F.cross_entropy(net(X[i:i + 16]), y[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=16)
        lens.end_epoch()
        lens.finish()
        seen[name] = sizes
        with Store(tmp_path / f"{name}.db") as st:
            assert st.load_run(lens.run.name).meta["eval_batch_size"] == kw.get("eval_batch_size", 96)
        with torch.no_grad():
            exact = F.cross_entropy(net(X[400:]), y[400:], reduction="none").numpy()
        np.testing.assert_allclose(lens.run.epochs[0].get("validation").values, exact, rtol=1e-5, atol=1e-6)
    # 200 validation samples in batches of 96, then the probe's eval-mode pass in the same batches
    assert seen["loader"][:3] == [96, 96, 8] and max(seen["loader"]) == 96
    assert seen["explicit"][:4] == [50, 50, 50, 50] and max(seen["explicit"]) == 50
