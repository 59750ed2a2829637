"""Five repeats of one small PyTorch model, recorded with :class:`losslens.torch.LossLens`: bands, verdicts, compare.

One run is one sample. This script trains a small MLP on scikit-learn's
digits five times (seeds 0–4) with dropout 0.5 and five times without
dropout, on one fixed train/validation split, records every run with
``losslens.torch.LossLens`` into two experiments of one store, and writes

* ``DIR/multiple_runs_torch.html``: the experiment page of the dropout-0.5
  runs (mean curves with 95 % bootstrap bands on epochs and on samples seen,
  the fit regime across seeds, the best epoch and its spread, each
  gap-decomposition term judged against within-run and between-run noise);
* ``DIR/multiple_runs_torch.png``: its band figure;
* ``DIR/compare_dropout.html`` / ``.json``: ``losslens compare`` of the two
  experiments (the train-mode term is the dropout's cost; the comparison says
  which differences are beyond noise).

Run::

    python examples/multiple_runs_torch.py [--repeats 5] [--epochs 20] [--out DIR]

The same comparison from the shell::

    losslens compare mlp-dropout-0.0 mlp-dropout-0.5 --store DIR/losslens.db --html DIR/compare.html
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from losslens.experiment import compare, load_experiment
from losslens.report.experiment import save_comparison_html, save_experiment_html
from losslens.report.figures import band_figure
from losslens.store import Store
from losslens.torch import LossLens


def make_split(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A fixed 1200/597 split of the digits (inputs scaled to [0, 1]); the split seed is not the training seed."""
    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(X)))
    tr, va = perm[:1200], perm[1200:]
    return (X[tr], y[tr]), (X[va], y[va])


def train_one(seed: int, dropout: float, epochs: int, store: Store, experiment: str, train, val) -> None:
    """Train one seed and record it with Lens."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    # Lens also stores content fingerprints of the training (probe) and validation sets in the run's metadata,
    # so the experiment can check that every seed used the same split.
    lens = LossLens(model, loss_fn, train_data=train, val_data=val, run=f"{experiment}-seed{seed}", store=store,
                experiment=experiment, seed=seed, optimizer=opt)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(yb))
        lens.end_epoch()
    lens.finish()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="seeds per configuration (default 5)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    ap.add_argument("--out", default="losslens-output", help="directory for the store, pages and figure")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = make_split()
    names = {0.5: "mlp-dropout-0.5", 0.0: "mlp-dropout-0.0"}
    with Store(out / "losslens.db") as store:
        for row in store.list_runs():  # start both experiments afresh when re-run
            if row["experiment"] in names.values():
                store.delete_run(row["id"])
        for dropout, name in names.items():
            for seed in range(args.repeats):
                train_one(seed, dropout, args.epochs, store, name, train, val)
                print(f"{name}: seed {seed} done")
    exp = load_experiment(out / "losslens.db", names[0.5])
    band_figure(exp.bands(), title=f"{len(exp)} seeds, dropout 0.5: mean and 95 % bootstrap band").savefig(
        out / "multiple_runs_torch.png")
    save_experiment_html(exp, out / "multiple_runs_torch.html")
    for f in exp.verdicts():
        print(f"[{f.severity}] {f.code}: {f.title}")
    base = load_experiment(out / "losslens.db", names[0.0])
    result = compare(base.runs, exp.runs, base.name, exp.name)
    print()
    print(result.to_text())
    save_comparison_html(result, out / "compare_dropout.html", base.runs, exp.runs)
    (out / "compare_dropout.json").write_text(json.dumps(result.to_dict(), indent=2))
    print(f"\npages: {out / 'multiple_runs_torch.html'}, {out / 'compare_dropout.html'}")


if __name__ == "__main__":
    main()
