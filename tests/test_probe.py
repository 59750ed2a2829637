"""The probe set's design: a seeded order, stratified by class when the training labels are readable
(losslens.recording.probe.probe_permutation, class_strata; ProbePlan)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from losslens.recording import ProbePlan
from losslens.recording.probe import STRATA_MAX, class_strata, probe_permutation


def _labels(n: int = 3000, seed: int = 5) -> np.ndarray:
    y = np.random.default_rng(seed).integers(0, 4, n)
    y[: n // 10] = 7          # an imbalanced fifth class
    return y


def test_stratified_order_is_a_nested_permutation_with_every_prefix_in_proportion():
    y = _labels()
    codes = class_strata(y)
    assert codes is not None
    counts = np.bincount(codes)
    for seed in range(10):
        order = probe_permutation(seed, y.size, codes)
        assert np.array_equal(np.sort(order), np.arange(y.size))
        np.testing.assert_array_equal(order, probe_permutation(seed, y.size, codes))   # deterministic
        for m in (1, 5, 37, 200, 1111, y.size - 1):
            got = np.bincount(codes[order[:m]], minlength=counts.size)
            assert np.abs(got - m * counts / y.size).max() < 2, (seed, m, got)
    # without strata: the plain seeded permutation, as before
    np.testing.assert_array_equal(probe_permutation(3, 50), np.random.default_rng(3).permutation(50))


def test_every_sample_keeps_the_same_inclusion_probability():
    """Unbiased probe means: each sample is in a probe of n with probability n / N, whatever its class."""
    y = _labels(1000)
    codes = class_strata(y)
    n, draws = 100, 3000
    hits = np.zeros(y.size)
    for seed in range(draws):
        hits[probe_permutation(seed, y.size, codes)[:n]] += 1
    p = hits / draws
    for k in np.unique(codes):
        # class means of the inclusion rate within 4 binomial standard errors of n / N
        se = math.sqrt(0.1 * 0.9 / draws / np.sum(codes == k))
        assert abs(p[codes == k].mean() - 0.1) < 4 * se + 1e-3, k
    assert abs(p.mean() - 0.1) < 1e-12


def _coverage_and_error(losses: np.ndarray, strata: np.ndarray | None, n: int, draws: int) -> tuple[float, float]:
    full = losses.mean()
    z = []
    for seed in range(draws):
        s = losses[probe_permutation(seed, losses.size, strata)[:n]]
        z.append((s.mean() - full) / (s.std(ddof=1) / math.sqrt(n)))
    z = np.asarray(z)
    return float(np.mean(np.abs(z) <= 2)), float(np.sqrt(np.mean(z ** 2)))


def test_stratifying_removes_the_between_class_error_and_keeps_the_standard_error_honest():
    rng = np.random.default_rng(0)
    y = _labels(4000)
    codes = class_strata(y)
    # per-sample losses that depend on the class (as a trained classifier's do), plus skewed noise
    class_loss = np.array([0.2, 0.5, 0.1, 0.9, 1.6])
    losses = class_loss[codes] + rng.exponential(0.05, y.size)
    cov_srs, rms_srs = _coverage_and_error(losses, None, 200, 1500)
    cov_str, rms_str = _coverage_and_error(losses, codes, 200, 1500)
    assert 0.93 <= cov_srs <= 0.975          # a simple random probe: about the nominal 95 %
    assert cov_str >= 0.99                   # stratified: the SRS standard error is conservative
    assert rms_str < 0.3 * rms_srs           # the probe's actual error shrinks
    # losses that do not depend on the class: stratifying neither helps nor hurts (no false precision)
    noise = rng.exponential(0.5, y.size)
    cov_noise, rms_noise = _coverage_and_error(noise, codes, 200, 1500)
    assert 0.93 <= cov_noise <= 0.975
    assert 0.85 <= rms_noise <= 1.15


@pytest.mark.parametrize("targets,classes", [
    (np.array([0, 1, 2, 1, 0, 2, 1, 0]), 3),
    (np.array([[1], [0], [1], [0], [0], [1]]), 2),                       # Keras (n, 1)
    (np.eye(3)[[0, 1, 2, 2, 1, 0, 0]], 3),                                 # one-hot rows
    (np.array([3.0, 5.0, 3.0, 5.0, 5.0]), 2),                             # integer-valued floats
    (np.array([True, False, True, False]), 2),
])
def test_class_labels_give_strata(targets, classes):
    codes = class_strata(targets)
    assert codes is not None and codes.shape == (len(targets),) and codes.max() + 1 == classes


@pytest.mark.parametrize("targets", [
    np.linspace(0, 1, 50),                                   # regression
    np.zeros(20, dtype=np.int64),                            # one class
    np.arange(40),                                           # as many classes as samples
    np.random.default_rng(0).integers(0, 9, (30, 8)),        # token labels
    np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]),          # soft labels
    np.array(["a", "b", "a", "b"]),
    np.array([1.0, np.nan, 1.0, 0.0]),
    None,
])
def test_other_targets_give_a_simple_random_probe(targets):
    assert class_strata(targets) is None


def test_too_many_classes_give_a_simple_random_probe():
    n = 4 * (STRATA_MAX + 1)
    assert class_strata(np.arange(n) % (STRATA_MAX + 1)) is None
    assert class_strata(np.arange(n) % STRATA_MAX) is not None


def test_bad_strata_are_refused_by_name():
    with pytest.raises(ValueError, match="strata"):
        probe_permutation(0, 5, np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="strata"):
        probe_permutation(0, 3, np.array([0.5, 1.0, 0.0]))


def test_a_plan_records_its_design_and_a_resumed_simple_random_run_keeps_it():
    y = _labels(500)
    codes = class_strata(y)
    meta: dict = {}
    plan = ProbePlan(50, 0.03, 1, y.size, None, codes)
    idx = plan.fix(50, "test", meta)
    assert meta["probe_strata"] == 5
    np.testing.assert_array_equal(idx, np.sort(probe_permutation(1, y.size, codes)[:50]))
    # a run recorded before probes were stratified: no probe_strata in its metadata
    old = {"probe_size": 50, "probe_size_reason": "test"}
    again = ProbePlan(50, 0.03, 1, y.size, None, codes)
    again.match_design(old)
    np.testing.assert_array_equal(again.fix(50, "test", old), np.sort(probe_permutation(1, y.size)[:50]))
    assert old["probe_strata"] is None
    # strata of the wrong length (a different training set) are not used
    assert ProbePlan(50, 0.03, 1, y.size + 1, None, codes).n_strata is None


def test_exact_duplicates_and_fingerprints_are_found_across_hashing_chunks():
    """The setup hashes a few MiB of rows at a time (losslens.recording.duplicates.canonical_row_hashes, the
    fingerprints likewise): planted duplicates in different chunks, -0.0 against 0.0 and NaN against NaN, are all
    found, and the per-row hashes do not depend on the chunking."""
    from losslens.recording import duplicates as dup
    from losslens.recording import fingerprint as fp
    from losslens.recording.duplicates import array_duplicates

    rng = np.random.default_rng(0)
    train = rng.normal(size=(3000, 512)).astype(np.float32)       # 2 KiB rows: several 4 MiB chunks
    val = rng.normal(size=(400, 512)).astype(np.float32)
    planted = {0: 5, 1: 2047, 2: 2999, 3: 1500}                    # val row -> train row, across chunks
    for v, t in planted.items():
        val[v] = train[t]
    train[1500, 7], val[3, 7] = 0.0, -0.0                          # equal values, different bits
    train[2999, 0] = val[2, 0] = np.nan
    res = array_duplicates(train, val)
    assert sorted(map(tuple, res.pairs.tolist())) == sorted((t, v) for v, t in planted.items())
    # the same hashes as one whole-array pass (the chunk size only bounds memory)
    whole = dup.row_hashes(dup.canonical_numbers(train, np.dtype(np.float32)), lanes=1)
    np.testing.assert_array_equal(dup.canonical_row_hashes(train, np.dtype(np.float32)), whole)
    small = fp.sample_hashes((train, np.arange(3000)))
    old = fp._CHUNK_BYTES
    try:
        fp._CHUNK_BYTES = 1 << 40
        np.testing.assert_array_equal(fp.sample_hashes((train, np.arange(3000))), small)
    finally:
        fp._CHUNK_BYTES = old
