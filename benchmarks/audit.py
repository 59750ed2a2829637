"""Benchmark of the split audit's two searches (not run in CI).

1. Exact duplicates: 1 000 000 training × 200 000 validation samples of 64
   float32 features (1 200 000 samples hashed), 1 % of the validation samples
   planted as copies of training samples. Target: under 10 s.
2. Near duplicates: 100 000 training × 20 000 validation × 512-d float32
   embeddings (clustered, like the penultimate layer of a classifier), 2 % of
   the validation samples planted as near duplicates (a training embedding plus
   noise at about 5 % of the median nearest-neighbour distance). Recall, and
   time against scikit-learn's brute-force ``NearestNeighbors`` (cosine, 1-NN)
   on the same data. Target: under 60 s.

Usage::

    python benchmarks/audit.py            # full size
    python benchmarks/audit.py --scale 0.1

Prints the machine (CPU count, load average, BLAS threads) with the numbers,
and CPU seconds next to wall seconds: on a shared machine the wall time
depends on what else runs, the CPU time much less.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _clustered(rng: np.random.Generator, n: int, d: int, centres: np.ndarray, spread: float) -> np.ndarray:
    k = rng.integers(0, len(centres), n)
    x = centres[k] + spread * rng.standard_normal((n, d), dtype=np.float32)
    return x.astype(np.float32)


def bench_exact(n_train: int, n_val: int, d: int, seed: int = 0) -> dict:
    from losslens.audit import exact_duplicates

    rng = np.random.default_rng(seed)
    xt = rng.standard_normal((n_train, d), dtype=np.float32)
    xv = rng.standard_normal((n_val, d), dtype=np.float32)
    n_plant = n_val // 100
    src = rng.choice(n_train, n_plant, replace=False)
    dst = rng.choice(n_val, n_plant, replace=False)
    xv[dst] = xt[src]
    t, c = time.perf_counter(), time.process_time()
    res = exact_duplicates(xt, xv)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    found = {tuple(p) for p in res.pairs.tolist()}
    planted = set(zip(src.tolist(), dst.tolist()))
    return {"n_train": n_train, "n_val": n_val, "d": d, "seconds": dt, "cpu_seconds": dc, "planted": n_plant,
            "recall": len(found & planted) / n_plant, "false_pairs": len(found - planted)}


def bench_near(n_train: int, n_val: int, d: int, seed: int = 0, sklearn: bool = True) -> dict:
    from losslens.audit.near import faiss_available, near_duplicates

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d), dtype=np.float32)
    et = _clustered(rng, n_train, d, centres, 0.5)
    ev = _clustered(rng, n_val, d, centres, 0.5)
    n_plant = int(round(0.02 * n_val))
    src = rng.choice(n_train, n_plant, replace=False)
    dst = rng.choice(n_val, n_plant, replace=False)
    # noise norm ≈ 0.06 × a clustered embedding's norm: cosine distance ≈ 0.002 (median NN ≈ 0.2)
    ev[dst] = et[src] + 0.06 * np.linalg.norm(et[src], axis=1, keepdims=True) / np.sqrt(d) \
        * rng.standard_normal((n_plant, d), dtype=np.float32)
    out = {"n_train": n_train, "n_val": n_val, "d": d, "planted": n_plant}
    t, c = time.perf_counter(), time.process_time()
    res = near_duplicates(embeddings=(et, ev), metric="cosine", backend="numpy")
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - t, time.process_time() - c
    found = {tuple(p) for p in res.pairs.tolist()}
    planted = set(zip(src.tolist(), dst.tolist()))
    out.update(recall=len(found & planted) / n_plant, false_pairs=len(found - planted),
               median_nn_train=res.median_nn_train, radius=res.radius,
               planted_distance_over_median=float(np.median(res.nn_dist[dst]) / res.median_nn_train))
    if faiss_available():
        t = time.perf_counter()
        rf = near_duplicates(embeddings=(et, ev), metric="cosine", backend="faiss")
        out["faiss_seconds"] = time.perf_counter() - t
        out["faiss_same_nn"] = float(np.mean(rf.nn_idx == res.nn_idx))
    if sklearn:
        from sklearn.neighbors import NearestNeighbors

        t, c = time.perf_counter(), time.process_time()
        dist, idx = NearestNeighbors(n_neighbors=1, algorithm="brute", metric="cosine").fit(et).kneighbors(ev)
        out["sklearn_seconds"], out["sklearn_cpu_seconds"] = time.perf_counter() - t, time.process_time() - c
        out["sklearn_same_nn"] = float(np.mean(idx[:, 0] == res.nn_idx))
        out["sklearn_max_abs_dist_diff"] = float(np.abs(dist[:, 0] - res.nn_dist).max())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    args = ap.parse_args()
    s = args.scale
    try:
        from threadpoolctl import threadpool_info

        blas = [(i["internal_api"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
    except Exception:  # pragma: no cover
        blas = []
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}, BLAS {blas}")
    e = bench_exact(int(1_000_000 * s), int(200_000 * s), 64)
    print(f"exact duplicates: {e['n_train']:,} train × {e['n_val']:,} val × {e['d']} float32: "
          f"{e['seconds']:.2f} s wall, {e['cpu_seconds']:.2f} s CPU (target < 10 s); planted {e['planted']}, "
          f"recall {e['recall']:.3f}, false pairs {e['false_pairs']}")
    n = bench_near(int(100_000 * s), int(20_000 * s), 512, sklearn=not args.no_sklearn)
    line = (f"near duplicates: {n['n_train']:,} train × {n['n_val']:,} val × {n['d']}-d embeddings: "
            f"{n['seconds']:.1f} s wall, {n['cpu_seconds']:.1f} s CPU (target < 60 s; includes the "
            "within-training median from 2 000 references); "
            f"planted {n['planted']} (distance {n['planted_distance_over_median']:.3f} × median), recall "
            f"{n['recall']:.3f}, false pairs {n['false_pairs']}, radius {n['radius']:.4g}")
    print(line)
    if "faiss_seconds" in n:
        print(f"  faiss (exact flat index): {n['faiss_seconds']:.1f} s, "
              f"same nearest neighbour {n['faiss_same_nn']:.4f}")
    if "sklearn_seconds" in n:
        print(f"  scikit-learn NearestNeighbors(brute, cosine) 1-NN only: {n['sklearn_seconds']:.1f} s wall, "
              f"{n['sklearn_cpu_seconds']:.1f} s CPU; same "
              f"nearest neighbour for {100 * n['sklearn_same_nn']:.2f} % of queries; max |distance difference| "
              f"{n['sklearn_max_abs_dist_diff']:.2g}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
