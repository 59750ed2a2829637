"""Exact duplicates across a split, and the conversion of every input kind.

Leaks are planted in real data (scikit-learn digits and breast-cancer, generated
text) and must be recovered exactly: every planted pair, and no other pair.
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from threadpoolctl import threadpool_limits

from losslens.audit import audit_split, exact_duplicates
from losslens.audit.inputs import as_split, normalize_text


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # 2 shared cores: BLAS/OpenMP threads spin under oversubscription (measured: 0.3 s → 11 s per fit)
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images, d.target


def _split(n, n_val, seed):
    p = np.random.default_rng(seed).permutation(n)
    return p[n_val:], p[:n_val]


def _pairs_set(res):
    return {tuple(p) for p in res.pairs.tolist()}


def test_digits_planted_copies_found_exactly(digits):
    x, _ = digits
    tr, va = _split(len(x), 360, 0)
    xt, xv = x[tr].copy(), x[va].copy()
    rng = np.random.default_rng(1)
    src = rng.choice(len(xt), 40, replace=False)
    dst = rng.choice(len(xv), 40, replace=False)
    xv[dst] = xt[src]
    res = exact_duplicates(xt, xv)
    # digits itself has no duplicate images (checked: np.unique over rows), so the planted pairs are all
    assert _pairs_set(res) == set(zip(src.tolist(), dst.tolist()))
    assert res.n_val_duplicated == 40 and res.fraction_val == pytest.approx(40 / 360)
    assert sorted(res.val_indices.tolist()) == sorted(dst.tolist())


def test_clean_split_has_no_exact_pairs(digits):
    x, _ = digits
    tr, va = _split(len(x), 360, 3)
    res = exact_duplicates(x[tr], x[va])
    assert res.n_pairs == 0 and len(res.pairs) == 0 and res.n_val_duplicated == 0


def test_copies_match_across_dtypes_and_signed_zero(digits):
    x, _ = digits
    xt = x[:100].astype(np.float64)
    xv = x[100:150].astype(np.uint8)  # uint8 copy of float images: same values, other dtype
    xv[7] = xt[3].astype(np.uint8)
    res = exact_duplicates(xt, xv)
    assert _pairs_set(res) == {(3, 7)}
    a = np.array([[0.0, 1.0], [2.0, np.nan]])
    b = np.array([[-0.0, 1.0], [2.0, np.nan], [2.0, 3.0]])
    assert _pairs_set(exact_duplicates(a, b)) == {(0, 0), (1, 1)}


def test_one_value_difference_is_not_a_duplicate(digits):
    x, _ = digits
    xt = x[:50].copy()
    xv = x[:50].copy()
    xv[:, 4, 4] += 1.0  # every validation image differs from its source in one pixel
    assert exact_duplicates(xt, xv).n_pairs == 0


def test_repeated_training_copies_give_all_pairs():
    a = np.array([[1, 2], [3, 4], [1, 2], [5, 6]])
    b = np.array([[1, 2], [7, 8], [5, 6], [1, 2]])
    res = exact_duplicates(a, b)
    assert res.pairs.tolist() == [[0, 0], [2, 0], [3, 2], [0, 3], [2, 3]]
    assert res.n_val_duplicated == 3 and sorted(res.train_indices.tolist()) == [0, 2, 3]
    capped = exact_duplicates(a, b, max_pairs=2)
    assert capped.n_pairs == 5 and len(capped.pairs) == 2 and capped.truncated


def _sentences(n, seed):
    rng = np.random.default_rng(seed)
    syl = ["ka", "lo", "mi", "ne", "ru", "ta", "po", "vi", "se", "du", "ga", "re", "fo", "bi", "zu"]
    words = ["".join(rng.choice(syl, size=rng.integers(1, 4))) for _ in range(300)]
    return [" ".join(rng.choice(words, size=rng.integers(8, 16))).capitalize() + "." for _ in range(n)]


def test_text_normalized_for_case_whitespace_and_unicode():
    texts = _sentences(600, 0)
    train, val = texts[:500], list(texts[500:])
    val[0] = "  " + train[10].upper() + "  "                       # case and surrounding space
    val[1] = train[20].replace(" ", " \t  ")                        # inner whitespace
    val[2] = train[30].translate({ord(c): ord(c) + 0xFEE0 for c in "abcdefghijklmnopqrstuvwxyz"})  # full width
    val[3] = train[40][:-1] + "!"                                   # punctuation differs: not exact
    res = exact_duplicates(train, val)
    assert _pairs_set(res) == {(10, 0), (20, 1), (30, 2)}
    assert normalize_text("ＡＢＣ  d\u00e9f") == normalize_text("abc de\u0301f")


def test_table_rows_and_text_cells():
    bc = load_breast_cancer(as_frame=True).frame
    bc["site"] = np.where(np.arange(len(bc)) % 2, "North", "South")
    tr, va = bc.iloc[:450].reset_index(drop=True), bc.iloc[450:].reset_index(drop=True).copy()
    va.iloc[5] = tr.iloc[17]
    va.loc[8, :] = tr.iloc[99].values
    va.loc[8, "site"] = " " + str(tr.loc[99, "site"]).upper()       # text cell differs only in case/space
    va.loc[9, :] = tr.iloc[100].values
    va.loc[9, "mean radius"] = tr.loc[100, "mean radius"] + 1e-9   # a number differs: not a duplicate
    res = exact_duplicates(tr, va)
    assert _pairs_set(res) == {(17, 5), (99, 8)}


def test_table_columns_in_other_order_and_label_column_removed():
    bc = load_breast_cancer(as_frame=True).frame
    tr, va = bc.iloc[:400].reset_index(drop=True), bc.iloc[400:].reset_index(drop=True).copy()
    va.iloc[0] = tr.iloc[3]
    va.loc[0, "target"] = 1 - tr.loc[3, "target"]                # same inputs, other label: still a leak
    va = va[list(reversed(va.columns))]
    res = audit_split(tr, va, labels="target", near=False, shift=False)
    assert _pairs_set(res.exact) == {(3, 0)}
    assert res.label_shift is not None and "target" not in list(res._train.data.columns)


def test_torch_datasets_are_read_with_labels(digits):
    torch = pytest.importorskip("torch")
    from torch.utils.data import Subset, TensorDataset

    x, y = digits
    full = TensorDataset(torch.tensor(x[:, None], dtype=torch.float32), torch.tensor(y))
    tr, va = Subset(full, list(range(0, 1000))), Subset(full, list(range(990, 1200)))  # 10 shared samples
    res = audit_split(tr, va, near=False, shift=False)
    assert res.kind == "image" and res._train.data.shape == (1000, 8, 8)
    assert _pairs_set(res.exact) == {(990 + i, i) for i in range(10)}
    assert res.label_shift is not None  # labels came from the dataset items
    t = as_split(torch.zeros(4, 3), "train")
    assert t.kind == "array" and t.data.shape == (4, 3)


def test_bad_inputs_name_the_argument(digits):
    x, y = digits
    with pytest.raises(ValueError, match="same kind"):
        audit_split(x[:10], ["a", "b"], near=False, shift=False)
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*\(4, 16\)"):
        exact_duplicates(x[:10], x[:10].reshape(10, 4, 16))
    with pytest.raises(ValueError, match="labels for val"):
        audit_split(x[:100], x[100:150], labels=(y[:100], y[:10]), near=False, shift=False)
    with pytest.raises(TypeError, match="groups must be a"):
        audit_split(x[:100], x[100:150], groups=y[:100], near=False, shift=False)
    with pytest.raises(KeyError, match="label column 'nope'"):
        audit_split(pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]}), labels="nope")
    with pytest.raises(TypeError, match="unsupported input type"):
        exact_duplicates({1: 2}, {3: 4})
    with pytest.raises(ValueError, match="kind must be"):
        exact_duplicates(x[:3], x[:3], kind="video")


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@given(arrays(np.uint64, st.tuples(st.integers(0, 30), st.just(2)), elements=st.integers(0, 3)),
       arrays(np.uint64, st.tuples(st.integers(0, 30), st.just(2)), elements=st.integers(0, 3)))
def test_the_hash_join_gives_every_equal_pair_and_no_other(ka, kb):
    # keys from 4 values per word: many repeated keys and keys equal in one word only, the join's hard cases
    from losslens.recording.duplicates import match_hashes

    res = match_hashes(ka, kb, lambda ti, vi: np.ones(len(ti), bool))
    want = sorted((j, i) for i in range(len(ka)) for j in range(len(kb)) if (ka[i] == kb[j]).all())
    assert sorted((v, t) for t, v in res.pairs.tolist()) == want
    assert res.n_pairs == len(want) and res.val_indices.tolist() == sorted({v for v, _ in want})
