"""Difficulty: per-sample losses of a real (small, seeded) model trained on digits.

The model is scikit-learn's multinomial logistic regression; per-sample losses
are the cross-entropy of its predicted probabilities (loss per sample, nats).
"""

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from losslens.audit import audit_split, compare_losses
from losslens.record import EVAL_CLEAN, VALIDATION, Epoch, Measurement, Run


def _per_sample_ce(model, x, y):
    p = model.predict_proba(x.reshape(len(x), -1) / 16.0)
    return -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # 2 shared cores: BLAS/OpenMP threads spin under oversubscription (measured: 0.3 s → 11 s per fit)
    with threadpool_limits(1):
        yield


def _fit(x, y, c=0.5):
    return LogisticRegression(C=c, max_iter=300).fit(x.reshape(len(x), -1) / 16.0, y)


@pytest.fixture(scope="module")
def leaky():
    """Training labels 25 % noisy; 30 % of the validation set are copies of clean training samples.

    A regularized model (C = 0.5) does not fit the noisy labels, so the probe
    loss is high and the clean-labelled validation set is easier: the situation
    of ``gap.val_easier``.
    """
    d = load_digits()
    x, y = d.images, d.target
    rng = np.random.default_rng(0)
    p = rng.permutation(len(x))
    tr, va = p[:1400], p[1400:]
    xt, yt_true = x[tr], y[tr]
    yt = yt_true.copy()
    noisy = rng.random(len(yt)) < 0.25
    yt[noisy] = (yt[noisy] + rng.integers(1, 10, noisy.sum())) % 10
    xv, yv = x[va].copy(), y[va].copy()
    clean_train = np.nonzero(~noisy)[0]
    src = rng.choice(clean_train, 120, replace=False)
    dst = rng.choice(len(xv), 120, replace=False)
    xv[dst], yv[dst] = xt[src], yt[src]
    model = _fit(xt, yt)
    probe = rng.choice(len(xt), 400, replace=False)  # the probe set: a fixed random subset of training
    return dict(xt=xt, yt=yt, xv=xv, yv=yv, dst=dst, probe_losses=_per_sample_ce(model, xt[probe], yt[probe]),
                val_losses=_per_sample_ce(model, xv, yv))


def test_leaked_validation_is_easier_and_cited(leaky):
    res = audit_split(leaky["xt"], leaky["xv"], labels=(leaky["yt"], leaky["yv"]),
                      val_losses=leaky["val_losses"], probe_losses=leaky["probe_losses"], shift=False)
    d = res.difficulty
    assert set(res.exact.val_indices.tolist()) == set(leaky["dst"].tolist())
    assert d.val_vs_probe.below_zero and d.val_easier
    assert d.leaked_vs_clean.n_a == 120 and d.n_leaked == 120
    assert d.val_loss_clean == pytest.approx(np.delete(leaky["val_losses"], leaky["dst"]).mean(), rel=1e-6)
    f = {x.code: x for x in res.findings()}
    easier = f["split.val_easier_samples"]
    assert "split.exact_duplicates" in easier.data["causes"]
    assert easier.data["ci_high"] < 0
    assert any("leaked" in e.name for e in f["split.exact_duplicates"].evidence)


def test_label_noise_alone_makes_validation_easier_without_causes(leaky):
    keep = np.setdiff1d(np.arange(len(leaky["xv"])), leaky["dst"])
    res = audit_split(leaky["xt"], leaky["xv"][keep], val_losses=leaky["val_losses"][keep],
                      probe_losses=leaky["probe_losses"], shift=False)
    f = {x.code: x for x in res.findings()}
    assert list(f) == ["split.val_easier_samples"]
    assert f["split.val_easier_samples"].data["causes"] == []
    assert "label noise" in f["split.val_easier_samples"].recommendation


def test_memorized_leaks_have_lower_validation_loss():
    """A model that fits its training set (C = 100): leaked validation samples get the training loss."""
    d = load_digits()
    x, y = d.images, d.target
    rng = np.random.default_rng(2)
    p = rng.permutation(len(x))
    xt, yt, xv, yv = x[p[:1400]], y[p[:1400]], x[p[1400:]].copy(), y[p[1400:]].copy()
    src, dst = rng.choice(1400, 80, replace=False), rng.choice(len(xv), 80, replace=False)
    xv[dst], yv[dst] = xt[src], yt[src]
    model = _fit(xt, yt, c=100.0)
    vl = _per_sample_ce(model, xv, yv)
    res = audit_split(xt, xv, val_losses=vl, probe_losses=_per_sample_ce(model, xt[:400], yt[:400]), shift=False)
    d = res.difficulty
    assert d.leaked_vs_clean.below_zero and d.leaked_vs_clean.n_a == 80
    assert d.val_loss_clean > d.val_loss
    assert not d.val_easier  # the clean part still has an ordinary generalization gap
    f = {x.code: x for x in res.findings()}
    assert f["split.exact_duplicates"].evidence[2].value == pytest.approx(d.leaked_vs_clean.diff)


def test_random_split_is_not_easier():
    d = load_digits()
    x, y = d.images, d.target
    p = np.random.default_rng(1).permutation(len(x))
    tr, va = p[:1400], p[1400:]
    model = _fit(x[tr], y[tr])
    probe = tr[:400]
    res = audit_split(x[tr], x[va], labels=(y[tr], y[va]), val_losses=_per_sample_ce(model, x[va], y[va]),
                      probe_losses=_per_sample_ce(model, x[probe], y[probe]), shift=False)
    c = res.difficulty.val_vs_probe
    assert c.above_zero  # an ordinary generalization gap: validation harder than training
    assert not res.difficulty.val_easier
    assert res.difficulty.leaked_vs_clean is None and res.difficulty.n_leaked == 0
    assert "split.val_easier_samples" not in [f.code for f in res.findings()]


def test_losses_taken_from_a_run(leaky):
    run = Run(name="digits-logreg")
    run.epochs.append(Epoch(0, measurements={
        EVAL_CLEAN: Measurement.from_values(EVAL_CLEAN, leaky["probe_losses"]),
        VALIDATION: Measurement.from_values(VALIDATION, leaky["val_losses"])}))
    a = audit_split(leaky["xt"], leaky["xv"], run=run, near=False, shift=False)
    b = audit_split(leaky["xt"], leaky["xv"], val_losses=leaky["val_losses"], probe_losses=leaky["probe_losses"],
                    near=False, shift=False)
    assert a.difficulty.val_vs_probe.diff == pytest.approx(b.difficulty.val_vs_probe.diff)
    assert a.difficulty.epochs == (0,) and "digits-logreg" in a.difficulty.source
    f = {x.code: x for x in a.findings()}
    assert f["split.val_easier_samples"].epochs == (0,)
    with pytest.raises(ValueError, match="no epoch with per-sample validation losses"):
        audit_split(leaky["xt"], leaky["xv"], run=Run(name="empty"), near=False, shift=False)
    with pytest.raises(ValueError, match="val_losses: expected"):
        audit_split(leaky["xt"], leaky["xv"], val_losses=leaky["val_losses"][:10], near=False, shift=False)


def test_compare_losses_interval_covers_the_truth():
    """Bootstrap 95 % intervals cover the true difference of means in about 95 % of repetitions."""
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(40):
        a, b = rng.exponential(1.0, 300), rng.exponential(1.2, 500)
        c = compare_losses(a, b, n_boot=500, seed=i)
        covered += c.ci_low <= -0.2 <= c.ci_high
        assert c.se > 0 and 0 <= c.ks_p <= 1
    assert covered >= 34  # binomial(40, 0.95): P(covered < 34) ≈ 1 %
    c = compare_losses([1.0], [2.0, 3.0])
    assert c.diff == -1.5 and math.isnan(c.ci_low)
    with pytest.raises(ValueError, match="finite losses"):
        compare_losses([np.nan], [1.0])
