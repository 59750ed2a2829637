"""Scenarios of issue 2, recorded with losslens.torch.LossLens and diagnosed.

Each scenario is a real training run on scikit-learn's digits (CPU, seeded,
about a second) built so that one cause of "validation loss below training
loss" is present and the others are small; the test asserts that the measured
decomposition and the findings name that cause.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

from losslens.diagnose import diagnose  # noqa: E402
from losslens.record import VALIDATION  # noqa: E402
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
    """Augmentation: Gaussian pixel noise (torch RNG) on every read."""

    def __init__(self, X, y, sigma):
        self.X, self.y, self.sigma = X, y, sigma

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i] + self.sigma * torch.randn(self.X.shape[1]), self.y[i]


def mlp(*sizes, dropout=0.0):
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def record(model, opt, Xtr, ytr, Xva, yva, epochs, batch_size=32, aug=None, **kw):
    """A plain loop with the four LossLossLens lines; returns (lens, diagnosis)."""
    torch.manual_seed(1)
    loader = torch.utils.data.DataLoader(aug if aug is not None else torch.utils.data.TensorDataset(Xtr, ytr),
                                         batch_size=batch_size, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    lens = LossLens(model, loss_fn, train_data=(Xtr, ytr), train_augmented=aug, val_data=(Xva, yva), store=None, **kw)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(yb))
        lens.end_epoch()
    return lens, diagnose(lens.run)


def assert_dominates(dg, name):
    """``name`` is the largest term of a positive, significant reported − validation at the last epoch."""
    d = dg.decomposition[-1]
    diff = d.reported - d.validation
    assert diff > 0
    term = d.terms[name]
    others = {n: t.value for n, t in d.terms.items() if n != name}
    assert term.significant, (name, term)
    assert term.value > max(others.values()), (name, term.value, others)
    assert term.value > 0.5 * diff, (name, term.value, diff)
    below = dg.get("gap.val_below_train")
    assert below is not None and below.data["causes"][0] == name, dg.codes()


def test_dropout_makes_the_train_mode_term_dominate(digits):
    Xtr, ytr, Xva, yva = digits
    model = mlp(64, 128, 128, 10, dropout=0.5)
    lens, dg = record(model, torch.optim.Adam(model.parameters(), 1e-3), Xtr, ytr, Xva, yva, epochs=10,
                      probe_size="all")
    assert lens.run.meta["dropout_layers"] == ["2 (Dropout)", "5 (Dropout)"]
    assert_dominates(dg, "train_mode")


def test_augmentation_without_dropout_makes_the_augmentation_term_dominate(digits):
    Xtr, ytr, Xva, yva = digits
    model = mlp(64, 128, 10)
    lens, dg = record(model, torch.optim.Adam(model.parameters(), 1e-3), Xtr, ytr, Xva, yva, epochs=8,
                      aug=NoisyDigits(Xtr, ytr, sigma=0.6), probe_size=600)
    assert dg.decomposition[-1].terms["train_mode"].status == "skipped"  # no dropout, no batch norm
    assert_dominates(dg, "augmentation")


def test_one_large_learning_rate_epoch_makes_the_timing_term_dominate(digits):
    Xtr, ytr, Xva, yva = digits
    model = mlp(64, 128, 10)
    lens, dg = record(model, torch.optim.SGD(model.parameters(), lr=0.5), Xtr, ytr, Xva, yva, epochs=1,
                      batch_size=16, probe_size=600)
    steps = lens.run.steps.loss
    assert steps[:5].mean() > 3 * steps[-5:].mean()  # it learned fast within the epoch
    assert_dominates(dg, "timing")


def test_cleaner_validation_set_is_reported_as_easier(digits):
    Xtr, ytr, Xva, yva = digits
    g = torch.Generator().manual_seed(1)
    Xc = Xtr.clone()
    Xc[::2] += torch.randn(Xc[::2].shape, generator=g)  # half the training inputs corrupted
    model = mlp(64, 128, 10)
    lens, dg = record(model, torch.optim.Adam(model.parameters(), 1e-3), Xc, ytr, Xva, yva, epochs=5,
                      probe_size=600)
    f = dg.get("gap.val_easier")
    assert f is not None, dg.codes()
    g_term = dg.decomposition[-1].terms["generalization_gap"]
    assert -g_term.value > 2 * g_term.se   # a negative generalization gap: validation is easier
    # the corrupted half of the probe carries the excess loss
    idx = lens.probe_indices
    c = lens.run.epochs[-1].get("eval_clean").values
    bad, good = c[idx % 2 == 0], c[idx % 2 == 1]
    assert bad.mean() - good.mean() > 3 * np.hypot(bad.std() / np.sqrt(bad.size), good.std() / np.sqrt(good.size))


def test_small_training_set_trained_long_is_reported_as_overfitting(digits):
    Xtr, ytr, Xva, yva = digits
    model = mlp(64, 256, 10)
    lens, dg = record(model, torch.optim.Adam(model.parameters(), 3e-3), Xtr[:60], ytr[:60], Xva, yva,
                      epochs=50, batch_size=16)
    f = dg.get("regime.overfitting")
    assert f is not None, dg.codes()
    _, v, _ = lens.run.series(VALIDATION)
    assert abs(f.data["best_epoch"] - int(np.argmin(v))) <= 2
    assert v[-1] > v.min()
