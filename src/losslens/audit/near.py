"""Near duplicates across a split: exact blocked k-nearest-neighbour search.

The rule is cleanlab's ``near_duplicate`` issue rule (cleanlab
``NearDuplicateIssueManager``, Datalab, default ``threshold=0.13``): a pair is a
near duplicate when its distance is below ``threshold × median`` of the
nearest-neighbour distances *within the training set* (each training sample to
its nearest other training sample). The radius is therefore relative to how
close ordinary neighbours are in the chosen feature space.

Search
------
Exact search, no approximation: the query and reference matrices are L2
normalized (cosine) and multiplied block by block in float32 (BLAS), keeping
per query the nearest neighbour and every pair within the radius. Memory is one
``block_rows × block_cols`` float32 block (64 MiB by default). When faiss is
installed and ``backend="faiss"``, the search uses ``faiss.IndexFlatIP`` /
``IndexFlatL2`` (``search`` for the nearest neighbour, ``range_search`` for the
pairs), which is also exact. It is not the default: on the 2-core development
machine, 100 000 × 20 000 × 512 took 80 s with faiss-cpu 1.15 against 48 s with
the NumPy blocks (same run, shared machine; faiss makes two passes).

Metric: ``"cosine"`` (``1 − cos``, in [0, 2]) or ``"euclidean"``; ``"auto"``
follows cleanlab's default: cosine for more than 3 dimensions, euclidean
otherwise.

Feature spaces (chosen by :func:`features_for_near`)
-----------------------------------------------------
* embeddings the caller passes (e.g. the model's penultimate layer);
* images: raw pixels compared *shift-tolerantly*: for every translation
  ``(dy, dx)`` with ``|dy|, |dx| ≤ max_shift`` (default 1 pixel) the validation
  image's crop is compared with the training image's crop displaced by that
  translation (the overlapping region), and the pair distance is the minimum over
  the 9 translations. A one-pixel shift that pushes a row of an 8×8 digit off
  the canvas leaves the overlapping 7×8 region identical, so its distance is 0;
  blurring, centre-of-mass alignment or the Fourier magnitude do not achieve
  that when content is clipped (measured on scikit-learn digits, 1 400 / 397
  split: 0 % recall of vertical one-pixel shifts with each; raw pixels without
  the tolerance also 0 %; with it 100 %, and noise σ = 0.5 on the 0–16 scale
  reaches at most 0.126 × the median, just inside 0.13);
* feature rows and tables: columns standardized with the training mean and
  standard deviation (categorical columns as category codes; NaN at the mean);
* text: character 2–4-gram frequencies within word boundaries of the
  normalized text with punctuation removed, L2-normalized, without IDF
  (scikit-learn ``TfidfVectorizer(analyzer="char_wb", use_idf=False)``),
  cosine. Punctuation-only edits are then at distance 0. Measured on generated
  sentences (3 corpora of 1 200 training texts of 8–15 pseudo-words, 100
  one-character transpositions and 100 one-word substitutions planted in 300
  validation texts, with the generator of ``tests/test_audit_near.py``): with
  cleanlab's 0.13 the recall is 0.37–0.48 for transpositions and 0.28–0.35 for
  substitutions; with ``near_threshold=0.35`` it is 1.0 and 0.94–0.99, with no
  false pair (the nearest unrelated validation text was at 0.57–0.77 × the
  median). IDF weighting made edits 2–3 times farther (a misspelt n-gram is
  unique, so it gets the largest weight), so it is not used. Short texts are
  inherently far apart per edit; pass ``near_threshold`` or sentence
  embeddings for text.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .inputs import SplitData, normalize_text

__all__ = ["NearDuplicates", "blocked_search", "find_near_duplicates", "near_duplicates", "features_for_near",
           "NEAR_THRESHOLD", "resolve_metric"]

#: cleanlab's default ``threshold`` of the near-duplicate rule (Datalab ``NearDuplicateIssueManager``).
NEAR_THRESHOLD = 0.13


def resolve_metric(metric: str, dim: int) -> str:
    """cleanlab's default: cosine above 3 dimensions, euclidean otherwise."""
    if metric == "auto":
        return "cosine" if dim > 3 else "euclidean"
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'auto', 'cosine' or 'euclidean', got {metric!r}")
    return metric


def _is_sparse(x: Any) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _prepare(x: Any, metric: str) -> tuple[Any, np.ndarray | None]:
    """Float32 (or sparse) matrix, L2-normalized for cosine; squared norms for euclidean."""
    if _is_sparse(x):
        x = x.tocsr().astype(np.float32)
        sq = np.asarray(x.multiply(x).sum(axis=1)).ravel().astype(np.float32)
        if metric == "cosine":
            from scipy import sparse

            inv = np.where(sq > 0, 1.0 / np.sqrt(np.maximum(sq, 1e-30)), 0.0).astype(np.float32)
            return sparse.diags(inv) @ x, None
        return x, sq
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinity; impute or drop them first")
    sq = np.einsum("ij,ij->i", x, x)
    if metric == "cosine":
        norms = np.sqrt(sq)
        x = x / np.where(norms > 0, norms, 1.0)[:, None]
        return x, None
    return x, sq


def _block_scores(q: Any, b: Any, qsq: np.ndarray | None, bsq: np.ndarray | None, metric: str,
                  buffers: dict) -> np.ndarray:
    """Block of scores that *decrease* with distance: cosine similarity, or −squared euclidean distance.

    Dense blocks are written into a reused buffer (``buffers``, keyed by shape):
    allocating a fresh 64 MiB array per block costs page faults that showed up
    as a third of the run time in ``benchmarks/audit.py``.
    """
    if _is_sparse(q):
        prod = np.asarray((q @ b.T).toarray(), dtype=np.float32)
    else:
        shape = (q.shape[0], b.shape[0])
        prod = buffers.get(shape)
        if prod is None:
            buffers.clear()
            prod = buffers[shape] = np.empty(shape, np.float32)
        np.matmul(q, b.T, out=prod)
    if metric == "euclidean":
        prod *= 2.0
        prod -= qsq[:, None]
        prod -= bsq[None, :]
    return prod


def _to_dist(score: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return np.maximum(1.0 - score, 0.0).astype(np.float32)
    return np.sqrt(np.maximum(-score, 0.0)).astype(np.float32)


def _to_score(dist: float, metric: str) -> float:
    return 1.0 - dist if metric == "cosine" else -(dist ** 2)


def blocked_search(queries: Any, base: Any, *, metric: str = "cosine", radius: float | None = None,
                   exclude: np.ndarray | None = None, block_rows: int = 2048, block_cols: int = 8192,
                   max_pairs_per_query: int = 100, backend: str = "numpy",
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact nearest neighbour of each query in ``base``, and all pairs within ``radius``.

    Parameters
    ----------
    queries : array (nq, d) or scipy sparse matrix
    base : array (nb, d) or scipy sparse matrix
    metric : {"cosine", "euclidean"}
        Cosine distance ``1 − cos`` (zero vectors are at distance 1 from
        everything), or euclidean distance.
    radius : float, optional
        Also return every (query, base) pair with distance ``< radius``.
    exclude : array of int (nq,), optional
        ``exclude[i]`` is a base index query ``i`` must not be matched with
        (itself, for a search of a set against itself); -1 for none.
    block_rows, block_cols : int
        Block sizes of the float32 distance computation (memory
        ``4 * block_rows * block_cols`` bytes).
    max_pairs_per_query : int
        At most this many within-radius pairs per query, the nearest ones.
    backend : {"numpy", "faiss"}
        ``"faiss"`` (dense inputs, faiss installed, no ``exclude``): faiss flat indexes.

    Returns
    -------
    nn_dist : numpy.ndarray (nq,) float32
        Distance to the nearest base sample (inf when base is empty).
    nn_idx : numpy.ndarray (nq,) int64
    pair_q, pair_b : numpy.ndarray (m,) int64
        Query and base indices of the pairs within ``radius`` (empty without radius).
    pair_d : numpy.ndarray (m,) float32
    """
    qx, qsq = _prepare(queries, metric)
    bx, bsq = _prepare(base, metric)
    nq, nb = qx.shape[0], bx.shape[0]
    if qx.shape[1] != bx.shape[1]:
        raise ValueError(f"queries have {qx.shape[1]} dimensions but the base has {bx.shape[1]}")
    nn_dist = np.full(nq, np.inf, np.float32)
    nn_idx = np.full(nq, -1, np.int64)
    pq: list[np.ndarray] = []
    pb: list[np.ndarray] = []
    pdist: list[np.ndarray] = []
    if backend == "faiss" and not _is_sparse(qx) and exclude is None:
        return _faiss_search(qx, bx, metric, radius, max_pairs_per_query)
    # a slightly looser score bound, then the exact distance test (float32 rounding at the boundary)
    score_min = _to_score(radius, metric) - 1e-6 if radius is not None else np.inf
    buffers: dict = {}
    for r0 in range(0, nq, block_rows):
        r1 = min(nq, r0 + block_rows)
        q = qx[r0:r1]
        qs = qsq[r0:r1] if qsq is not None else None
        for c0 in range(0, nb, block_cols):
            c1 = min(nb, c0 + block_cols)
            s = _block_scores(q, bx[c0:c1], qs, bsq[c0:c1] if bsq is not None else None, metric, buffers)
            if exclude is not None:
                ex = exclude[r0:r1]
                rows = np.nonzero((ex >= c0) & (ex < c1))[0]
                s[rows, ex[rows] - c0] = -np.inf
            j = s.argmax(axis=1)
            sj = s[np.arange(r1 - r0), j]
            dj = _to_dist(sj, metric)
            better = dj < nn_dist[r0:r1]
            nn_dist[r0:r1][better] = dj[better]
            nn_idx[r0:r1][better] = j[better] + c0
            if radius is not None:
                # only rows whose best score passes the bound can hold pairs: scan just those
                rows = np.nonzero(sj > score_min)[0]
                if len(rows):
                    ri, jj = np.nonzero(s[rows] > score_min)
                    ii = rows[ri]
                    dd = _to_dist(s[ii, jj], metric)
                    keep = dd < radius
                    pq.append(ii[keep] + r0)
                    pb.append(jj[keep] + c0)
                    pdist.append(dd[keep])
    if pq:
        return (nn_dist, nn_idx) + _cap_pairs(np.concatenate(pq), np.concatenate(pb), np.concatenate(pdist),
                                              max_pairs_per_query)
    return nn_dist, nn_idx, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def _cap_pairs(q_all: np.ndarray, b_all: np.ndarray, d_all: np.ndarray, cap: int,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort pairs by query then distance and keep the nearest ``cap`` per query."""
    if len(q_all) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    order = np.lexsort((d_all, q_all))
    q_all, b_all, d_all = q_all[order], b_all[order], d_all[order]
    start = np.r_[0, np.nonzero(np.diff(q_all))[0] + 1]
    rank = np.arange(len(q_all)) - np.repeat(start, np.diff(np.r_[start, len(q_all)]))
    keep = rank < cap
    return q_all[keep].astype(np.int64), b_all[keep].astype(np.int64), d_all[keep].astype(np.float32)


def _faiss_search(q: np.ndarray, b: np.ndarray, metric: str, radius: float | None, cap: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact search with faiss flat indexes (inner product on normalized rows, or squared L2)."""
    import faiss  # optional

    index = faiss.IndexFlatIP(b.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(b.shape[1])
    index.add(np.ascontiguousarray(b, dtype=np.float32))
    qc = np.ascontiguousarray(q, dtype=np.float32)
    s, i = index.search(qc, 1)
    s, i = s[:, 0].astype(np.float32), i[:, 0].astype(np.int64)
    d = np.maximum(1.0 - s, 0.0) if metric == "cosine" else np.sqrt(np.maximum(s, 0.0))
    if radius is None:
        return d.astype(np.float32), i, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    thr = 1.0 - radius if metric == "cosine" else radius ** 2
    lims, dd, ii = index.range_search(qc, float(thr))
    qa = np.repeat(np.arange(len(qc), dtype=np.int64), np.diff(np.asarray(lims, dtype=np.int64)))
    da = np.maximum(1.0 - dd, 0.0) if metric == "cosine" else np.sqrt(np.maximum(dd, 0.0))
    keep = da < radius
    return (d.astype(np.float32), i) + _cap_pairs(qa[keep], ii[keep].astype(np.int64), da[keep], cap)


def faiss_available() -> bool:
    """True when ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- feature spaces

@dataclass
class _Space:
    """Features of both splits for the near-duplicate search.

    ``views`` is a list of (train_features, val_features) pairs; the pair
    distance is the minimum over the views (one view, or one per translation).
    """

    description: str
    metric: str
    views: list[tuple[Any, Any]]


def _crop(imgs: np.ndarray, dy: int, dx: int, side: str) -> np.ndarray:
    h, w = imgs.shape[1:3]
    if side == "val":
        c = imgs[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    else:
        c = imgs[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return c.reshape(len(imgs), -1)


def _pool_images(x: np.ndarray, max_side: int) -> np.ndarray:
    """Average-pool images so that the longer side is at most ``max_side`` pixels."""
    h, w = x.shape[1:3]
    f = int(np.ceil(max(h, w) / max_side))
    if f <= 1:
        return x
    hh, ww = (h // f) * f, (w // f) * f
    x = x[:, :hh, :ww]
    shape = (x.shape[0], hh // f, f, ww // f, f) + x.shape[3:]
    return x.reshape(shape).mean(axis=(2, 4))


def _table_matrix(train: pd.DataFrame, val: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str], list[bool]]:
    """Numeric matrices of two DataFrames (categoricals as shared category codes, NaN kept)."""
    cols_tr, cols_va, names, is_cat = [], [], [], []
    for c in train.columns:
        s_tr, s_va = train[c], val[c]
        if pd.api.types.is_bool_dtype(s_tr) or pd.api.types.is_numeric_dtype(s_tr):
            cols_tr.append(s_tr.to_numpy(dtype=np.float64, na_value=np.nan))
            cols_va.append(pd.to_numeric(s_va, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan))
            is_cat.append(False)
        else:
            cats = pd.Categorical(pd.concat([s_tr.astype(str), s_va.astype(str)], ignore_index=True))
            codes = cats.codes.astype(np.float64)
            codes[codes < 0] = np.nan
            cols_tr.append(codes[:len(s_tr)])
            cols_va.append(codes[len(s_tr):])
            is_cat.append(True)
        names.append(str(c))
    return np.stack(cols_tr, 1), np.stack(cols_va, 1), names, is_cat


def _standardize(tr: np.ndarray, va: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        mu = np.nanmean(tr, axis=0)
        sd = np.nanstd(tr, axis=0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    a = np.nan_to_num((tr - mu) / sd, nan=0.0, posinf=0.0, neginf=0.0)
    b = np.nan_to_num((va - mu) / sd, nan=0.0, posinf=0.0, neginf=0.0)
    return a.astype(np.float32), b.astype(np.float32)


_PUNCT = re.compile(r"[^\w\s]+")


def _text_for_ngrams(s: str) -> str:
    """Normalized text (NFKC, case fold, whitespace) with punctuation removed."""
    return " ".join(_PUNCT.sub(" ", normalize_text(s)).split())


def features_for_near(train: SplitData, val: SplitData, *, embeddings: tuple[Any, Any] | None = None,
                      metric: str = "auto", max_shift: int = 1, max_image_side: int = 32) -> _Space:
    """Choose the feature space of the near-duplicate search (see the module docstring)."""
    if embeddings is not None:
        a = np.asarray(embeddings[0], dtype=np.float32)
        b = np.asarray(embeddings[1], dtype=np.float32)
        for arr, sp in ((a, train), (b, val)):
            if arr.ndim != 2 or len(arr) != sp.n:
                raise ValueError(f"embeddings for {sp.name}: expected shape ({sp.n}, d), got {arr.shape}")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"train embeddings have {a.shape[1]} dimensions but val embeddings {b.shape[1]}")
        for arr, sp in ((a, train), (b, val)):
            if not np.isfinite(arr).all():
                raise ValueError(f"embeddings for {sp.name} contain NaN or infinity "
                                 f"(rows {np.nonzero(~np.isfinite(arr).all(axis=1))[0][:5].tolist()}...)")
        m = resolve_metric(metric, a.shape[1])
        return _Space(f"embeddings passed by the caller ({a.shape[1]} dimensions), {m} distance", m, [(a, b)])
    if train.kind == "image":
        a = _pool_images(np.nan_to_num(np.asarray(train.data, dtype=np.float32)), max_image_side)
        b = _pool_images(np.nan_to_num(np.asarray(val.data, dtype=np.float32)), max_image_side)
        m = resolve_metric(metric, int(np.prod(a.shape[1:])))
        pooled = "" if a.shape[1:3] == train.data.shape[1:3] else f" average-pooled to {a.shape[1]}×{a.shape[2]},"
        shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
        views = [(_crop(a, dy, dx, "train"), _crop(b, dy, dx, "val")) for dy, dx in shifts]
        tol = (f" tolerant to translations up to {max_shift} pixel{'s' if max_shift > 1 else ''} (minimum over "
               f"{len(shifts)} overlapping crops)") if max_shift > 0 else ""
        return _Space(f"raw pixels,{pooled}{tol}, {m} distance", m, views)
    if train.kind == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), preprocessor=_text_for_ngrams,
                              use_idf=False, dtype=np.float32)
        vec.fit(list(train.data) + list(val.data))
        return _Space("character 2–4-gram frequencies of the normalized text without punctuation "
                      "(L2-normalized, no IDF), cosine distance", "cosine",
                      [(vec.transform(train.data), vec.transform(val.data))])
    if train.kind == "table":
        tr, va, _, _ = _table_matrix(train.data, val.data)
    else:
        tr = np.asarray(train.data, dtype=np.float64)
        va = np.asarray(val.data, dtype=np.float64)
    a, b = _standardize(tr, va)
    m = resolve_metric(metric, a.shape[1])
    return _Space(f"features standardized with the training mean and standard deviation ({a.shape[1]} "
                  f"columns), {m} distance", m, [(a, b)])


# ---------------------------------------------------------------- result

@dataclass
class NearDuplicates:
    """Validation samples within the near-duplicate radius of a training sample.

    Attributes
    ----------
    feature_space : str
        The features and distance used, in words.
    metric : str
        ``"cosine"`` (``1 − cos``) or ``"euclidean"``.
    threshold : float
        The relative threshold (cleanlab's default 0.13).
    median_nn_train : float
        Median distance from a training sample to its nearest other training
        sample (over ``n_reference`` sampled training samples).
    radius : float
        ``threshold × median_nn_train``, in distance units.
    nn_dist : numpy.ndarray (n_val,) float32
        Distance of each validation sample to its nearest training sample.
    nn_idx : numpy.ndarray (n_val,) int64
        Index of that training sample.
    pairs : numpy.ndarray (m, 2) int64
        ``[train_index, val_index]`` of every pair within ``radius`` (at most
        ``max_pairs_per_query`` per validation sample), exact duplicates included.
    pair_dist : numpy.ndarray (m,) float32
        Their distances.
    pair_exact : numpy.ndarray (m,) bool
        True where the pair is also an exact duplicate.
    n_reference : int
        Training samples whose nearest-neighbour distance set the median.
    seconds : float
    """

    feature_space: str
    metric: str
    threshold: float
    median_nn_train: float
    radius: float
    nn_dist: np.ndarray
    nn_idx: np.ndarray
    pairs: np.ndarray
    pair_dist: np.ndarray
    pair_exact: np.ndarray
    n_reference: int
    seconds: float = 0.0
    backend: str = "numpy"

    @property
    def val_indices(self) -> np.ndarray:
        """Validation indices with a near (not exact) duplicate in training."""
        return np.unique(self.pairs[~self.pair_exact, 1])

    @property
    def n_val_near(self) -> int:
        """Number of validation samples with a near, non-exact duplicate."""
        return int(len(self.val_indices))

    @property
    def n_val(self) -> int:
        return int(len(self.nn_dist))

    def to_dict(self, max_pairs: int = 1000) -> dict[str, Any]:
        """JSON-safe summary with at most ``max_pairs`` pairs (nearest first)."""
        order = np.argsort(self.pair_dist, kind="stable")[:max_pairs]
        finite = self.nn_dist[np.isfinite(self.nn_dist)]
        return {
            "feature_space": self.feature_space, "metric": self.metric, "threshold": self.threshold,
            "median_nn_train": self.median_nn_train, "radius": self.radius, "n_reference": self.n_reference,
            "n_val_near": self.n_val_near, "n_pairs": int(len(self.pairs)),
            "n_pairs_exact": int(self.pair_exact.sum()),
            "pairs": [{"train": int(self.pairs[i, 0]), "val": int(self.pairs[i, 1]),
                       "distance": float(self.pair_dist[i]), "exact": bool(self.pair_exact[i])} for i in order],
            "nn_dist_quantiles": ({str(q): float(np.quantile(finite, q)) for q in (0.0, 0.01, 0.05, 0.5)}
                                  if len(finite) else {}),
            "seconds": self.seconds, "backend": self.backend,
        }


def _min_over_views(space: _Space, queries_from: str, exclude: np.ndarray | None, radius: float | None,
                    q_index: np.ndarray | None, backend: str, **kw: Any,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    best_d = best_i = None
    pq, pb, pd_ = [], [], []
    for tr_view, va_view in space.views:
        q = va_view if queries_from == "val" else tr_view
        if q_index is not None:
            q = q[q_index]
        d, i, a, b, c = blocked_search(q, tr_view, metric=space.metric, radius=radius, exclude=exclude,
                                       backend=backend, **kw)
        if best_d is None:
            best_d, best_i = d, i
        else:
            better = d < best_d
            best_d = np.where(better, d, best_d)
            best_i = np.where(better, i, best_i)
        pq.append(a)
        pb.append(b)
        pd_.append(c)
    qa, ba, da = np.concatenate(pq), np.concatenate(pb), np.concatenate(pd_)
    if len(space.views) > 1 and len(qa):
        g = pd.DataFrame({"q": qa, "b": ba, "d": da}).groupby(["q", "b"], sort=True)["d"].min().reset_index()
        qa, ba, da = g["q"].to_numpy(np.int64), g["b"].to_numpy(np.int64), g["d"].to_numpy(np.float32)
    return best_d, best_i, qa, ba, da


def find_near_duplicates(train: SplitData, val: SplitData, *, embeddings: tuple[Any, Any] | None = None,
                         threshold: float = NEAR_THRESHOLD, metric: str = "auto", max_shift: int = 1,
                         n_reference: int = 2000, exact_pairs: np.ndarray | None = None, seed: int = 0,
                         backend: str = "auto", max_pairs_per_query: int = 100,
                         block_rows: int = 2048, block_cols: int = 8192) -> NearDuplicates:
    """Near duplicates between two converted splits.

    Parameters
    ----------
    train, val : SplitData
    embeddings : (train (n_train, d), val (n_val, d)), optional
        Features to search in instead of the inputs.
    threshold : float
        Relative radius (cleanlab's ``near_duplicate`` default 0.13).
    metric : {"auto", "cosine", "euclidean"}
    max_shift : int
        Images only: translations (pixels) the distance is tolerant to (0: none).
    n_reference : int
        Training samples (seeded random subset) whose nearest-neighbour
        distance within the training set estimates the median; 2000 gives the
        median to about ±2.8 % of the interquartile width (standard error of a
        median ≈ 1.25 σ/√n).
    exact_pairs : (k, 2) int array, optional
        ``[train, val]`` exact-duplicate pairs, to mark ``pair_exact``.
    seed : int
    backend : {"auto", "numpy", "faiss"}
        ``"auto"`` is NumPy (measured faster here, see the module docstring);
        ``"faiss"`` needs faiss installed. Both are exact.
    max_pairs_per_query : int
        At most this many within-radius pairs kept per validation sample.
    block_rows, block_cols : int
        Block sizes of the NumPy search.

    Returns
    -------
    NearDuplicates

    Raises
    ------
    ValueError
        If the training set has fewer than 2 samples, or the features are invalid.
    """
    t0 = time.perf_counter()
    if train.n < 2:
        raise ValueError(f"the near-duplicate search needs at least 2 training samples, got {train.n}")
    if backend not in ("auto", "numpy", "faiss"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'faiss', got {backend!r}")
    space = features_for_near(train, val, embeddings=embeddings, metric=metric, max_shift=max_shift)
    dense = not _is_sparse(space.views[0][0])
    if backend == "auto":
        backend = "numpy"
    if backend == "faiss" and not dense:
        raise ValueError("backend='faiss' needs dense features; text features are sparse")
    if backend == "faiss" and not faiss_available():
        raise ValueError("backend='faiss' but faiss is not installed (pip install faiss-cpu)")
    rng = np.random.default_rng(seed)
    ref = np.sort(rng.choice(train.n, size=min(n_reference, train.n), replace=False))
    kw = dict(block_rows=block_rows, block_cols=block_cols, max_pairs_per_query=max_pairs_per_query)
    ref_d, _, _, _, _ = _min_over_views(space, "train", ref, None, ref, "numpy", **kw)
    median = float(np.median(ref_d))
    radius = threshold * median
    nn_dist, nn_idx, qa, ba, da = _min_over_views(space, "val", None, radius, None, backend, **kw)
    pairs = np.stack([ba, qa], axis=1) if len(qa) else np.empty((0, 2), np.int64)
    exact = np.zeros(len(pairs), bool)
    if exact_pairs is not None and len(exact_pairs) and len(pairs):
        key = pairs[:, 0].astype(np.int64) * (val.n + 1) + pairs[:, 1]
        ekey = np.asarray(exact_pairs)[:, 0].astype(np.int64) * (val.n + 1) + np.asarray(exact_pairs)[:, 1]
        exact = np.isin(key, ekey)
    return NearDuplicates(space.description, space.metric, threshold, median, radius, nn_dist, nn_idx, pairs,
                          da, exact, len(ref), time.perf_counter() - t0, backend)


def near_duplicates(train: Any = None, val: Any = None, *, embeddings: tuple[Any, Any] | None = None,
                    kind: str = "auto", **kwargs: Any) -> NearDuplicates:
    """Near duplicates between two splits, from raw inputs or from embeddings alone.

    Parameters
    ----------
    train, val : array-like, DataFrame, list of str, torch tensor/dataset, or None
        The splits (see :func:`losslens.audit.audit_split`); may be None when
        ``embeddings`` are given.
    embeddings : (array (n_train, d), array (n_val, d)), optional
        Search in these features instead of the inputs.
    kind : str
        How inputs are read (``"auto"``, ``"array"``, ``"image"``, ``"table"``, ``"text"``).
    **kwargs
        Passed to :func:`find_near_duplicates` (``threshold``, ``metric``,
        ``max_shift``, ``n_reference``, ``backend``, ``seed``, block sizes).

    Returns
    -------
    NearDuplicates

    Raises
    ------
    ValueError
        If neither inputs nor embeddings are given, or shapes disagree.

    Examples
    --------
    >>> import numpy as np
    >>> from losslens.audit.near import near_duplicates
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((500, 32)); b = rng.standard_normal((50, 32)); b[0] = a[7] + 1e-3
    >>> near_duplicates(embeddings=(a, b)).pairs.tolist()
    [[7, 0]]
    """
    from .inputs import as_split, check_compatible

    if train is None or val is None:
        if embeddings is None:
            raise ValueError("near_duplicates: pass train and val, or embeddings=(train_emb, val_emb)")
        tr = SplitData("train", "array", np.empty((len(embeddings[0]), 0), np.float32), source="embeddings")
        va = SplitData("val", "array", np.empty((len(embeddings[1]), 0), np.float32), source="embeddings")
    else:
        tr, va = as_split(train, "train", kind=kind), as_split(val, "val", kind=kind)
        check_compatible(tr, va)
    return find_near_duplicates(tr, va, embeddings=embeddings, **kwargs)
