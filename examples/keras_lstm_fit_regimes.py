"""Seed 004: "How to Diagnose Overfitting and Underfitting of LSTM Models" (Machine Learning Mastery).

The tutorial fits a small LSTM to a toy sequence problem -- predict the next
value of 0.0, 0.1, ..., 1.0: training inputs 0.0-0.4, validation inputs
0.5-0.9, one timestep, one feature, ``shuffle=False`` -- and reads the fit
regime from the curves:

* under-fit, more epochs would help: ``LSTM(10)``, Adam, MSE, 100 epochs
  ("performance may be improved by increasing the number of training epochs");
* under-fit, too little capacity: ``LSTM(1)``, SGD, MAE, 300 epochs
  ("increasing the capacity of the model");
* good fit: ``LSTM(10)``, Adam, MSE, 800 epochs (the curves meet and stabilize);
* over-fit: the same model for 1200 epochs: the validation loss "hits an
  inflection point, and starts to slope up again" -- stop training there.

This script runs each configuration with :class:`losslens.keras.LossLens` and
prints losslens's verdict next to the tutorial's: ``regime.still_improving``,
``regime.underfit_capacity``, ``regime.good_fit`` and ``regime.overfitting``
(with the epoch of the minimum of the validation loss, i.e. the inflection
point, and a suggested early-stopping patience).

Results (CPU, seed 0, full runs; the baseline loss of the best constant
predictor is 0.02 for MSE and 0.12 for MAE) -- all four agree with the tutorial:

* underfit: ``regime.still_improving`` (validation loss 0.544 -> 0.196, still
  falling 0.0029 ± 0.0005 per epoch);
* underfit_capacity: ``regime.underfit_capacity`` -- the validation loss still
  falls by 2.7e-5 ± 0.9e-5 per epoch, but the eval-mode training loss 0.107 is
  only 11 % below the baseline and, at its current 9e-6 per epoch, another 300
  epochs would bring it only to 0.104: training longer will not fix it;
* good_fit: ``regime.good_fit``, with the onset of overfitting noted: the
  validation loss reaches its minimum 1.0e-5 at epoch 722 and is beyond noise
  above it only for the last 29 epochs (3.6 % of the run);
* overfit: ``regime.overfitting`` with the minimum at epoch 722 (the inflection
  point), 1.0e-3 at epoch 1199, beyond noise since epoch 771.

Run::

    KERAS_BACKEND=torch python examples/keras_lstm_fit_regimes.py [--quick] [--out DIR] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from losslens.diagnose import diagnose  # noqa: E402
from losslens.keras import LossLens  # noqa: E402


def get_train() -> tuple[np.ndarray, np.ndarray]:
    """Inputs 0.0-0.4 (5, 1, 1), targets 0.1-0.5 (5,), as in the tutorial."""
    seq = np.array([[0.0, 0.1], [0.1, 0.2], [0.2, 0.3], [0.3, 0.4], [0.4, 0.5]], dtype="float32")
    return seq[:, 0].reshape((5, 1, 1)), seq[:, 1]


def get_val() -> tuple[np.ndarray, np.ndarray]:
    """Inputs 0.5-0.9 (5, 1, 1), targets 0.6-1.0 (5,)."""
    seq = np.array([[0.5, 0.6], [0.6, 0.7], [0.7, 0.8], [0.8, 0.9], [0.9, 1.0]], dtype="float32")
    return seq[:, 0].reshape((5, 1, 1)), seq[:, 1]


@dataclass(frozen=True)
class Config:
    """One of the tutorial's experiments."""

    name: str
    units: int
    loss: str
    optimizer: str
    epochs: int
    expected: tuple[str, ...]     # finding codes that agree with the tutorial's reading
    tutorial: str                 # the tutorial's reading, in its words

    def scaled(self, factor: int) -> "Config":
        return Config(self.name, self.units, self.loss, self.optimizer, max(4, self.epochs // factor),
                      self.expected, self.tutorial)


CONFIGS = {
    "underfit": Config("underfit", 10, "mse", "adam", 100, ("regime.still_improving", "regime.underfit_capacity"),
                       "under-fit: performance may be improved by increasing the number of training epochs"),
    "underfit_capacity": Config("underfit_capacity", 1, "mae", "sgd", 300, ("regime.underfit_capacity",),
                                "under-fit: the model is under-provisioned; increase its capacity"),
    "good_fit": Config("good_fit", 10, "mse", "adam", 800, ("regime.good_fit",),
                       "good fit: train and validation loss decrease and stabilize around the same point"),
    "overfit": Config("overfit", 10, "mse", "adam", 1200, ("regime.overfitting",),
                      "over-fit: the validation loss hits an inflection point and starts to rise"),
}

#: ``--quick`` divides the number of epochs by this factor and multiplies the
#: optimizer's default learning rate by it (Adam 0.001 -> 0.01, SGD 0.01 -> 0.1):
#: Adam's step is about the learning rate, so the same path is walked in fewer, longer steps.
QUICK_FACTOR = 10


def make_model(cfg: Config, lr_factor: float = 1.0) -> keras.Model:
    """``LSTM(units)`` on (1, 1) inputs, a linear ``Dense(1)``; the tutorial's loss and optimizer."""
    model = keras.Sequential([keras.Input((1, 1)), keras.layers.LSTM(cfg.units), keras.layers.Dense(1)])
    opt = (keras.optimizers.Adam(0.001 * lr_factor) if cfg.optimizer == "adam"
           else keras.optimizers.SGD(0.01 * lr_factor))
    model.compile(loss=cfg.loss, optimizer=opt)
    return model


def run_config(name: str, quick: bool = False, store: str | None = None, seed: int = 0, epochs: int | None = None):
    """Train one configuration; return ``(lens, history, diagnosis)``.

    Parameters
    ----------
    name : str
        A key of :data:`CONFIGS`.
    quick : bool
        Divide the epochs by :data:`QUICK_FACTOR` and multiply the learning rate by it.
    epochs : int or None
        Override the number of epochs.
    """
    cfg = CONFIGS[name]
    factor = QUICK_FACTOR if quick else 1
    cfg = cfg.scaled(factor)
    x, y = get_train()
    xv, yv = get_val()
    keras.utils.set_random_seed(seed)
    model = make_model(cfg, factor)
    lens = LossLens(train_data=(x, y), run=f"keras-lstm-{name}" + ("-quick" if quick else ""), store=store, seed=seed)
    history = model.fit(x, y, epochs=epochs or cfg.epochs, validation_data=(xv, yv), shuffle=False,
                        callbacks=[lens], verbose=0)
    return lens, history, diagnose(lens.run)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_FACTOR}x fewer epochs, {QUICK_FACTOR}x learning rate")
    ap.add_argument("--out", default="losslens-output", help="directory for the store and the HTML reports")
    ap.add_argument("--only", choices=sorted(CONFIGS), help="run one configuration")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from losslens.report import Report
    rows = []
    for name in ([args.only] if args.only else list(CONFIGS)):
        lens, history, diag = run_config(name, args.quick, store=str(out / "losslens.db"))
        report = Report(diag)
        report.print()
        path = report.save_html(out / f"keras_lstm_{name}.html")
        regime = next((c for c in diag.codes() if c.startswith("regime.")), "-")
        f = diag.get("regime.overfitting")
        extra = f" (best epoch {f.data.get('best_epoch')})" if f is not None else ""
        agree = "yes" if regime in CONFIGS[name].expected else "NO"
        rows.append((name, CONFIGS[name].tutorial, regime + extra, agree, str(path)))
    print()
    for name, tut, regime, agree, path in rows:
        print(f"{name:18s} tutorial: {tut}\n{'':18s} losslens: {regime}  agrees: {agree}  report: {path}")


if __name__ == "__main__":
    main()
