"""The timing correction without probes (losslens.diagnose.timing)."""

import math

import numpy as np
import pytest

from losslens.diagnose import decompose
from losslens.diagnose.timing import (
    add_end_of_epoch_estimates,
    end_estimate_from_points,
    robust_line_at,
)
from losslens.importers.fastai import ema_lag
from losslens.record import END_OF_EPOCH_ESTIMATE, VALIDATION, Epoch, Measurement, Run, Steps


def test_robust_line_recovers_a_line_despite_spikes_and_its_error_is_calibrated():
    rng = np.random.default_rng(1)
    x = np.linspace(0.005, 0.995, 100)
    est, se = [], []
    for _ in range(200):
        y = 2.0 - 0.5 * x + rng.normal(0, 0.1, x.size)
        y[rng.integers(0, x.size, 3)] += 5.0  # loss spikes
        e, s = robust_line_at(x, y, 1.0)
        est.append(e)
        se.append(s)
    est, se = np.array(est), np.array(se)
    assert abs(est.mean() - 1.5) < 0.01
    # the reported standard error matches the spread of the estimates within 25 %
    assert 0.75 < se.mean() / est.std() < 1.25
    # ordinary least squares would be pulled up by the spikes
    y = 2.0 - 0.5 * x
    y[50] += 50.0
    b, a = np.polyfit(x, y, 1)
    assert a + b > 1.9
    assert abs(robust_line_at(x, y, 1.0)[0] - 1.5) < 1e-3


def test_robust_line_needs_three_points_and_spread():
    assert all(math.isnan(v) for v in robust_line_at([0.1, 0.2], [1.0, 2.0], 1.0))
    assert all(math.isnan(v) for v in robust_line_at([0.5, 0.5, 0.5], [1.0, 2.0, 3.0], 1.0))
    e, s = robust_line_at([0.1, 0.2, np.nan, 0.3, 0.4], [1.0, 0.9, 5.0, np.inf, 0.7], 0.5)
    assert math.isfinite(e) and math.isfinite(s)


def _fastai_avg_smooth_loss(losses, beta):
    """fastai's AvgSmoothLoss: val = lerp(loss, val, beta); value = val / (1 - beta**count)."""
    val, out = 0.0, []
    for k, loss in enumerate(losses, start=1):
        val = beta * val + (1 - beta) * loss
        out.append(val / (1 - beta ** k))
    return np.array(out)


@pytest.mark.parametrize("n", [1, 2, 10, 60, 500])
def test_ema_lag_is_exact_for_a_linear_loss(n):
    beta = 0.98
    losses = 3.0 - 0.01 * np.arange(n)  # loss of step k (0-based) at time k
    ema = _fastai_avg_smooth_loss(losses, beta)[-1]
    t = (n - 1) - ema_lag(beta, n)
    assert ema == pytest.approx(3.0 - 0.01 * t, rel=1e-12)
    assert ema_lag(beta, 10 ** 6) == pytest.approx(beta / (1 - beta))


def test_ema_lag_rejects_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        ema_lag(1.0, 3)
    with pytest.raises(ValueError, match="n must be"):
        ema_lag(0.9, 0)


def test_points_rule_interpolates_between_epoch_centres():
    r = np.array([1.0, 0.6, 0.4, 0.3])
    q = np.arange(4) + 0.5
    ends = np.arange(4) + 1.0
    est, se = end_estimate_from_points(q, r, ends)
    assert est[:3] == pytest.approx([(1.0 + 0.6) / 2, (0.6 + 0.4) / 2, (0.4 + 0.3) / 2])
    assert est[3] == pytest.approx(0.3 + (0.3 - 0.4) / 2)
    # error: RMS of the secant disagreements at the interior epochs (0.2 and 0.1 per epoch), times 0.5 epoch
    assert se == pytest.approx(np.full(4, math.sqrt((0.2 ** 2 + 0.1 ** 2) / 2) * 0.5))
    # with two epochs the error is the whole correction
    e2, s2 = end_estimate_from_points([0.5, 1.5], [1.0, 0.6], [1.0, 2.0])
    assert s2 == pytest.approx(np.abs(e2 - [1.0, 0.6]))
    # a single epoch cannot be estimated
    e1, s1 = end_estimate_from_points([0.5], [1.0], [1.0])
    assert math.isnan(e1[0]) and math.isnan(s1[0])


def _train_digits(epochs=4, seed=0):
    """A small real training run (torch, CPU): per-step losses and the end-of-epoch full-training-set loss."""
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lossf = torch.nn.CrossEntropyLoss()
    bs = 32
    n = X.shape[0]
    steps_per_epoch = math.ceil(n / bs)
    step_ep, step_pos, step_loss, end_loss = [], [], [], []
    for e in range(epochs):
        perm = torch.randperm(n, generator=g)
        for k in range(steps_per_epoch):
            idx = perm[k * bs:(k + 1) * bs]
            loss = lossf(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_ep.append(e)
            step_pos.append(e + (k + 0.5) / steps_per_epoch)
            step_loss.append(loss.item())
        with torch.no_grad():
            end_loss.append(float(lossf(model(X), y)))
    return np.array(step_ep), np.array(step_pos), np.array(step_loss), np.array(end_loss)


def test_step_trend_estimates_the_measured_end_of_epoch_loss():
    ep, pos, loss, end = _train_digits()
    steps = Steps.build(ep, loss, position=pos)
    epochs = []
    for e in range(end.size):
        r = float(loss[ep == e].mean())
        v = Measurement(VALIDATION, end[e], source="imported")
        epochs.append(Epoch(e, train_loss=r, measurements={VALIDATION: v}))
    run = Run("digits", epochs=epochs, steps=steps, meta={"reported_loss_kind": "epoch_mean"}, status="imported")
    assert add_end_of_epoch_estimates(run) == "steps"
    est = np.array([e.measurements[END_OF_EPOCH_ESTIMATE].mean for e in run.epochs])
    se = np.array([e.measurements[END_OF_EPOCH_ESTIMATE].sem for e in run.epochs])
    r = np.array([e.train_loss for e in run.epochs])
    assert all(e.measurements[END_OF_EPOCH_ESTIMATE].source == "estimated" for e in run.epochs)
    # the estimate is much closer to the true end-of-epoch loss than the epoch mean is
    assert np.all(np.abs(est - end) < np.abs(r - end))
    # and it agrees with it within 3 standard errors
    assert np.all(np.abs(est - end) < 3 * se)
    # the gap decomposition separates an estimated timing term
    dec = decompose(run)
    t = dec[0].terms["timing"]
    assert t.status == "estimated" and t.value > 0 and t.significant
    assert dec[0].terms["unmeasured"].status == "not measured"


def test_means_rule_is_used_when_only_epoch_means_exist():
    ep, pos, loss, end = _train_digits(epochs=5, seed=1)
    epochs = [Epoch(e, train_loss=float(loss[ep == e].mean())) for e in range(end.size)]
    run = Run("digits", epochs=epochs, meta={"reported_loss_kind": "epoch_mean"}, status="imported")
    assert add_end_of_epoch_estimates(run) == "means"
    est = np.array([e.measurements[END_OF_EPOCH_ESTIMATE].mean for e in run.epochs])
    r = np.array([e.train_loss for e in run.epochs])
    # interpolating between epoch centres moves the value toward the true end-of-epoch loss
    assert np.all(np.abs(est[:-1] - end[:-1]) < np.abs(r[:-1] - end[:-1]))


def test_ema_is_not_estimated_without_its_placement():
    run = Run("x", epochs=[Epoch(0, train_loss=1.0), Epoch(1, train_loss=0.5)], meta={"reported_loss_kind": "ema"})
    assert add_end_of_epoch_estimates(run) == "none"
    assert not run.has(END_OF_EPOCH_ESTIMATE)
