"""Seed 004, "Multiple Runs Example": repeat the under-fit LSTM 5 times and look at the band, not one trace.

The tutorial ("How to Diagnose Overfitting and Underfitting of LSTM Models",
section 6) trains the same small LSTM five times on the same toy sequence
(training: 0.0 → 0.1, ..., 0.4 → 0.5; validation: 0.5 → 0.6, ..., 0.9 → 1.0),
300 epochs each, and plots all traces, because "LSTMs are stochastic, meaning
that you will get a different diagnostic plot each run". Here each repeat is
recorded with :class:`losslens.keras.LossLens` into one *experiment* of a
losslens store; :mod:`losslens.experiment` then draws the mean curves with
their bootstrap confidence bands, gives the verdicts across the 5 seeds (fit
regime, best epoch and its spread, gap-decomposition terms against within-run
and between-run noise) and checks that every repeat used the same split
(content fingerprints).

Run::

    KERAS_BACKEND=torch python examples/multiple_runs_lstm.py [--repeats 5] [--epochs 300] [--out DIR]

Writes ``DIR/losslens.db``, ``DIR/multiple_runs_lstm.html`` (band figures,
verdicts, tables) and ``DIR/multiple_runs_lstm.png`` (the band figure).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from losslens.experiment import load_experiment  # noqa: E402
from losslens.report.experiment import save_experiment_html  # noqa: E402
from losslens.report.figures import band_figure  # noqa: E402
from losslens.keras import LossLens  # noqa: E402
from losslens.store import Store  # noqa: E402

EXPERIMENT = "lstm-10-units-300-epochs"


def get_train() -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's training data: X (5, 1, 1), y (5,)."""
    seq = np.array([[0.0, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5]], dtype="float32")
    return seq[:, 0].reshape((5, 1, 1)), seq[:, 1]


def get_val() -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's validation data: X (5, 1, 1), y (5,)."""
    seq = np.array([[0.5, 0.6], [0.6, 0.7], [0.7, 0.8], [0.8, 0.9], [0.9, 1.0]], dtype="float32")
    return seq[:, 0].reshape((5, 1, 1)), seq[:, 1]


def make_model() -> keras.Model:
    """LSTM(10) + Dense(1), Adam, MSE: the tutorial's model."""
    model = keras.Sequential([keras.Input((1, 1)), keras.layers.LSTM(10), keras.layers.Dense(1, activation="linear")])
    model.compile(loss="mse", optimizer="adam")
    return model


def run_repeats(store_path: str, repeats: int = 5, epochs: int = 300, verbose: int = 0) -> None:
    """Train ``repeats`` seeds into the experiment :data:`EXPERIMENT` of ``store_path``."""
    X, y = get_train()
    vX, vy = get_val()
    for seed in range(repeats):
        keras.utils.set_random_seed(seed)
        model = make_model()
        lens = LossLens(train_data=(X, y), val_data=(vX, vy), run=f"lstm-seed{seed}", store=store_path,
                        experiment=EXPERIMENT, seed=seed)
        # LossLens also stores content fingerprints of the training and validation arrays in the run's
        # metadata, so the experiment can check that every repeat used the same split.
        model.fit(X, y, epochs=epochs, validation_data=(vX, vy), shuffle=False, callbacks=[lens], verbose=verbose)
        print(f"seed {seed}: last validation loss {lens.run.epochs[-1].measurements['validation'].mean:.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="number of seeds (default 5, as in the tutorial)")
    ap.add_argument("--epochs", type=int, default=300, help="epochs per run (default 300, as in the tutorial)")
    ap.add_argument("--out", default="losslens-output", help="directory for the store, HTML page and figure")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store_path = str(out / "losslens.db")
    with Store(store_path) as st:  # start the experiment afresh when re-run
        for row in st.list_runs():
            if row["experiment"] == EXPERIMENT:
                st.delete_run(row["id"])
    run_repeats(store_path, args.repeats, args.epochs)

    exp = load_experiment(store_path, EXPERIMENT)
    fig = band_figure(exp.bands(("validation", "eval_clean", "train_loss")),
                      title=f"{len(exp)} repeats of the LSTM: mean and 95 % bootstrap band")
    fig.savefig(out / "multiple_runs_lstm.png")
    save_experiment_html(exp, out / "multiple_runs_lstm.html")
    for f in exp.verdicts():
        print(f"[{f.severity}] {f.code}: {f.title}")
    print(f"figure: {out / 'multiple_runs_lstm.png'}\npage:   {out / 'multiple_runs_lstm.html'}")


if __name__ == "__main__":
    main()
