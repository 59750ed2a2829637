"""Time and memory of ``losslens diagnose`` on very long logs: both must follow the log's size (issue 13).

Two ladders of synthetic logs, each diagnosed by ``losslens diagnose LOG --out DIR -q`` in a fresh process
that reports its own peak resident memory (``ru_maxrss``) and CPU time:

* **step rows**: a Lightning ``CSVLogger`` ``metrics.csv`` with one ``train_loss_step`` row per optimizer step
  (100 epochs), 10^5, 10^6 and 10^7 rows (10^7 rows is a 210 MB file);
* **epoch rows**: a Keras ``CSVLogger`` file with one row per epoch, 10^3, 10^4 and 10^5 rows.

Usage::

    python benchmarks/large_logs.py [--max-step-rows 10000000] [--max-epoch-rows 100000]

Prints one line per log: rows, file size, CPU seconds, peak memory, and the CPU time per row relative to the
smallest log of its ladder (1.0 = linear). Exits 1 when the largest step log needs 2 GB or more, or when a
ladder's time per row grows more than 2× from its smallest to its largest log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

CHILD = """
import json, resource, sys, time
t = time.process_time()
from losslens.cli import main
try:
    main(["diagnose", sys.argv[1], "--out", sys.argv[2], "-q"])
except SystemExit as exc:
    code = exc.code
res = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": res.ru_utime + res.ru_stime, "rss_mb": res.ru_maxrss / 1024, "code": code}))
"""


def write_step_log(path: str, rows: int, epochs: int = 100, seed: int = 0) -> None:
    """Lightning metrics.csv, written epoch by epoch (never the whole file in memory)."""
    rng = np.random.default_rng(seed)
    spe = rows // epochs
    with open(path, "w") as fh:
        fh.write("epoch,step,train_loss_step,val_loss,train_loss_epoch\n")
        for e in range(epochs):
            steps = np.arange(e * spe, (e + 1) * spe)
            loss = 0.2 + 2.0 * np.exp(-steps / spe / 8) + rng.normal(0, 0.05, spe)
            fh.write("".join(f"{e},{s},{v:.5f},,\n" for s, v in zip(steps.tolist(), loss.tolist())))
            fh.write(f"{e},{steps[-1]},,{0.25 + 2.0 * np.exp(-(e + 1) / 8) + 0.002 * e:.5f},\n")
            fh.write(f"{e},{steps[-1]},,,{loss.mean():.5f}\n")


def write_epoch_log(path: str, rows: int, seed: int = 0) -> None:
    """Keras CSVLogger file with one row per epoch: a falling training loss, a validation loss that turns."""
    rng = np.random.default_rng(seed)
    e = np.arange(rows)
    loss = 1.0 / (1 + e / 50) + rng.normal(0, 0.01, rows)
    val = 1.1 / (1 + e / 50) + 1e-6 * e + rng.normal(0, 0.01, rows)
    with open(path, "w") as fh:
        fh.write("epoch,loss,val_loss\n")
        fh.write("".join(f"{a},{b:.6f},{c:.6f}\n" for a, b, c in zip(e.tolist(), loss.tolist(), val.tolist())))


def measure(log: str, out: str) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, log, out], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got["code"] not in (0, None):
        raise RuntimeError(f"losslens diagnose exited {got['code']}: {res.stderr[-2000:]}")
    return got


def ladder(name: str, sizes: list[int], writer, folder: str) -> list[dict]:
    out = []
    for n in sizes:
        log = os.path.join(folder, f"{name}-{n}.csv")
        writer(log, n)
        got = measure(log, os.path.join(folder, f"out-{name}-{n}"))
        got.update(rows=n, mb=os.path.getsize(log) / 1e6)
        out.append(got)
        base = out[0]["cpu"] / out[0]["rows"]
        print(f"{name:10s} {n:>10d} rows {got['mb']:8.1f} MB  {got['cpu']:7.2f} s CPU  {got['rss_mb']:7.0f} MB peak  "
              f"time per row ×{got['cpu'] / n / base:4.2f}", flush=True)
        os.remove(log)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-step-rows", type=int, default=10_000_000)
    ap.add_argument("--max-epoch-rows", type=int, default=100_000)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="losslens-large-")
    steps = [n for n in (100_000, 1_000_000, 10_000_000) if n <= args.max_step_rows]
    epochs = [n for n in (1_000, 10_000, 100_000) if n <= args.max_epoch_rows]
    s = ladder("step rows", steps, write_step_log, folder)
    e = ladder("epoch rows", epochs, write_epoch_log, folder)
    ok = True
    for lad in (s, e):
        # fixed start-up cost (imports, figures) makes the smallest log the most expensive per row: compare the
        # two largest, where the per-row cost dominates
        if len(lad) >= 2:
            a, b = lad[-2], lad[-1]
            growth = (b["cpu"] / b["rows"]) / (a["cpu"] / a["rows"])
            ok &= growth <= 2.0
            print(f"time per row, largest / second largest: ×{growth:.2f} (bound ×2)")
    if s:
        print(f"peak memory of the largest step log: {s[-1]['rss_mb']:.0f} MB (bound 2048 MB)")
        ok &= s[-1]["rss_mb"] < 2048
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
