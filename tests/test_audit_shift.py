"""Group leaks, label shift and feature shift: planted in real data, and not flagged on random splits.

Cost: each audit with the feature-shift test runs one 3-fold cross-validation
of a 30-iteration gradient-boosted classifier (0.25–0.35 s of CPU on these
data sets), plus 19 permutations only when the Mann–Whitney screen passes,
which on a random split it does with probability below alpha = 0.01. The
false-alarm test therefore costs about 20 cross-validations; each planted shift
20 (observed + 19 permutations), which is the fewest that let the permutation
p-value reach 0.05.
"""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from losslens.audit import audit_split, feature_shift, group_leak, label_shift


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # 2 shared cores: BLAS/OpenMP threads spin under oversubscription (measured: 0.3 s → 11 s per fit)
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


@pytest.fixture(scope="module")
def cancer():
    return load_breast_cancer(as_frame=True).frame


def test_group_leak_found_exactly(cancer):
    df = cancer.copy()
    df["patient"] = [f"p{i // 3:03d}" for i in range(len(df))]  # 3 samples per patient
    patients = df["patient"].unique()
    rng = np.random.default_rng(0)
    val_patients = set(rng.choice(patients, 40, replace=False))
    is_val = df["patient"].isin(val_patients).to_numpy().copy()
    leaked = sorted(rng.choice(sorted(val_patients), 5, replace=False))
    # one sample of each leaked patient goes to training too
    to_train = np.array([np.nonzero(df["patient"].to_numpy() == p)[0][0] for p in leaked])
    is_val[to_train] = False
    tr, va = df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)
    res = audit_split(tr, va, labels="target", groups="patient", near=False, shift=False)
    g = res.groups
    assert g.shared == leaked and g.n_shared == 5
    expected_val = np.nonzero(va["patient"].isin(leaked).to_numpy())[0]
    assert np.array_equal(g.val_indices, expected_val) and g.n_val_samples == 10 and g.n_train_samples == 5
    f = {x.code: x for x in res.findings()}
    assert f["split.group_leak"].severity == "error" and f["split.group_leak"].data["n_shared"] == 5
    # a proper group split has no leak
    clean = group_leak(df.loc[~df["patient"].isin(val_patients), "patient"],
                       df.loc[df["patient"].isin(val_patients), "patient"])
    assert clean.n_shared == 0 and len(clean.val_indices) == 0


def test_group_keys_compared_as_strings():
    assert group_leak(np.array([1, 2, 3]), np.array(["3", "4"])).shared == ["3"]


def test_class_share_shift_flagged(digits):
    x, y = digits
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(x))
    tr, rest = idx[:1300], idx[1300:]
    # validation keeps classes 0-4 and only a third of classes 5-9
    keep = (y[rest] < 5) | (rng.random(len(rest)) < 1 / 3)
    va = rest[keep]
    ls = label_shift(y[tr], y[va])
    assert ls.flagged and ls.p_value < 1e-4 and ls.effect >= 0.1
    assert all(d > 0 for c, d in ls.largest if int(c) < 5) or ls.largest[0][1] > 0
    # by hand: chi-square of the 2 × 10 table and Cramér's V
    from scipy.stats import chi2_contingency
    table = np.stack([np.bincount(y[tr], minlength=10), np.bincount(y[va], minlength=10)])
    chi2 = chi2_contingency(table, correction=False)[0]
    assert ls.effect == pytest.approx(np.sqrt(chi2 / table.sum()))
    res = audit_split(x[tr], x[va], labels=(y[tr], y[va]), near=False, shift=False)
    assert "split.label_shift" in [f.code for f in res.findings()]


def test_continuous_target_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 800), rng.normal(0.6, 1, 200)
    ls = label_shift(a, b)
    assert ls.kind == "continuous" and ls.flagged
    assert not label_shift(a, rng.normal(0, 1, 200)).flagged


def test_feature_shift_flagged_and_feature_named(cancer):
    df = cancer.copy()
    tr, va = train_test_split(df, test_size=0.25, random_state=3)
    va = va.copy()
    va["mean texture"] += 0.75 * tr["mean texture"].std()  # a calibration offset on one sensor
    res = audit_split(tr, va, labels="target", near=False)
    fs = res.feature_shift
    assert fs.flagged and fs.auc > 0.6
    assert fs.p_permutation == pytest.approx(1 / 20) and fs.p_normal < 0.01
    assert fs.top_features[0]["name"] == "mean texture"
    codes = [f.code for f in res.findings()]
    assert "split.feature_shift" in codes and "split.label_shift" not in codes


def test_feature_shift_on_images_selection_bias(digits):
    x, y = digits
    # validation drawn from the brightest images: a selection effect on the inputs
    brightness = x.reshape(len(x), -1).mean(1)
    rng = np.random.default_rng(4)
    p = np.where(brightness > np.median(brightness), 0.35, 0.05)
    is_val = rng.random(len(x)) < p
    res = audit_split(x[~is_val], x[is_val], near=False)
    assert res.feature_shift.flagged


def test_random_splits_not_flagged(digits, cancer):
    """False-alarm rate over 20 random splits (10 of each data set) must be ≤ 5 %: at most 1 alarm."""
    x, y = digits
    alarms = []
    for seed in range(10):
        xt, xv, yt, yv = train_test_split(x, y, test_size=0.2, random_state=100 + seed)
        r = audit_split(xt, xv, labels=(yt, yv), near=False)
        alarms.append(r.label_shift.flagged or r.feature_shift.flagged)
        tr, va = train_test_split(cancer, test_size=0.2, random_state=200 + seed)
        r = audit_split(tr, va, labels="target", near=False)
        alarms.append(r.label_shift.flagged or r.feature_shift.flagged)
        assert [f.code for f in r.findings()] == ["split.clean"]
    assert sum(alarms) <= 1, f"{sum(alarms)} false alarms in 20 random splits"


def test_feature_shift_null_statistics_are_consistent():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(100, 4))
    b[:, 2] += 1.0
    fs = feature_shift(a, b, names=list("abcd"), n_permutations=9)
    assert fs.flagged is False  # 9 permutations: the permutation p-value cannot go below 0.1
    assert fs.p_permutation == pytest.approx(0.1) and len(fs.null_aucs) == 9
    assert max(fs.null_aucs) < fs.auc
    assert fs.top_features[0]["name"] == "c"
    with pytest.raises(ValueError, match="equal width"):
        feature_shift(a, b[:, :3])


def test_text_shift_features_named():
    rng = np.random.default_rng(6)
    base = ["the cat sat on the mat", "a dog ran in the park", "birds sing in the morning",
            "rain falls on the roof", "the sun is warm today"]
    tr = [base[i % 5] + f" {rng.integers(100)}" for i in range(300)]
    va = [base[i % 5] + f" {rng.integers(100)} and then the market report on stock prices"
          for i in range(100)]
    res = audit_split(tr, va, near=False)
    assert res.feature_shift.flagged
    assert any("length" in f["name"] or "stock" in f["name"] or "market" in f["name"]
               for f in res.feature_shift.top_features[:3])


def test_categorical_column_in_the_shift_classifier(cancer):
    df = cancer[["mean radius", "mean texture", "target"]].copy()
    df["site"] = np.random.default_rng(7).choice(["north", "south", "east"], len(df))
    tr, va = train_test_split(df, test_size=0.3, random_state=8)
    va = va.copy()
    va["site"] = np.where(np.random.default_rng(9).random(len(va)) < 0.8, "west", va["site"])  # a new site
    res = audit_split(tr, va, labels="target", near=False)
    fs = res.feature_shift
    assert fs.flagged and fs.top_features[0]["name"] == "site"
