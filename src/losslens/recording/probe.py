"""The parts of the measurement protocol every adapter shares (framework-free).

* the probe set: a fixed, seeded random subset of the training set, the same
  every epoch, whose default size is bounded by a cost budget counted from
  sample counts, never from seconds measured at run time (DESIGN.md: "where a
  fixed default count and the budget conflict, the budget wins and the standard
  error says what precision it bought"), so the same seed gives the same probe
  on any machine and under any load;
* the baseline loss: the loss of the best constant predictor, against which
  the diagnosis judges whether a loss is high (skill = 1 − loss / baseline).

The adapters (:mod:`losslens.torch`, :mod:`losslens.keras`) call these
functions, so the rule is the same whatever records the run. A wall-clock budget
(:func:`timed_probe_size`) is only used when asked for explicitly
(``probe_size="timed"``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["PROBE_CAP", "PROBE_MIN", "PILOT_SIZE", "TRAIN_STEP_FORWARDS", "probe_permutation", "class_strata",
           "STRATA_MAX", "probe_size_cap",
           "budget_probe_size", "timed_probe_size", "inherited_probe_size", "baseline_loss",
           "EVAL_BATCH_MAX", "EVAL_BATCH_INPUT_BYTES", "default_eval_batch_size"]

#: Upper bound of the default probe size (samples). Above ~10 000 samples the
#: standard error of a probe mean is already far below the epoch-to-epoch changes
#: the diagnosis judges (it shrinks as 1/sqrt(n)); DESIGN.md sets this cap.
PROBE_CAP = 10_000

#: Smallest probe the cost budget may choose (samples), unless the training set
#: is smaller. With 200 samples the standard error of a mean loss is ~7 % of the
#: per-sample standard deviation (1/sqrt(200)), enough to tell the terms apart in
#: the scenarios of tests/test_torch_scenarios.py.
PROBE_MIN = 200

#: Samples in the timed pilot pass of ``probe_size="timed"`` (:func:`timed_probe_size`).
PILOT_SIZE = 256

#: Cost of one training sample (forward, backward, update) in units of one probe-pass sample (an eval-mode or
#: train-mode forward without gradients). By FLOPs a training sample costs about three forwards (Kaplan et al. 2020,
#: "Scaling Laws for Neural Language Models", sec. 2.1: ~2N FLOPs per token forward, ~6N for training), but measured
#: CPU time says less: ``python benchmarks/overhead.py --pass-costs``, one thread, two runs, a training sample costs
#: 1.70-1.90 eval-mode samples at the user's validation batch and 2.11 train-mode samples on the CNN, 1.67-2.11
#: train-mode (dropout) samples and 4.4-5.3 eval-mode samples on the 2-layer BERT, 4.4 and 16.5 on the MLP. With 3 the
#: CNN's probe passes cost 4.4 % of its training where the budget said 3 % (issue 18). 1.5 lies below every measured
#: ratio, so the budget is an upper bound on these workloads.
TRAIN_STEP_FORWARDS = 1.5

#: Largest default eval-mode batch on CPU (samples).
EVAL_BATCH_MAX = 2048

#: Inputs per default eval-mode batch on CPU (bytes): a batch is the training batch size, or more samples while their
#: inputs fit in 32 KiB. On CPU the cost per sample *grows* with the batch once activations leave the caches.
#: Measured here, one thread, µs per sample at batch 64 / 256 / 2048: a 3-block CNN on 32×32×3 images 573 / 921 /
#: 1043; a 2-layer BERT (hidden 128, 64 tokens) 474 / 735 / 968 (at 1024); an MLP 40-256-256-10 2.2 / 1.6 / 2.2 (1.6
#: from 204 to 1024). 32 KiB gives 64 samples (the training batch) for the first two and 204 for the MLP.
EVAL_BATCH_INPUT_BYTES = 32 * 1024


def default_eval_batch_size(train_batch_size: int, input_bytes_per_sample: int | float) -> int:
    """Default eval-mode batch size on CPU (samples): ``max(train_batch_size, EVAL_BATCH_INPUT_BYTES //
    input_bytes_per_sample)``, at most :data:`EVAL_BATCH_MAX` (and never below the training batch size, which is
    known to fit in memory with gradients). Deterministic: no timing enters it.

    Parameters
    ----------
    train_batch_size : int
        The training loop's batch size (samples).
    input_bytes_per_sample : int or float
        Bytes of one sample's inputs (0 or less is taken as 1).
    """
    by_bytes = int(EVAL_BATCH_INPUT_BYTES // max(1.0, float(input_bytes_per_sample)))
    return int(max(1, int(train_batch_size), min(EVAL_BATCH_MAX, by_bytes)))


def probe_permutation(seed: int, n_train: int, strata: np.ndarray | None = None) -> np.ndarray:
    """The seeded order from which probe sets are taken: a probe of size n is the
    sorted first n entries, so a larger probe contains every smaller one.

    Without ``strata`` the order is a uniform random permutation (every probe is a simple random sample).
    With ``strata`` (the class label of every training sample, :func:`class_strata`) it is a *proportionally
    stratified* order: within each class the samples come in random order, and the classes are interleaved by
    systematic keys ``(j + u_k) / N_k`` (``j``-th sample of class ``k``, ``N_k`` samples in it, a random phase
    ``u_k`` in [0, 1)), so every prefix holds each class in proportion to its share of the training set, within
    one sample. Every sample keeps the inclusion probability ``n / n_train``, so the probe mean stays unbiased,
    and its variance is that of proportional stratified sampling, which never exceeds the simple random sample's
    by more than ``O(1/n)`` and is smaller by the between-class part of the loss variance (Cochran, *Sampling
    Techniques*, 3rd ed., 1977, §5.6 and §8.6 on systematic sampling within strata). The probe's standard error
    is still computed as for a simple random sample, which is conservative for a stratified one. In a
    classification run the loss differs by class, so a simple random probe that holds too many samples of a
    hard class is off by that share: on a 4-class BERT whose per-sample loss was nearly a function of the class,
    simple random probes missed the exact training loss by more than 2 standard errors in 10 of 120 seeded runs,
    stratified ones in none (``benchmarks/probe_design.py``).

    Parameters
    ----------
    seed : int
    n_train : int
    strata : numpy.ndarray of int, shape (n_train,), optional
        Class code of each training sample (0 .. k-1).

    Returns
    -------
    numpy.ndarray of int64, shape (n_train,)

    Raises
    ------
    ValueError
        If ``strata`` is not a 1-D array of ``n_train`` non-negative integers.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_train).astype(np.int64)
    if strata is None:
        return perm
    codes = np.asarray(strata)
    if codes.shape != (n_train,) or codes.dtype.kind not in "iu" or (codes.size and codes.min() < 0):
        raise ValueError(f"strata: expected {n_train} non-negative integer class codes, got an array of shape "
                         f"{codes.shape} and dtype {codes.dtype}")
    c = codes[perm].astype(np.int64)
    counts = np.bincount(c)
    phase = rng.random(counts.size)
    # rank of each sample within its class, in the random order
    by_class = np.argsort(c, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n_train, dtype=np.int64)
    rank[by_class] = np.arange(n_train) - np.repeat(starts, counts)
    key = (rank + phase[c]) / counts[c]
    return perm[np.argsort(key, kind="stable")]


#: Most classes for which the probe is stratified (:func:`class_strata`). Beyond it the target is more likely an
#: identifier or a binned regression value than a class, and a probe of the minimum size (200) could not hold
#: every class anyway.
STRATA_MAX = 1000


def class_strata(targets: Any) -> np.ndarray | None:
    """Class codes of the training targets for a stratified probe (:func:`probe_permutation`), or None.

    Targets qualify when they are one class label per sample: integers, booleans or integer-valued floats of
    shape ``(n,)`` or ``(n, 1)``, or one-hot rows of shape ``(n, k)``, with 2 to :data:`STRATA_MAX` classes, at
    most half as many as samples. Regression targets, soft labels, token labels and anything else give None (a
    simple random probe).

    Parameters
    ----------
    targets : array-like, shape (n_train,), (n_train, 1) or (n_train, k)

    Returns
    -------
    numpy.ndarray of int64, shape (n_train,), or None
    """
    try:
        t = np.asarray(targets)
    except Exception:  # noqa: BLE001 - any unreadable target means: no strata
        return None
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]                                  # Keras-style (n, 1) labels
    elif t.ndim == 2 and t.shape[1] > 1 and t.dtype.kind in "iubf" and t.size:
        # one-hot rows (categorical cross-entropy): the class is the hot column
        if not (np.all((t == 0) | (t == 1)) and np.all(t.sum(axis=1) == 1)):
            return None
        t = t.argmax(axis=1)
    if t.ndim != 1 or t.size < 2:
        return None
    if t.dtype.kind == "f":
        if not np.all(np.isfinite(t)) or not np.all(t == np.round(t)):
            return None
    elif t.dtype.kind not in "iub":
        return None
    values, codes = np.unique(t, return_inverse=True)
    if not 2 <= values.size <= min(STRATA_MAX, t.size // 2):
        return None
    return codes.astype(np.int64).reshape(-1)


def probe_size_cap(n_train: int, n_val: int | None) -> tuple[int, str]:
    """Largest default probe: min(validation size (or :data:`PROBE_CAP`), PROBE_CAP, training size).

    Returns
    -------
    cap : int
    limit : str
        What sets the cap, in words ("validation size", "training-set size", "cap 10000").
    """
    cap = min(n_val or PROBE_CAP, PROBE_CAP, n_train)
    limit = ("validation size" if n_val and cap == n_val else
             "training-set size" if cap == n_train else f"cap {PROBE_CAP}")
    return cap, limit


def budget_probe_size(cap: int, limit: str, budget: float, samples_per_epoch: int | float,
                      passes: int) -> tuple[int, str]:
    """Probe size allowed by the cost budget, counted from sample counts (deterministic).

    One epoch of training costs ``TRAIN_STEP_FORWARDS · S`` probe-pass units for
    ``S`` training samples seen per epoch; the probe passes cost ``passes · n``
    (each of C, and A/T where they run, is one forward pass per probe sample). The
    budget allows ``n_budget = floor(budget · TRAIN_STEP_FORWARDS · S / passes)``, and

    ``n = min(cap, max(min(PROBE_MIN, cap), n_budget))``.

    No quantity here is measured in seconds, so the same data, configuration and
    seed give the same probe on any machine and under any load (DESIGN.md,
    Invariants). With the default 3 % budget and one pass the probe holds 4.5 % of
    the samples an epoch trains on; with three passes, 1.5 %.

    Parameters
    ----------
    cap, limit : from :func:`probe_size_cap`
    budget : float
        Fraction of an epoch's training compute the probe passes may cost (e.g. 0.03).
    samples_per_epoch : int or float
        Training samples processed in the first epoch (sum of the batch sizes).
        Non-positive or non-finite: the budget does not bound the size (``cap``).
    passes : int
        Probe passes per epoch, each one forward pass per probe sample (>= 1).

    Returns
    -------
    n : int
    why : str
        Which bound decided, in words (for ``run.meta["probe_size_reason"]``).
    """
    if math.isfinite(samples_per_epoch) and samples_per_epoch > 0:
        by_budget = int(budget * TRAIN_STEP_FORWARDS * samples_per_epoch / max(1, int(passes)))
    else:
        by_budget = cap
    n, why = _bounded(cap, limit, by_budget, "cost budget")
    return n, (f"{why}; budget {100 * budget:g} % of an epoch's training compute: {int(samples_per_epoch)} "
               f"samples x {TRAIN_STEP_FORWARDS:g} probe-pass samples each, {passes} probe pass(es) per probe sample")


def timed_probe_size(cap: int, limit: str, budget: float, epoch_seconds: float,
                     per_sample_seconds: float) -> tuple[int, str]:
    """Probe size allowed by a wall-clock budget (only with ``probe_size="timed"``).

    ``n = min(cap, max(min(PROBE_MIN, cap), floor(budget · t_epoch / c)))``
    where ``t_epoch`` is the first epoch's training time and ``c`` the measured
    cost of all probe passes per probe sample. The result depends on machine
    load: the same seed can give different probes and findings on a busy
    machine, which is why it is not the default (:func:`budget_probe_size` is).

    Parameters
    ----------
    cap, limit : from :func:`probe_size_cap`
    budget : float
        Fraction of the epoch's training time the probe passes may cost (e.g. 0.03).
    epoch_seconds : float
        Wall time of the first epoch's training steps (probes excluded).
    per_sample_seconds : float
        Wall time of all probe passes per probe sample (timed pilot).

    Returns
    -------
    n : int
    why : str
    """
    if math.isfinite(epoch_seconds) and epoch_seconds > 0 and per_sample_seconds > 0:
        by_budget = int(budget * epoch_seconds / per_sample_seconds)
    else:
        by_budget = cap
    return _bounded(cap, limit, by_budget, "wall-clock budget")


def _bounded(cap: int, limit: str, by_budget: int, budget_name: str) -> tuple[int, str]:
    """``n = min(cap, max(min(PROBE_MIN, cap), by_budget))`` and which bound decided, in words."""
    lo = min(PROBE_MIN, cap)
    n = int(min(cap, max(lo, by_budget)))
    if n == cap and by_budget >= cap:
        return n, f"limited by the {limit} ({cap})"
    if n == lo and by_budget < lo:
        return n, f"budget allows {by_budget}, raised to the minimum {lo}"
    return n, f"limited by the {budget_name}"


def inherited_probe_size(store: Any, experiment: str | None, run_id: int | None, n_train: int,
                         probe_seed: int, strata: int | None = None) -> tuple[int, str] | None:
    """The probe size of the experiment's first run, when this run can share its probe set.

    Two seeds of one configuration could otherwise get different probe sets
    (a different number of samples per epoch, or ``probe_size="timed"``); runs of one
    experiment with the same training-set size and probe seed reuse the first
    run's size, hence the very same probe samples (the seeded permutation's
    prefix), and their probe terms can be paired across seeds.

    Parameters
    ----------
    store : losslens.store.Store or None
    experiment : str or None
    run_id : int or None
        This run's id (earlier runs only are considered).
    n_train, probe_seed : int
    strata : int or None
        Classes this run's probe is stratified by (``run.meta["probe_strata"]``; None: a simple random probe).
        Only a run with the same design draws the same samples.

    Returns
    -------
    (n, reason) or None
    """
    if store is None or not experiment:
        return None
    for meta in store.experiment_metas(experiment, before=run_id):
        n = meta.get("probe_size")
        if (isinstance(n, int) and n > 0 and meta.get("train_size") == n_train
                and meta.get("probe_seed") == probe_seed and meta.get("probe_strata") == strata):
            return n, (f"auto: the size of run {meta['id']}, the first of experiment {experiment!r}, so the runs "
                       "share their probe samples")
    return None


def baseline_loss(kind: str | None, targets: Any) -> float | None:
    """Per-sample loss of the best constant predictor on ``targets`` (natural log for entropies).

    Parameters
    ----------
    kind : {"cross_entropy", "binary_cross_entropy", "mse", "mae"} or None
    targets : array-like
        Shape ``(n,)`` class indices (negative indices are ignored, like
        ``ignore_index``), ``(n, k)`` one-hot or class probabilities (cross-entropy),
        or ``(n, ...)`` targets (the other kinds).

    Returns
    -------
    float or None
        cross-entropy: entropy of the label prior, −Σ p_k log p_k; binary
        cross-entropy: mean Bernoulli entropy of the per-output positive rates;
        MSE: mean over outputs of the target variance (ddof=0, the mean
        predictor); MAE: mean absolute deviation from the median (the median
        predictor). None when the kind is unknown or there are no targets.
    """
    if kind is None or targets is None:
        return None
    t = np.asarray(targets)
    if t.size == 0:
        return None
    if kind == "cross_entropy":
        if t.dtype.kind == "f" and t.ndim == 2 and t.shape[1] > 1:
            p = t.astype(np.float64).mean(axis=0)           # one-hot or probabilities
        elif t.dtype.kind in "iub" or (t.dtype.kind == "f" and np.all(t == np.round(t))):
            labels = t.reshape(-1).astype(np.int64)
            labels = labels[labels >= 0]
            if labels.size == 0:
                return None
            p = np.bincount(labels) / labels.size
        else:
            return None
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
    t2 = t.astype(np.float64).reshape(len(t), -1)
    if kind == "binary_cross_entropy":
        q = np.clip(t2.mean(axis=0), 1e-12, 1 - 1e-12)
        return float(np.mean(-(q * np.log(q) + (1 - q) * np.log(1 - q))))
    if kind == "mse":
        return float(t2.var(axis=0).mean())
    if kind == "mae":
        return float(np.abs(t2 - np.median(t2, axis=0)).mean())
    return None
