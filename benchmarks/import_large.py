"""Import a 1 000 000-step log and build its report; the issue's bound is 10 s.

Writes a Lightning ``CSVLogger``-style ``metrics.csv`` (``log_every_n_steps=1``:
one ``train_loss_step`` row per optimizer step, an epoch-mean row and a
validation row per epoch, a learning-rate column) with 100 epochs of 10 000
steps, then times

1. ``losslens.importers.load_log`` (parse, place every step, timing estimate),
2. ``losslens.diagnose.diagnose``,
3. ``Report.save_html`` and ``Report.save_json`` (figures decimate the step series).

Usage::

    python benchmarks/import_large.py [--steps 1000000] [--epochs 100] [--keep DIR]

Prints one line per phase and the total; exits 1 when the total exceeds 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def write_log(path: str, steps: int, epochs: int, seed: int = 0) -> None:
    """A synthetic but realistic Lightning metrics.csv: noisy decaying step losses, a spike now and then."""
    rng = np.random.default_rng(seed)
    spe = steps // epochs
    t = np.arange(steps) / spe
    loss = 0.2 + 2.0 * np.exp(-t / 8) + rng.normal(0, 0.05, steps) * (1 + np.exp(-t))
    loss[rng.integers(0, steps, steps // 20000)] += 3.0  # spikes
    lines = ["epoch,lr-Adam,step,train_loss_epoch,train_loss_step,val_loss"]
    for e in range(epochs):
        s0 = e * spe
        block = [f"{e},,{s},,{loss[s]:.6f}," for s in range(s0, s0 + spe)]
        block[0] = f"{e},0.001,{s0},,{loss[s0]:.6f},"
        lines.extend(block)
        last = s0 + spe - 1
        lines.append(f"{e},,{last},,,{0.25 + 2.0 * np.exp(-(e + 1) / 8) + 0.002 * e:.6f}")
        lines.append(f"{e},,{last},{loss[s0:s0 + spe].mean():.6f},,")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--keep", default=None, help="folder to keep the log and the reports in")
    args = ap.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    folder = args.keep or tempfile.mkdtemp(prefix="losslens-bench-")
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "metrics.csv")
    t0 = time.perf_counter()
    write_log(log, args.steps, args.epochs)
    print(f"wrote {log} ({os.path.getsize(log) / 1e6:.1f} MB, {args.steps} steps) in {time.perf_counter() - t0:.1f} s")

    t = time.perf_counter()
    from losslens.diagnose import diagnose
    from losslens.importers import load_log
    from losslens.report import Report
    t_import_modules = time.perf_counter() - t

    cpu0 = time.process_time()
    t = time.perf_counter()
    run = load_log(log)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    d = diagnose(run)
    t_diag = time.perf_counter() - t
    t = time.perf_counter()
    rep = Report(d)
    rep.save_html(os.path.join(folder, "report.html"))
    rep.save_json(os.path.join(folder, "report.json"))
    t_report = time.perf_counter() - t
    total = t_load + t_diag + t_report
    cpu = time.process_time() - cpu0
    print(f"python imports  {t_import_modules:6.2f} s (not counted)")
    print(f"load_log        {t_load:6.2f} s  ({len(run.steps)} step rows, {len(run.epochs)} epochs, "
          f"timing method {run.meta.get('timing_method')})")
    print(f"diagnose        {t_diag:6.2f} s  ({', '.join(d.codes())})")
    html_mb = os.path.getsize(os.path.join(folder, "report.html")) / 1e6
    print(f"report html+json{t_report:6.2f} s  ({html_mb:.1f} MB html)")
    print(f"total           {total:6.2f} s  (bound: 10 s; CPU time of this process {cpu:.2f} s)")
    return 0 if total < 10.0 else 1


if __name__ == "__main__":
    sys.exit(main())
