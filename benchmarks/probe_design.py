"""Simple random vs class-stratified probe sets (issue 18: "precision for the price").

For each seed ``s`` it trains the ``transformer`` workload of ``benchmarks/overhead.py`` (a 2-layer BERT from a
``BertConfig``, 4-class sequence classification, 4 000 training sequences, batch 32, AdamW; one torch thread) for
one epoch with seed ``s``, computes the exact eval-mode loss of every training sample, and asks, for the probe the
recorder would draw with ``probe_seed=s`` (200 samples: the minimum, which the budget gives this workload), under
both designs of ``losslens.recording.probe.probe_permutation``:

* the simple random probe (``strata=None``: the recorder's design before stratification, and its design when the
  labels cannot be read without the inputs);
* the probe stratified by class (the recorder's design for tensor or array labels);

whether the exact training loss lies within 2 standard errors of the probe's mean (the standard error computed as
the recorder computes it: sample standard deviation / sqrt(n)). Printed: per design, the share of runs missed and
the root mean square of the error in standard errors (1 for a calibrated standard error; below 1 is conservative).

Run::

    python benchmarks/probe_design.py --runs 20            # about 40 s of CPU per run
    python benchmarks/probe_design.py --runs 40 --first 40 --json b.json   # a second process...
    python benchmarks/probe_design.py --merge a.json b.json                # ...and the table of both
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

from losslens.recording.probe import PROBE_MIN, class_strata, probe_permutation  # noqa: E402


def exact_losses(seed: int, data) -> np.ndarray:
    """Per-sample eval-mode losses of every training sample after one epoch of seed ``seed``, shape (n_train,)."""
    _, make_model, make_opt, batch, val_batch, _, _ = overhead.WORKLOADS["transformer"]
    Xtr, ytr, _, _ = data
    torch.manual_seed(seed)
    model = make_model()
    opt = make_opt(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(ytr), generator=g)
    for i in range(0, len(ytr), batch):
        idx = order[i:i + batch]
        opt.zero_grad()
        loss_fn(model(Xtr[idx]), ytr[idx]).backward()
        opt.step()
    return overhead.eval_pass(model, Xtr, ytr, val_batch, torch.device("cpu"), per_sample=True)


def z_scores(losses: np.ndarray, seed: int, strata: np.ndarray, n: int = PROBE_MIN) -> dict[str, float]:
    """(probe mean − exact mean) / probe standard error, for the simple random and the stratified probe."""
    out = {}
    for design, s in (("simple random", None), ("stratified", strata)):
        sub = losses[probe_permutation(seed, losses.size, s)[:n]]
        out[design] = float((sub.mean() - losses.mean()) / (sub.std(ddof=1) / math.sqrt(n)))
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{len(rows)} runs (seeds {min(r['seed'] for r in rows)}-{max(r['seed'] for r in rows)}), probe of "
             f"{PROBE_MIN} of 4 000 training sequences",
             f"  {'design':<15}{'runs missed (|z| > 2)':>24}{'rms z':>8}"]
    for design in ("simple random", "stratified"):
        z = np.array([r[design] for r in rows])
        lines.append(f"  {design:<15}{f'{int(np.sum(np.abs(z) > 2))} of {z.size}':>24}"
                     f"{float(np.sqrt(np.mean(z ** 2))):>8.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--first", type=int, default=0, help="seed of the first run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge", nargs="*", default=None)
    a = ap.parse_args(argv)
    if a.merge is not None:
        print(table([r for f in a.merge for r in json.loads(Path(f).read_text())]))
        return 0
    torch.set_num_threads(1)
    data = overhead.transformer_data(0)
    strata = class_strata(data[1].numpy())
    rows = []
    for seed in range(a.first, a.first + a.runs):
        rows.append({"seed": seed, **z_scores(exact_losses(seed, data), seed, strata)})
        print(json.dumps(rows[-1]), flush=True)
        if a.json:
            Path(a.json).write_text(json.dumps(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
