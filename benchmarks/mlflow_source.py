"""Runs per second of ``losslens diagnose --mlflow`` on an experiment of 1 000 runs (issue 15).

Starts a local ``mlflow server`` with a SQLite backend, logs ``--runs`` runs into one experiment with the MLflow
client (``loss`` and ``val_loss`` at step = epoch, ``--epochs`` epochs; five curve shapes, seeded), then times,
side by side in this one process tree:

* **fetch**: :func:`losslens.importers.mlflow_runs.load_mlflow` (the metric histories over HTTP, 8 threads);
* **diagnose, 1 worker** and **diagnose, N workers**: the whole command
  ``losslens diagnose --mlflow URI --experiment E --out DIR -q --workers W`` in a fresh process (fetch, diagnosis,
  one report.html/report.json per run, the overview), wall time, and the CPU time of the process and its
  workers.

Usage::

    python benchmarks/mlflow_source.py [--runs 1000] [--epochs 30] [--workers 2]

Wall time is the quantity here (a server's throughput); the numbers depend on the machine and its load, and no
measurement of losslens depends on them. It also checks that 1 and N workers write identical findings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curves(kind: int, epochs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    e = np.arange(epochs)
    noise = 0.003 * rng.normal(size=(2, epochs))
    if kind == 0:    # overfits
        return (1.5 * np.exp(-e / 5) + 0.05 + noise[0],
                0.9 * np.exp(-e / 5) + 0.5 + 0.02 * np.maximum(0, e - 12) ** 1.3 + noise[1])
    if kind == 1:    # still improving
        return 2.0 - 0.04 * e + noise[0], 2.05 - 0.04 * e + noise[1]
    if kind == 2:    # converged
        return 0.3 + 1.2 * np.exp(-e / 3) + noise[0], 0.45 + np.exp(-e / 3) + noise[1]
    if kind == 3:    # unstable: a spike
        t = 1.0 * np.exp(-e / 6) + 0.2 + noise[0]
        t[epochs // 2] += 3.0
        return t, t + 0.1 + noise[1]
    return 2.3 + noise[0], 2.3 + noise[1]   # flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    tmp = tempfile.mkdtemp(prefix="losslens-mlflow-")
    port = free_port()
    exe = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    server = subprocess.Popen([exe, "server", "--backend-store-uri", f"sqlite:///{tmp}/m.db",
                               "--default-artifact-root", f"{tmp}/art", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        client = MlflowClient(uri)
        exp = client.create_experiment("bench")
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for i in range(args.runs):
            rid = client.create_run(exp, run_name=f"run-{i:04d}").info.run_id
            tr, va = curves(i % 5, args.epochs, rng)
            ms = [Metric(k, float(v), 1000 + e, e) for e in range(args.epochs)
                  for k, v in (("loss", tr[e]), ("val_loss", va[e]))]
            client.log_batch(rid, metrics=ms)
        print(f"logged {args.runs} runs x {args.epochs} epochs in {time.perf_counter() - t0:.1f} s")

        from losslens.importers.mlflow_runs import load_mlflow

        t0 = time.perf_counter()
        runs = load_mlflow(uri, experiment="bench", errors=[])
        fetch = time.perf_counter() - t0
        print(f"fetch (load_mlflow, 8 threads): {len(runs)} runs in {fetch:.1f} s = {len(runs) / fetch:.0f} runs/s")

        results = {}
        for w in (1, args.workers):
            out = os.path.join(tmp, f"out{w}")
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            p = subprocess.run([shutil.which("losslens") or "losslens", "diagnose", "--mlflow", uri, "--experiment",
                                "bench", "--out", out, "-q", "--workers", str(w)], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            rows = json.load(open(os.path.join(out, "overview.json")))
            results[w] = (out, rows)
            print(f"diagnose --workers {w}: {len(rows)} runs in {wall:.1f} s wall = {len(rows) / wall:.1f} runs/s "
                  f"(CPU {cpu:.1f} s, exit {p.returncode})")
        a, b = results[1][1], results[args.workers][1]
        same = [r["headline"] for r in a] == [r["headline"] for r in b]
        counts: dict[str, int] = {}
        for r in a:
            counts[r["headline"]] = counts.get(r["headline"], 0) + 1
        print(f"verdicts: {counts}; identical with 1 and {args.workers} workers: {same}")
        if not same:
            sys.exit(1)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
