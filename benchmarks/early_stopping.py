"""Early stopping rules compared on replayed real training runs (issue 14).

Each run is a small, seeded, CPU training run (MLPs of several sizes, with and without dropout; digits, breast
cancer, wine, a regression and a noisy-label task), recorded in full with ``losslens.torch.LossLens`` for
``EPOCHS`` epochs (per-sample validation losses each epoch). Every rule is then replayed on the recorded
validation curve as if it had run during training:

* ``losslens p=3/5/10``: :class:`losslens.recording.stopping.NoiseAwareStopper` with that ``patience``, restoring
  its best epoch;
* ``keras p=3/5/10``: Keras ``EarlyStopping(patience=p, restore_best_weights=True)`` (stop after p epochs without
  a strict improvement; restore the best epoch seen);
* ``lightning``: Lightning ``EarlyStopping`` defaults (patience 3, ``min_delta=0``), which keeps the last weights.

Per rule: the regret (validation loss of the kept epoch minus the best of the full run, in standard errors of that
paired difference; 0 when it kept the best), the epochs trained, and the share of premature stops (a regret above
2 standard errors). The 30 configurations (5 tasks x 6 models: widths 32-256, dropout 0 or 0.3, learning rates
1e-3 to 1e-2, all or a quarter or half of the training split) include runs that keep improving and runs that
overfit early; ``--seed`` shifts the seeds (the stopper's settings were chosen with ``--seed 1``; the README
reports ``--seed 0``). Run: ``python benchmarks/early_stopping.py [--runs 30] [--epochs 100] [--seed 0]``
(about a minute on 2 cores).

Two more rows bound what any rule could do on the same runs: ``oracle at keras p=N`` stops each run where its
regret plus λ·epochs is least, knowing the whole curve (a Lagrangian relaxation: λ is the smallest on a grid whose
mean epochs do not exceed Keras's at patience N). Its distance below Keras is the room there is; an online rule
sees only the epochs so far.

``--search`` replays, besides, families of online rules over a grid of their settings (:data:`FAMILIES`) and prints,
for Keras's patience 3, 5 and 10, the lowest mean regret each family reaches with at most Keras's mean epochs
(``-`` when no setting has a lower regret than Keras at that budget): patience on a smoothed curve (the request
of keras-team/keras#18210), patience that grows with the best epoch (the ``patience_increase`` of the Theano
deep-learning tutorials), patience plus a one-sided CUSUM stop on the rise above the best epoch (Page 1954),
patience scaled by how far the curve's epoch-to-epoch scatter exceeds the paired sampling error, and
:class:`~losslens.recording.stopping.NoiseAwareStopper` at every patience. ``--search`` adds about half a minute.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine  # noqa: E402
from torch import nn  # noqa: E402

from losslens.recording.stopping import MIN_CURVE_POINTS, NoiseAwareStopper, scatter_sigma  # noqa: E402
from losslens.torch import LossLens  # noqa: E402


def _task(name: str, seed: int, train_fraction: float = 1.0):
    rng = np.random.default_rng(seed)
    if name == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    elif name == "cancer":
        X, y = load_breast_cancer(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
    elif name == "wine":
        X, y = load_wine(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
    elif name == "noisy-digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        flip = rng.random(len(y)) < 0.3
        y = np.where(flip, rng.integers(0, 10, len(y)), y)
    else:  # diabetes regression
        X, y = load_diabetes(return_X_y=True)
        X = (X - X.mean(0)) / X.std(0)
        y = (y - y.mean()) / y.std()
    p = rng.permutation(len(y))
    X, y = X[p].astype("float32"), y[p]
    n_val = len(y) // 3
    reg = name == "diabetes"
    yt = torch.tensor(y, dtype=torch.float32).reshape(-1, 1) if reg else torch.tensor(y, dtype=torch.long)
    Xt = torch.tensor(X)
    n_out = 1 if reg else int(y.max()) + 1
    n_train = n_val + max(32, int(round(train_fraction * (len(y) - n_val))))
    return (Xt[n_val:n_train], yt[n_val:n_train], Xt[:n_val], yt[:n_val], n_out,
            (nn.MSELoss() if reg else nn.CrossEntropyLoss()))


def record_run(task: str, hidden: int, dropout: float, lr: float, train_fraction: float, seed: int,
               epochs: int) -> tuple[np.ndarray, list]:
    """Train one run and return its validation curve and per-sample validation losses per epoch."""
    Xtr, ytr, Xva, yva, n_out, loss_fn = _task(task, seed, train_fraction)
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(Xtr.shape[1], hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lens = LossLens(model, loss_fn, train_data=(Xtr, ytr), val_data=(Xva, yva), store=None, probe_size=0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(idx))
        lens.end_epoch()
    vs = [e.get("validation") for e in lens.run.epochs]
    return np.array([m.mean for m in vs]), [m.values.astype(np.float64) for m in vs]


def keras_rule(v: np.ndarray, patience: int, restore: bool = True, grow: float = 0.0) -> tuple[int, int]:
    """(epochs trained, epoch kept) for Keras/Lightning-style patience on raw values (min_delta 0); with ``grow``,
    the patience is ``max(patience, grow · best epoch)``."""
    best, wait = 0, 0
    for t in range(1, len(v)):
        if v[t] < v[best]:
            best, wait = t, 0
        else:
            wait += 1
            if wait >= max(patience, math.ceil(grow * best)):
                return t + 1, best if restore else t
    return len(v), best if restore else len(v) - 1


def losslens_rule(v: np.ndarray, samples: list, patience: int = 10) -> tuple[int, int]:
    stopper = NoiseAwareStopper(patience=patience)
    for t in range(len(v)):
        d = stopper.update(t, v[t], samples[t])
        if d.stop:
            return t + 1, d.best_epoch
    return len(v), stopper.decision.best_epoch if stopper.decision else len(v) - 1


def regret(v: np.ndarray, samples: list, kept: int) -> float:
    best = int(np.argmin(v))
    if kept == best:
        return 0.0
    d = samples[kept] - samples[best]
    se = d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() / se) if se > 0 else 0.0


def paired_se(samples: list) -> np.ndarray:
    """Standard errors of every paired difference of two epochs, shape (epochs, epochs)."""
    S = np.stack(samples)
    C = np.cov(S)
    d = np.diag(C)
    return np.sqrt(np.maximum(d[:, None] + d[None, :] - 2 * C, 0.0) / S.shape[1])


def regret_curve(v: np.ndarray, samples: list) -> np.ndarray:
    """:func:`regret` of stopping after ``tau`` epochs and restoring the lowest value seen, for tau = 1 .. len(v)."""
    kept = [int(np.argmin(v[:tau])) for tau in range(1, len(v) + 1)]
    by_epoch = {k: regret(v, samples, k) for k in set(kept)}
    return np.array([by_epoch[k] for k in kept])


def oracle(curves: list[np.ndarray], max_epochs: float) -> tuple[float, float]:
    """(mean regret, mean epochs) of the offline stops that minimise regret + λ·epochs per run, for the smallest λ on a
    log grid whose mean epochs are at most ``max_epochs``."""
    for lam in np.geomspace(1e-4, 10.0, 200):
        taus = [int(np.argmin(c + lam * np.arange(1, len(c) + 1))) for c in curves]
        eps = float(np.mean(taus)) + 1
        if eps <= max_epochs + 1e-9:
            return float(np.mean([c[t] for c, t in zip(curves, taus)])), eps
    return math.inf, math.inf


def _scatter(v: np.ndarray) -> float:
    """The curve's scatter, as the stopper trusts it: 0 before ``MIN_CURVE_POINTS`` values."""
    return scatter_sigma(v) if len(v) >= MIN_CURVE_POINTS else 0.0


def smoothed_patience(v, se, samples, p: int, m: int) -> tuple[int, int]:
    """Patience counted on the moving average of the last ``m`` values; the lowest raw value is restored."""
    best, sbest, wait = 0, math.inf, 0
    for t in range(len(v)):
        best = t if v[t] < v[best] else best
        sm = float(np.mean(v[max(0, t - m + 1):t + 1]))
        if sm < sbest:
            sbest, wait = sm, 0
        else:
            wait += 1
            if wait >= p:
                return t + 1, best
    return len(v), best


def growing_patience(v, se, samples, p: int, g: float) -> tuple[int, int]:
    """Patience ``max(p, g · best epoch)``."""
    return keras_rule(v, p, grow=g)


def cusum_patience(v, se, samples, p: int, k: float, h: float) -> tuple[int, int]:
    """Keras's patience, and a stop when the CUSUM of (value − level of the best) / SE − k passes h; SE is the paired
    error plus the curve's scatter, the level the median of the best epoch and its neighbours."""
    best, wait, S = 0, 0, 0.0
    for t in range(1, len(v)):
        if v[t] < v[best]:
            best, wait, S = t, 0, 0.0
            continue
        wait += 1
        level = float(np.median(v[max(0, best - 1):min(best + 2, t)]))
        s = math.sqrt(se[t, best] ** 2 + 2 * _scatter(v[:t + 1]) ** 2)
        S = max(0.0, S + (v[t] - level) / s - k) if s > 0 else S
        if S > h or wait >= p:
            return t + 1, best
    return len(v), best


def scaled_patience(v, se, samples, p: int, a: float, hi: float) -> tuple[int, int]:
    """Patience ``p · clip(a · √2·scatter / paired SE of neighbouring epochs, 1/3, hi)``: longer where epochs differ
    by more than the sampling error (later values may still be materially lower), shorter where they do not."""
    best, wait = 0, 0
    for t in range(1, len(v)):
        if v[t] < v[best]:
            best, wait = t, 0
            continue
        wait += 1
        adj = float(np.median([se[i, i - 1] for i in range(max(1, t - 9), t + 1)]))
        ratio = math.sqrt(2) * _scatter(v[:t + 1]) / adj if adj > 0 and t >= 5 else 1.0
        if wait >= p * min(hi, max(1 / 3, a * ratio)):
            return t + 1, best
    return len(v), best


#: Online rule families for ``--search``: name -> (rule, grid of settings); every grid includes patience 2-14.
FAMILIES = {
    "smoothed patience": (smoothed_patience, [dict(m=m) for m in (2, 3, 4)]),
    "patience growing with the best epoch": (growing_patience, [dict(g=g) for g in (0.1, 0.2, 0.3, 0.5)]),
    "patience + CUSUM stop": (cusum_patience, [dict(k=k, h=h) for k in (0.0, 0.5, 1.0) for h in (2.0, 3.0, 4.0, 6.0)]),
    "patience scaled by scatter / SE": (scaled_patience, [dict(a=a, hi=hi) for a in (0.5, 0.75, 1.0, 1.5)
                                                          for hi in (1.5, 2.0, 3.0)]),
    "losslens (NoiseAwareStopper)": (lambda v, se, s, p: losslens_rule(v, s, p), [{}]),
}


CONFIGS = [(t, h, d, lr, f) for t in ("digits", "cancer", "wine", "noisy-digits", "diabetes")
           for (h, d, lr, f) in ((32, 0.0, 3e-3, 1.0), (128, 0.0, 3e-3, 1.0), (128, 0.3, 1e-3, 1.0),
                                 (256, 0.0, 3e-3, 0.25), (256, 0.3, 1e-3, 0.25), (64, 0.0, 1e-2, 0.5))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", action="store_true", help="also replay the rule families of FAMILIES")
    a = ap.parse_args(argv)
    runs = []
    for i in range(a.runs):
        task, h, d, lr, f = CONFIGS[i % len(CONFIGS)]
        runs.append(record_run(task, h, d, lr, f, seed=a.seed + i // len(CONFIGS), epochs=a.epochs))
    rules = {}
    for p in (3, 5, 10):
        rules[f"keras p={p}"] = lambda v, s, p=p: keras_rule(v, p)
        rules[f"losslens p={p}"] = lambda v, s, p=p: losslens_rule(v, s, p)
    rules["lightning (p=3, last weights)"] = lambda v, s: keras_rule(v, 3, restore=False)
    print(f"{len(runs)} runs of {a.epochs} epochs (5 tasks x 6 models x seeds), rules replayed on the recorded "
          "validation curves\n")
    print(f"{'rule':32s}{'mean regret (SE)':>18s}{'median':>8s}{'epochs trained':>16s}{'premature stops':>17s}")
    keras_at = {}
    for name, rule in rules.items():
        regs, eps = [], []
        for v, s in runs:
            n, kept = rule(v, s)
            regs.append(regret(v, s, kept))
            eps.append(n)
        regs_a = np.array(regs)
        if name.startswith("keras"):
            keras_at[int(name.split("=")[1])] = (float(regs_a.mean()), float(np.mean(eps)))
        print(f"{name:32s}{regs_a.mean():18.2f}{np.median(regs_a):8.2f}{np.mean(eps):16.1f}"
              f"{100 * np.mean(regs_a > 2):16.0f} %")
    ses = [paired_se(s) for _, s in runs]
    curves = [regret_curve(v, s) for v, s in runs]
    for p, (_, eps) in keras_at.items():
        r, e = oracle(curves, eps)
        print(f"{'oracle at keras p=' + str(p):32s}{r:18.2f}{'':8s}{e:16.1f}")
    if a.search:
        print("\nLowest mean regret at most Keras's mean epochs (- : none below Keras's regret), patience 2-14:")
        print(f"{'family':40s}" + "".join(f"{'keras p=' + str(p):>18s}" for p in keras_at))
        print(f"{'keras':40s}" + "".join(f"{r:11.3f} /{e:5.1f}" for r, e in keras_at.values()))
        for fam, (rule, grid) in FAMILIES.items():
            points = []
            for kw in grid:
                for p in range(2, 15):
                    res = [rule(v, se, s, p=p, **kw) for (v, s), se in zip(runs, ses)]
                    points.append((float(np.mean([regret(v, s, k) for (v, s), (_, k) in zip(runs, res)])),
                                   float(np.mean([n for n, _ in res]))))
            cells = []
            for r_k, e_k in keras_at.values():
                ok = [pt for pt in points if pt[1] <= e_k + 1e-9 and pt[0] < r_k - 1e-9]
                cells.append(f"{min(ok)[0]:11.3f} /{min(ok)[1]:5.1f}" if ok else f"{'-':>18s}")
            print(f"{fam:40s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
