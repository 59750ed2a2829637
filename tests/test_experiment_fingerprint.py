"""Split fingerprints: order independence, sensitivity, storage, overlap estimates."""

import numpy as np
import pytest
import torch

from losslens.recording.fingerprint import (
    auto_fingerprints,
    decode_hashes,
    encode_hashes,
    fingerprint_samples,
    overlap,
    sample_hashes,
    split_fingerprints,
    stored_hashes,
)


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 8)).astype(np.float32), rng.integers(0, 5, n)


def test_fingerprint_is_order_independent_and_content_sensitive():
    X, y = _data()
    base = fingerprint_samples((X, y))
    perm = np.random.default_rng(1).permutation(len(X))
    assert fingerprint_samples((X[perm], y[perm]))["fingerprint"] == base["fingerprint"]
    X2 = X.copy()
    X2[17, 3] += 1e-3
    assert fingerprint_samples((X2, y))["fingerprint"] != base["fingerprint"]
    y2 = y.copy()
    y2[5] = (y2[5] + 1) % 5
    assert fingerprint_samples((X, y2))["fingerprint"] != base["fingerprint"], "a relabelled sample is another sample"
    # a subset, and the same inputs without labels, are different sets
    assert fingerprint_samples((X[:-1], y[:-1]))["fingerprint"] != base["fingerprint"]
    assert fingerprint_samples(X)["fingerprint"] != base["fingerprint"]
    # the per-sample hashes are sorted uint64, one per sample
    h = base["hashes"]
    assert h.dtype == np.uint64 and h.size == len(X) and np.all(np.diff(h.astype(np.float64)) >= 0)


def test_dtype_normalisation_torch_and_dataset_agree_with_numpy():
    X, y = _data(50)
    ref = fingerprint_samples((X, y))["fingerprint"]
    assert fingerprint_samples((X.astype(np.float64), y.astype(np.int32)))["fingerprint"] == ref
    assert fingerprint_samples((torch.from_numpy(X), torch.from_numpy(y)))["fingerprint"] == ref
    ds = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(y))
    assert fingerprint_samples(ds)["fingerprint"] == ref
    z = np.zeros((2, 3))
    assert np.array_equal(sample_hashes(z), sample_hashes(-z)), "-0.0 and 0.0 are the same value"
    # shape is part of the content
    assert sample_hashes(np.arange(6.0).reshape(1, 6))[0] != sample_hashes(np.arange(6.0).reshape(1, 2, 3))[0]


def test_ids_and_errors():
    ids = [f"img_{i:04d}.png" for i in range(20)]
    assert fingerprint_samples(ids)["fingerprint"] == fingerprint_samples(ids[::-1])["fingerprint"]
    assert fingerprint_samples(ids)["fingerprint"] != fingerprint_samples(ids[:-1] + ["other.png"])["fingerprint"]
    with pytest.raises(ValueError, match="different numbers of samples"):
        sample_hashes((np.zeros((3, 2)), np.zeros(4)))
    with pytest.raises(TypeError, match="unsupported type"):
        sample_hashes(object())
    with pytest.raises(TypeError, match="single str"):
        sample_hashes("abc")
    with pytest.raises(ValueError, match="scalar"):
        sample_hashes(np.float64(1.0))
    with pytest.raises(ValueError, match="max_hashes"):
        split_fingerprints(train=np.zeros((2, 2)), max_hashes=0)


def test_meta_round_trip_and_malformed_fields_are_named():
    X, y = _data(100)
    meta = split_fingerprints(train=(X[:70], y[:70]), val=(X[70:], y[70:]), probe=(X[:20], y[:20]))
    assert set(meta) == {"train_fingerprint", "val_fingerprint", "probe_content_fingerprint", "train_hashes",
                         "val_hashes", "train_hashes_rate", "val_hashes_rate", "content_hash"}
    v, rate = stored_hashes(meta, "val")
    assert rate == 1.0 and np.array_equal(v, fingerprint_samples((X[70:], y[70:]))["hashes"])
    assert np.array_equal(decode_hashes(encode_hashes(v[::-1])), v)
    with pytest.raises(ValueError, match="val_hashes"):
        stored_hashes({"val_hashes": "abc"}, "val")
    with pytest.raises(ValueError, match="not base64"):
        stored_hashes({"train_hashes": "!!!!"}, "train")


def test_sampled_hashes_estimate_the_overlap():
    """Threshold sampling keeps the same hash region in every set, so overlap is still found and estimated."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20000, 4))
    tr_a, va_a = X[:16000], X[16000:]
    # run b's training set holds 25 % of run a's validation set
    tr_b = np.concatenate([X[4000:16000], X[16000:17000], X[:3000]])
    full = overlap(stored_hashes(split_fingerprints(val=va_a), "val"),
                   stored_hashes(split_fingerprints(train=tr_b), "train"),
                   exclude=[stored_hashes(split_fingerprints(train=tr_a), "train")])
    assert full[0] == 1000 and full[2] == pytest.approx(0.25)
    ma, mb = split_fingerprints(train=tr_a, val=va_a, max_hashes=2000), split_fingerprints(train=tr_b, max_hashes=2000)
    assert 0.08 < ma["train_hashes_rate"] < 0.2 and len(decode_hashes(ma["train_hashes"])) < 2600
    found, checked, frac = overlap(stored_hashes(ma, "val"), stored_hashes(mb, "train"),
                                   exclude=[stored_hashes(ma, "train")])
    assert found > 0
    # binomial sampling error of the estimated fraction over `checked` samples
    assert abs(frac - 0.25) < 4 * np.sqrt(0.25 * 0.75 / checked)


def test_auto_fingerprints_hash_in_memory_sets_and_skip_the_rest():
    X, y = _data(120)
    tX, ty = torch.from_numpy(X), torch.from_numpy(y)
    ref = fingerprint_samples((X[:100], y[:100]))["fingerprint"]
    ds = torch.utils.data.TensorDataset(tX, ty)
    sub = torch.utils.data.Subset(ds, list(range(100)))
    loader = torch.utils.data.DataLoader(sub, batch_size=16)
    for data in ((tX[:100], ty[:100]), sub, loader, {"x": X[:100], "y": y[:100]}):
        assert auto_fingerprints(train=data)["train_fingerprint"] == ref, type(data)

    class Decoding(torch.utils.data.Dataset):  # reads "files" in __getitem__: not hashed automatically
        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise AssertionError("auto_fingerprints must not read samples")

    class Folder:  # torchvision DatasetFolder-like: ids are hashed
        samples = [(f"/data/img{i}.png", i % 3) for i in range(30)]

    out = auto_fingerprints(train=Decoding(), val=Folder())
    assert "train_fingerprint" not in out and "Decoding" in out["fingerprint_skipped"]["train"]
    assert out["val_fingerprint"] == fingerprint_samples([f"/data/img{i}.png\x00{i % 3}" for i in range(30)])[
        "fingerprint"]
    big = auto_fingerprints(val=(X, y), max_bytes=100)
    assert "val_fingerprint" not in big and "above the automatic limit" in big["fingerprint_skipped"]["val"]


def test_auto_fingerprints_never_raise_and_handle_bfloat16():
    X, y = _data(40)
    bf = torch.from_numpy(X).to(torch.bfloat16)
    out = auto_fingerprints(train=(bf, torch.from_numpy(y)))
    assert out["train_fingerprint"] == fingerprint_samples((bf.float().numpy(), y))["fingerprint"]
    weird = auto_fingerprints(train=(np.zeros((3, 2)), np.zeros(4)), val=np.array([[np.datetime64("2020-01-01")]]))
    assert set(weird["fingerprint_skipped"]) == {"train", "val"} and "train_fingerprint" not in weird


def test_wide_rows_hash_by_content_and_width_and_streaming_equals_the_concatenation():
    """Rows of WIDE_ROW_BYTES or more take the BLAKE2b path: equal rows hash equal, any changed byte or a different
    width changes the hash, and the fingerprint's part-by-part hashing gives the digest of the parts side by side."""
    import hashlib

    from losslens.recording import fingerprint as fpm
    from losslens.recording.hashing import WIDE_ROW_BYTES, row_hashes

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (40, WIDE_ROW_BYTES), dtype=np.uint8)
    rows[7] = rows[3]
    changed = rows.copy()
    changed[5, 100] ^= 1
    h, hc = row_hashes(rows), row_hashes(changed)
    assert (h[7] == h[3]).all() and len({tuple(r) for r in h}) == 39
    assert (hc[5] != h[5]).any() and (np.delete(hc, 5, 0) == np.delete(h, 5, 0)).all()
    padded = np.concatenate([rows, np.zeros((40, 8), np.uint8)], axis=1)
    assert not (row_hashes(padded)[:, 0] == h[:, 0]).any()
    narrow = rows[:, :WIDE_ROW_BYTES - 8]                 # the column-wise path, one lane still distinct
    assert len(set(row_hashes(narrow)[:, 0].tolist())) == 39

    X = rng.normal(size=(30, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 30)
    tags = b"|".join(fpm._kind_tag(a) for a in (X, y)) + b"|f4"      # float32 values: hashed as float32 (version 3)
    tag = np.broadcast_to(np.frombuffer(hashlib.sha256(tags).digest()[:8], np.uint8), (30, 8))
    side_by_side = np.concatenate([tag, X.reshape(30, -1).view(np.uint8),
                                   y.astype(np.int64).reshape(30, -1).view(np.uint8)], axis=1)
    assert side_by_side.shape[1] >= WIDE_ROW_BYTES
    assert (fpm.sample_hashes((X, y)) == row_hashes(side_by_side)[:, 0]).all()
    assert (fpm.sample_hashes((torch.from_numpy(X), torch.from_numpy(y))) == fpm.sample_hashes((X, y))).all()


@pytest.mark.parametrize("width", [8, 1024])          # the column-wise and the BLAKE2b paths
def test_floats_hash_by_value_at_their_narrowest_exact_width(width):
    """Content-hash version 3: a sample whose float values are all float32 values hashes the same from float16,
    float32 or float64 arrays (and from torch), a float64 sample that float32 would round hashes differently from
    its rounding, and in a chunk that mixes both kinds each row hashes as it does alone."""
    rng = np.random.default_rng(0)
    X32 = rng.normal(size=(40, width)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    ref = sample_hashes((X32, y))
    assert (sample_hashes((X32.astype(np.float64), y)) == ref).all()
    assert (sample_hashes((torch.from_numpy(X32).double(), torch.from_numpy(y))) == ref).all()
    X16 = X32.astype(np.float16)
    assert (sample_hashes((X16, y)) == sample_hashes((X16.astype(np.float64), y))).all()
    mixed = X32.astype(np.float64)
    mixed[::3, 0] += 1e-12                                    # not a float32 value any more
    h = sample_hashes((mixed, y))
    wide = np.arange(40) % 3 == 0
    assert (h[~wide] == ref[~wide]).all() and (h[wide] != ref[wide]).all()
    alone = np.array([sample_hashes((mixed[i:i + 1], y[i:i + 1]))[0] for i in range(40)])
    assert (h == alone).all()
    nan = X32.copy()
    nan[0, 0], nan[1, 0] = np.nan, -0.0
    nan64 = nan.astype(np.float64)
    nan64[0, 0] = -np.nan
    assert (sample_hashes(nan) == sample_hashes(nan64)).all()
    pos = nan.copy()
    pos[1, 0] = 0.0
    assert sample_hashes(pos)[1] == sample_hashes(nan)[1], "-0.0 and 0.0 are the same value"
