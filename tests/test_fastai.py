"""fastai (issue 15): the LossLens callback on a real ``Learner`` with bundled data (scikit-learn's digits)."""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("fastai") is None and os.environ.get("CI"):
    pytest.fail("fastai is not installed; CI installs it (README's test command)", pytrace=False)
pytest.importorskip("fastai")

from fastai.basics import CrossEntropyLossFlat, DataLoaders, Learner, nn, set_seed  # noqa: E402

from losslens.diagnose import decompose, diagnose  # noqa: E402
from losslens.fastai import EMA_BETA, LossLens, per_sample_loss  # noqa: E402
from losslens.report import Report  # noqa: E402


def _learner(cbs, seed=0):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    tr = torch.utils.data.TensorDataset(x[:1200], y[:1200])
    va = torch.utils.data.TensorDataset(x[1200:], y[1200:])
    set_seed(seed)   # torch, numpy and Python's random (fastai's shuffling draws from the latter)
    dls = DataLoaders.from_dsets(tr, va, bs=64, device="cpu")
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 10))
    return Learner(dls, model, loss_func=CrossEntropyLossFlat(), cbs=cbs), (x, y)


def _fit(learn, epochs=3):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with learn.no_logging():
            learn.fit(epochs, 1e-2)


def test_a_learner_is_recorded_with_probes_beside_fastais_smoothed_train_loss():
    cb = LossLens(run="digits", store=None, probe_size=300)
    learn, (x, y) = _learner([cb])
    _fit(learn)
    run = cb.lens.run
    assert run.status == "finished" and len(run.epochs) == 3 and learn.loss_lens is cb
    # every training batch (fastai drops the last, incomplete one)
    assert len(run.steps) == 3 * (1200 // 64) and run.steps.batch_size.sum() == 3 * 1152
    model = learn.model.eval()
    with torch.no_grad():
        v = nn.functional.cross_entropy(model(x[1200:]), y[1200:], reduction="none")
        c_all = nn.functional.cross_entropy(model(x[:1200]), y[:1200], reduction="none")
    last = run.epochs[-1]
    # V equals fastai's own validation loss and a direct evaluation of the end weights
    assert last.get("validation").mean == pytest.approx(float(v.mean()), rel=1e-5)
    assert last.get("validation").mean == pytest.approx(last.metrics["fastai_valid_loss"], rel=1e-4)
    # C on the probe: its 300 samples of the exact eval-mode losses
    assert last.get("eval_clean").n == 300
    assert np.isin(np.round(last.get("eval_clean").values, 4), np.round(c_all.numpy(), 4)).all()
    assert "train_mode" in last.measurements   # dropout: T is measured
    # fastai's train_loss (EMA) is kept beside R and C, and its lag is explained in the report
    assert last.metrics["fastai_train_loss"] != pytest.approx(last.train_loss, rel=1e-6)
    assert run.meta["fastai_train_loss_lag_steps"] == pytest.approx(EMA_BETA / (1 - EMA_BETA))
    assert "moving average" in Report.from_run(cb).to_markdown() + Report.from_run(run).to_html()
    for d in decompose(run):
        assert d.total == pytest.approx(d.reported - d.validation, abs=1e-9)
    assert diagnose(run).verdict.code in ("still_improving", "converged", "overfitting", "insufficient")


def test_weights_are_bit_identical_with_and_without_the_callback():
    on, _ = _learner([LossLens(store=None, probe_size=200)])
    _fit(on, 2)
    off, _ = _learner([])   # created after the first fit: each learner starts from set_seed's state
    _fit(off, 2)
    for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values()):
        assert torch.equal(a, b)


def test_fastai_losses_become_per_sample():
    lf = per_sample_loss(CrossEntropyLossFlat())
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    np.testing.assert_allclose(lf(out, y, reduction="none").numpy(),
                               nn.functional.cross_entropy(out, y, reduction="none").numpy(), rtol=1e-6)
    assert float(lf(out, y)) == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-6)
    assert lf(out, y).shape == ()


def test_unreadable_data_records_nothing_and_the_fit_goes_on():
    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise OSError("gone")

    cb = LossLens(train_data=Unreadable(), store=None, probe_size=5)
    learn, _ = _learner([cb])
    with pytest.warns(RuntimeWarning, match=r"not recording \(OSError: train_data: reading samples .* gone"):
        with learn.no_logging():
            learn.fit(2, 1e-2)
    assert len(learn.recorder.values) == 2   # fastai trained both epochs
    assert cb.lens is None
