"""Near duplicates: planted noisy and shifted copies in real data, recall and false pairs.

Noise levels: digits pixels are 0–16 with a per-pixel standard deviation of
about 6; σ = 0.5 (3 % of the range) is "small noise". Breast-cancer rows get
1 % of each feature's standard deviation. One-pixel shifts move an 8×8 digit
by one pixel in each of the 8 directions with zero fill (content pushed off
the canvas is lost).
"""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

from losslens.audit import audit_split, blocked_search
from losslens.audit.inputs import as_split
from losslens.audit.near import features_for_near, find_near_duplicates


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # 2 shared cores: BLAS/OpenMP threads spin under oversubscription (measured: 0.3 s → 11 s per fit)
    with threadpool_limits(1):
        yield


SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shift_image(img, dy, dx):
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h + min(-dy, 0),
                                                                    max(-dx, 0):w + min(-dx, 0)]
    return out


@pytest.fixture(scope="module")
def digits_split():
    x = load_digits().images
    p = np.random.default_rng(0).permutation(len(x))
    return x[p[360:]], x[p[:360]]


def _recall(nd, planted):
    found = {tuple(p) for p in nd.pairs.tolist()}
    return np.mean([pair in found for pair in planted])


def test_blocked_search_matches_sklearn_brute_force():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((700, 20)).astype(np.float32)
    q = rng.standard_normal((130, 20)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        d, i, pq, pb, pd_ = blocked_search(q, a, metric=metric, radius=0.5 if metric == "cosine" else 4.0,
                                           block_rows=32, block_cols=100)
        dd, ii = NearestNeighbors(n_neighbors=1, metric=metric, algorithm="brute").fit(a).kneighbors(q)
        assert np.array_equal(i, ii[:, 0])
        np.testing.assert_allclose(d, dd[:, 0], atol=1e-4)
        full = NearestNeighbors(metric=metric, algorithm="brute").fit(a).radius_neighbors(
            q, radius=0.5 if metric == "cosine" else 4.0, return_distance=False)
        expected = {(r, int(c)) for r, cols in enumerate(full) for c in cols}
        got = set(zip(pq.tolist(), pb.tolist()))
        # float32 vs float64 rounding may flip pairs lying exactly at the radius; none do here
        assert got == expected and len(got) > 0


def test_self_exclusion():
    a = np.random.default_rng(1).standard_normal((50, 5))
    d, i, *_ = blocked_search(a, a, exclude=np.arange(50), block_cols=7)
    assert (i != np.arange(50)).all() and (d > 0).all()


def test_digits_noisy_and_shifted_copies_recall(digits_split):
    xt, xv0 = digits_split
    rng = np.random.default_rng(2)
    xv = xv0.copy()
    planted = []
    src = rng.choice(len(xt), 200 + 8 * 25, replace=False)
    dst = rng.choice(len(xv), 200, replace=False)
    # 100 noisy copies (σ = 0.5) and 100 one-pixel shifts (all 8 directions)
    for k in range(100):
        xv[dst[k]] = xt[src[k]] + rng.normal(0, 0.5, (8, 8))
        planted.append((src[k], dst[k]))
    for k in range(100, 200):
        dy, dx = SHIFTS[k % 8]
        xv[dst[k]] = shift_image(xt[src[k]], dy, dx)
        planted.append((src[k], dst[k]))
    res = audit_split(xt, xv, shift=False)
    nd = res.near
    assert _recall(nd, planted[:100]) >= 0.99
    assert _recall(nd, planted[100:]) >= 0.99
    # the nearest training sample of every planted copy is its source
    assert np.mean([nd.nn_idx[v] == t for t, v in planted]) >= 0.99
    # no pair outside the planted ones (the rest of validation is a clean random split)
    clean_val = np.setdiff1d(np.arange(len(xv)), dst)
    assert not np.isin(nd.pairs[:, 1], clean_val).any()
    assert nd.n_val_near >= 198
    f = {x.code: x for x in res.findings()}
    assert "split.near_duplicates" in f and "split.exact_duplicates" not in f


def test_shift_tolerance_is_what_finds_shifts(digits_split):
    """Without the translation tolerance (max_shift=0) raw pixels miss one-pixel shifts."""
    xt, xv0 = digits_split
    xv = xv0.copy()
    planted = [(i, i) for i in range(80)]
    for i in range(80):
        xv[i] = shift_image(xt[i], *SHIFTS[i % 8])
    tr, va = as_split(xt, "train"), as_split(xv, "val")
    strict = find_near_duplicates(tr, va, max_shift=0)
    tolerant = find_near_duplicates(tr, va, max_shift=1)
    assert _recall(tolerant, planted) == 1.0
    assert _recall(strict, planted) < 0.2


def test_clean_digits_split_has_no_pairs(digits_split):
    xt, xv = digits_split
    res = audit_split(xt, xv, shift=False)
    assert res.near.n_val_near == 0 and len(res.near.pairs) == 0
    # the closest clean validation image is well outside the radius
    assert res.near.nn_dist.min() > 1.5 * res.near.radius
    assert [f.code for f in res.findings()] == ["split.clean"]


def test_breast_cancer_rows_with_small_noise():
    x = load_breast_cancer().data
    p = np.random.default_rng(4).permutation(len(x))
    xt, xv = x[p[120:]], x[p[:120]].copy()
    rng = np.random.default_rng(5)
    src = rng.choice(len(xt), 40, replace=False)
    xv[:40] = xt[src] + rng.normal(0, 0.01, (40, x.shape[1])) * xt.std(axis=0)
    res = audit_split(xt, xv, shift=False)
    planted = list(zip(src.tolist(), range(40)))
    assert _recall(res.near, planted) >= 0.99
    assert set(res.near.pairs[:, 1].tolist()) <= set(range(40))  # no false pair among the 80 clean rows


def test_embeddings_are_used_when_given(digits_split):
    xt, xv = digits_split
    rng = np.random.default_rng(6)
    et = rng.standard_normal((len(xt), 16)).astype(np.float32)
    ev = rng.standard_normal((len(xv), 16)).astype(np.float32)
    ev[3] = et[11] * 1.5  # same direction: cosine distance 0
    res = audit_split(xt, xv, embeddings=(et, ev), shift=False)
    assert "embeddings" in res.near.feature_space
    assert {tuple(p) for p in res.near.pairs.tolist()} == {(11, 3)}
    with pytest.raises(ValueError, match="embeddings for val"):
        audit_split(xt, xv, embeddings=(et, ev[:5]), shift=False)


def _sentences(n, seed):
    rng = np.random.default_rng(seed)
    syl = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "vi", "se", "du", "ga", "re", "fo", "bi", "zu"]
    words = ["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(300)]
    return [" ".join(rng.choice(words, size=rng.integers(8, 16))).capitalize() + "." for _ in range(n)], words


def test_text_near_duplicates():
    texts, words = _sentences(1500, 7)
    tr, va = texts[:1200], list(texts[1200:])
    rng = np.random.default_rng(8)
    for i in range(50):  # punctuation edits: not removed by the exact-duplicate normalization
        s = tr[i]
        va[i] = s[:-1] + "!" if i % 2 else s.replace(" ", ", ", 1)
    for i in range(50, 100):  # one-character transposition
        s = tr[i]
        j = int(rng.integers(1, len(s) - 2))
        va[i] = s[:j] + s[j + 1] + s[j] + s[j + 2:]
    res = audit_split(tr, va, shift=False)
    punct = [(i, i) for i in range(50)]
    typos = [(i, i) for i in range(50, 100)]
    assert res.exact.n_pairs == 0
    assert _recall(res.near, punct) >= 0.99
    assert set(res.near.pairs[:, 1].tolist()) <= set(range(100))
    # cleanlab's 0.13 catches about half of the transpositions (measured); 0.35 catches them all
    default_recall = _recall(res.near, typos)
    assert 0.2 < default_recall < 0.9
    loose = audit_split(tr, va, shift=False, near_threshold=0.35)
    assert _recall(loose.near, typos) >= 0.99
    assert set(loose.near.pairs[:, 1].tolist()) <= set(range(100))


def test_feature_space_choices():
    tr = as_split(np.zeros((5, 3, 40, 40)), "train")
    va = as_split(np.zeros((2, 3, 40, 40)), "val")
    sp = features_for_near(tr, va)
    assert tr.data.shape == (5, 40, 40, 3)
    assert len(sp.views) == 9 and "pooled to 20×20" in sp.description
    tr2 = as_split(np.ones((5, 3)), "train")
    va2 = as_split(np.ones((2, 3)), "val")
    assert features_for_near(tr2, va2).metric == "euclidean"  # cleanlab: euclidean for ≤ 3 dimensions


def test_faiss_backend_agrees_with_numpy():
    pytest.importorskip("faiss")
    from losslens.audit.near import near_duplicates

    rng = np.random.default_rng(9)
    a = rng.standard_normal((5000, 32)).astype(np.float32)
    b = rng.standard_normal((800, 32)).astype(np.float32)
    b[:30] = a[:30] + 0.01 * rng.standard_normal((30, 32)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        r1 = near_duplicates(embeddings=(a, b), metric=metric, backend="numpy")
        r2 = near_duplicates(embeddings=(a, b), metric=metric, backend="faiss")
        assert r2.backend == "faiss" and np.array_equal(r1.nn_idx, r2.nn_idx)
        assert {tuple(p) for p in r1.pairs.tolist()} == {tuple(p) for p in r2.pairs.tolist()} == {
            (i, i) for i in range(30)}
