"""How long the command line takes to answer (issue 16, item 10): ``losslens --help`` and ``losslens diagnose`` of
a 10-row Keras CSV, each as a fresh process, the median of ``--repeat`` runs (wall time, and CPU time of the
process), beside ``python -c pass`` as the floor every Python command pays.

Usage::

    python benchmarks/cli_speed.py [--repeat 7]

Goals from the issue: ``--help`` under 0.3 s, ``diagnose`` of a 10-row log under 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="losslens-cli-")
    log = os.path.join(folder, "training.log")
    with open(log, "w") as fh:
        fh.write("epoch,loss,val_loss\n" + "".join(f"{e},{1 / (e + 1):.4f},{1.1 / (e + 1) + 0.01 * e:.4f}\n"
                                                   for e in range(10)))
    exe = [sys.executable, "-c", "from losslens.cli import main; main()"]
    cases = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "losslens --help": exe + ["--help"],
        "losslens diagnose (10-row CSV)": exe + ["diagnose", log, "--out", os.path.join(folder, "out"), "-q"],
        "losslens diagnose --format json": exe + ["diagnose", log, "--out", os.path.join(folder, "out"),
                                                  "--format", "json"],
    }
    timed(cases["losslens --help"])  # warm the file cache
    print(f"{'command':34s} {'wall (median)':>14s} {'CPU (median)':>13s}")
    results = {}
    for name, cmd in cases.items():
        runs = [timed(cmd) for _ in range(args.repeat)]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        results[name] = wall
        print(f"{name:34s} {wall:12.3f} s {cpu:11.3f} s", flush=True)
    print(f"goals: --help < 0.3 s ({'met' if results['losslens --help'] < 0.3 else 'not met'}), diagnose < 0.5 s "
          f"({'met' if results['losslens diagnose (10-row CSV)'] < 0.5 else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
