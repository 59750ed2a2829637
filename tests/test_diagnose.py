"""Diagnosis on runs with known ground truth.

The diagnosis is a pure function of a Run, so these tests build runs whose
per-sample losses come from a generative model with known curves (sample
difficulty shared across epochs, plus fresh per-epoch noise), and check the
verdicts and their noise calibration. Real training runs exercise the same
code through the adapters (tests/test_torch_*.py, tests/test_keras*.py).
"""

import math

import numpy as np
import pytest

from losslens.diagnose import decompose, diagnose
from losslens.diagnose.regime import suggest_patience
from losslens.record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Epoch, Measurement, Run, Steps


def make_run(val_curve, train_curve=None, *, n_val=500, n_probe=500, seed=0, difficulty_sd=0.5, noise_sd=0.05,
             train_mode_extra=0.0, aug_extra=0.0, penalty=0.0, timing=0.0, baseline=2.3, with_steps=True):
    """A run whose expected losses follow the given curves (loss per sample)."""
    rng = np.random.default_rng(seed)
    val_curve = np.asarray(val_curve, float)
    train_curve = val_curve if train_curve is None else np.asarray(train_curve, float)
    dv = rng.gamma(2.0, difficulty_sd / math.sqrt(2), n_val)
    dv -= dv.mean()
    dp = rng.gamma(2.0, difficulty_sd / math.sqrt(2), n_probe)
    dp -= dp.mean()
    epochs, steps = [], []
    for e, (vc, tc) in enumerate(zip(val_curve, train_curve)):
        c = tc + dp + rng.normal(0, noise_sd, n_probe)
        a = c + aug_extra + rng.normal(0, noise_sd, n_probe)
        t = a + train_mode_extra + rng.normal(0, noise_sd, n_probe)
        v = vc + dv + rng.normal(0, noise_sd, n_val)
        ms = {VALIDATION: Measurement.from_values(VALIDATION, v), EVAL_CLEAN: Measurement.from_values(EVAL_CLEAN, c)}
        if aug_extra:
            ms[EVAL_AUGMENTED] = Measurement.from_values(EVAL_AUGMENTED, a)
        if train_mode_extra:
            ms[TRAIN_MODE] = Measurement.from_values(TRAIN_MODE, t)
        end_t = ms.get(TRAIN_MODE, ms.get(EVAL_AUGMENTED, ms[EVAL_CLEAN])).mean
        sl = end_t + timing + rng.normal(0, 0.1, 20)
        steps.append(Steps.build(np.full(20, e), sl, batch_size=np.full(20, 32)))
        epochs.append(Epoch(e, train_loss=float(sl.mean()), penalty=penalty, n_steps=20, n_samples=640,
                            measurements=ms))
    return Run("synthetic", epochs, Steps.concat(steps) if with_steps else Steps(), {"baseline_loss": baseline})


def test_decomposition_identity_and_term_errors():
    run = make_run(np.linspace(1.0, 0.5, 6), train_mode_extra=0.2, aug_extra=0.1, penalty=0.03, timing=0.05)
    dec = decompose(run)
    assert len(dec) == 6
    for d, e in zip(dec, run.epochs):
        assert d.total == pytest.approx(e.reported_loss - e.measurements[VALIDATION].mean, abs=1e-12)
        t = e.measurements[TRAIN_MODE].values.astype(float)
        a = e.measurements[EVAL_AUGMENTED].values.astype(float)
        c = e.measurements[EVAL_CLEAN].values.astype(float)
        v = e.measurements[VALIDATION].values.astype(float)
        assert d.terms["train_mode"].value == pytest.approx(t.mean() - a.mean(), abs=1e-9)
        assert d.terms["train_mode"].se == pytest.approx((t - a).std(ddof=1) / math.sqrt(t.size), rel=1e-6)
        assert d.terms["augmentation"].se == pytest.approx((a - c).std(ddof=1) / math.sqrt(a.size), rel=1e-6)
        assert d.terms["generalization_gap"].se == pytest.approx(
            math.hypot(c.std(ddof=1) / math.sqrt(c.size), v.std(ddof=1) / math.sqrt(v.size)), rel=1e-6)
        assert d.terms["timing"].value == pytest.approx(e.train_loss - t.mean(), abs=1e-9)
        assert d.terms["penalty"].value == 0.03
    # paired errors are far tighter than unpaired ones when samples share difficulty
    tm = dec[-1].terms["train_mode"]
    assert tm.se < 0.25 * math.hypot(run.epochs[-1].measurements[TRAIN_MODE].sem,
                                     run.epochs[-1].measurements[EVAL_AUGMENTED].sem)


def test_skipped_passes_are_zero_and_marked():
    run = make_run(np.linspace(1.0, 0.5, 5))
    d = decompose(run)[-1]
    assert d.terms["train_mode"].status == "skipped" and d.terms["train_mode"].value == 0.0
    assert d.terms["augmentation"].status == "skipped"
    assert d.total == pytest.approx(d.reported - d.validation, abs=1e-12)


def test_val_below_train_ranks_measured_causes():
    run = make_run(np.full(8, 0.6), train_mode_extra=0.3, timing=0.1)
    res = diagnose(run)
    f = res.get("gap.val_below_train")
    assert f is not None
    assert f.data["causes"][0] == "train_mode"
    assert "timing" in f.data["causes"]
    assert res.get("gap.val_easier") is None


def test_val_easier_only_beyond_noise():
    easy = make_run(np.full(6, 0.5), np.full(6, 0.8))
    assert diagnose(easy).get("gap.val_easier") is not None
    same = make_run(np.full(6, 0.5), np.full(6, 0.5), seed=3)
    assert diagnose(same).get("gap.val_easier") is None


def test_overfitting_best_epoch_and_patience():
    x = np.arange(20)
    val = 0.4 + 0.6 * np.exp(-x / 3) + 0.01 * np.maximum(0, x - 8) ** 1.5
    run = make_run(val, 0.4 * np.exp(-x / 6) + 0.05)
    f = diagnose(run).get("regime.overfitting")
    assert f is not None
    assert abs(f.data["best_epoch"] - int(np.argmin(val))) <= 2
    assert f.data["worsening"] > 0
    assert 1 <= f.data["patience"] < 10
    assert f.data["stop_epoch"] < 19


def test_suggest_patience_skips_noise_dip():
    # a noisy bump before the true minimum: patience 1 would stop at epoch 2 and restore epoch 1 (too early)
    v = np.array([1.0, 0.8, 0.85, 0.6, 0.5, 0.55, 0.6, 0.7])
    acceptable = v <= 0.52
    p, stop, restored = suggest_patience(v, acceptable)
    assert p == 2 and stop == 6 and restored == 4


def test_flat_noisy_curve_is_not_overfitting_false_alarm_rate():
    alarms = 0
    for seed in range(40):
        run = make_run(np.full(10, 0.5), np.full(10, 0.3), seed=seed, noise_sd=0.05)
        codes = diagnose(run).codes()
        alarms += "regime.overfitting" in codes or "regime.still_improving" in codes
    assert alarms <= 4  # ≈ 5 % two-sided per test, two tests: expect ≤ 10 %


def test_still_improving():
    run = make_run(np.linspace(1.0, 0.4, 8), np.linspace(0.9, 0.3, 8))
    assert "regime.still_improving" in diagnose(run).codes()


def test_good_fit_vs_underfit_by_baseline():
    flat = np.full(8, 0.3)
    good = diagnose(make_run(flat, flat - 0.02, baseline=2.3))
    assert "regime.good_fit" in good.codes()
    under = diagnose(make_run(flat + 1.4, flat + 1.38, baseline=2.3))
    assert "regime.underfit_capacity" in under.codes()
    unknown = make_run(flat, flat)
    unknown.meta.pop("baseline_loss")
    assert "regime.plateau" in diagnose(unknown).codes()


def test_over_regularized_when_dropout_costs_more_than_the_gap():
    flat = np.full(8, 1.5)
    res = diagnose(make_run(flat, flat - 0.01, train_mode_extra=0.6, baseline=2.3))
    assert "regime.over_regularized" in res.codes()


def test_too_few_epochs_and_empty_run():
    assert diagnose(make_run([1.0, 0.8])).codes().count("regime.too_few_epochs") == 1
    assert diagnose(Run("empty")).findings == []


def test_non_finite_recorded_not_raised():
    run = make_run(np.linspace(1, 0.5, 6))
    run.steps.loss[70] = np.nan
    run.epochs[3].train_loss = float("nan")
    run.epochs[4].measurements[VALIDATION] = Measurement.from_values(VALIDATION, np.full(10, np.inf))
    res = diagnose(run)
    f = res.get("stability.non_finite")
    assert f is not None and f.severity == "error"
    assert f.data["first_epoch"] == 3


def test_divergence():
    val = np.concatenate([np.linspace(1.0, 0.5, 5), np.linspace(0.7, 1.6, 5)])
    run = make_run(val)
    assert "stability.divergence" in diagnose(run).codes()


def test_divergence_by_level_but_not_slow_progress():
    # stuck far above the constant predictor: diverged
    stuck = make_run(np.full(6, 900.0), np.full(6, 900.0), baseline=2.3)
    assert "stability.divergence" in diagnose(stuck).codes()
    # above the baseline but still falling beyond noise: slow, not diverged
    slow = make_run(np.linspace(6.0, 3.0, 6), np.linspace(6.0, 3.0, 6), baseline=2.3)
    assert "stability.divergence" not in diagnose(slow).codes()


def test_all_nan_validation_says_so():
    run = make_run(np.linspace(1, 0.5, 6))
    for e in run.epochs:
        e.measurements[VALIDATION] = Measurement.from_values(VALIDATION, np.full(5, np.nan))
    f = diagnose(run).get("regime.no_validation")
    assert f is not None and "NaN" in f.message


def test_val_below_train_reported_at_last_epoch_where_it_holds():
    run = make_run(np.full(8, 0.6), train_mode_extra=0.3)
    last = run.epochs[-1]
    last.measurements[VALIDATION] = Measurement.from_values(VALIDATION, last.measurements[VALIDATION].values + 1.0)
    f = diagnose(run).get("gap.val_below_train")
    assert f is not None and f.data["epoch"] == 6 and f.data["epochs_holding"] == 7
    assert f.data["causes"][0] == "train_mode"


def test_negative_train_mode_term_flags_batchnorm_statistics():
    res = diagnose(make_run(np.full(6, 0.6), train_mode_extra=-0.2))
    assert res.get("gap.batchnorm_running_stats") is not None
    assert diagnose(make_run(np.full(6, 0.6), train_mode_extra=0.2)).get("gap.batchnorm_running_stats") is None


def test_late_rise_is_the_onset_not_the_regime():
    # the validation loss turns up beyond noise only in the last 2 of 40 epochs: good fit, onset reported
    x = np.arange(40)
    val = 0.05 + 0.5 * np.exp(-x / 3) + 0.01 * np.maximum(0, x - 37)
    run = make_run(val, val - 0.01, baseline=2.3, noise_sd=0.002, difficulty_sd=0.05)
    res = diagnose(run)
    assert "regime.overfitting" not in res.codes()
    f = res.get("regime.good_fit")
    assert f is not None and "onset of overfitting" in f.message
    # the same rise sustained over the last 12 epochs is overfitting
    sustained = make_run(0.05 + 0.5 * np.exp(-x / 3) + 0.01 * np.maximum(0, x - 27), val - 0.01, baseline=2.3,
                         noise_sd=0.002, difficulty_sd=0.05)
    assert "regime.overfitting" in diagnose(sustained).codes()


def test_slow_progress_with_high_loss_is_capacity_not_more_epochs():
    x = np.arange(30)
    slow = 1.8 - 0.002 * x  # falls beyond noise, but doubling training reaches only ~1.7 of baseline 2.3
    res = diagnose(make_run(slow, slow - 0.05, baseline=2.3, noise_sd=0.001, difficulty_sd=0.05))
    assert "regime.underfit_capacity" in res.codes()
    fast = 1.8 - 0.05 * x
    assert "regime.still_improving" in diagnose(make_run(fast, fast - 0.05, baseline=2.3)).codes()


def test_huge_losses_do_not_overflow_the_noise_estimates():
    # found by fuzzing the importers: standard errors of ~1e200 squared overflow Python floats
    run = make_run(np.array([1e200, 3e200, 2e200, 5e200, 1e200, 4e200]), baseline=2.3, difficulty_sd=1e199)
    for e in run.epochs:
        e.train_loss = 1e250
    res = diagnose(run)
    assert res.findings  # diagnosed, not raised


def test_causes_are_contributions_with_shares_that_add_up_to_100_percent():
    """Conventions (docs/diagnosis.md): a dropout part of +0.3 offset by a generalization gap V − C = +0.1 gives a
    difference of 0.2; the cause is listed as its contribution with a 100 % share of the causes (not 150 % of the
    difference), and a term with sign −1 is written "− name" with its contribution, never with the opposite sign."""
    from losslens.record import Epoch, Measurement, Run

    rng = np.random.default_rng(0)
    epochs = []
    for e in range(6):
        c = 0.5 + 0.05 * rng.standard_normal(400)
        a = c.copy()
        t = a + 0.3 + 0.01 * rng.standard_normal(400)
        v = 0.6 + 0.05 * rng.standard_normal(400)
        ms = {k: Measurement.from_values(k, x) for k, x in
              (("eval_clean", c), ("eval_augmented", a), ("train_mode", t), ("validation", v))}
        epochs.append(Epoch(e, train_loss=float(t.mean()), n_steps=10, n_samples=400, position=e + 1.0,
                            measurements=ms))
    d = diagnose(Run("offset", epochs, meta={"framework": "torch", "probe_size": 400}))
    f = d.get("gap.val_below_train")
    assert f is not None and f.data["causes"] == ["train_mode"]
    assert "(100 %)" in f.message and "150 %" not in f.message
    dec = d.get("gap.decomposition")
    assert "− generalization_gap: +0.10" in dec.message        # the value V − C, subtracted
    assert "minus" not in dec.message
    v_c = d.decomposition[-1].terms["generalization_gap"]
    assert v_c.value > 0 and v_c.contribution == pytest.approx(-v_c.value)


def test_the_verdict_is_followed_by_the_answer_to_the_users_question(tmp_path):
    """Why validation is below training (its largest measured cause, at the end of the run), else when to stop
    (the last material improvement): one sentence under the verdict, in the JSON and every report."""
    from losslens.importers import load_log
    from losslens.record import Epoch, Measurement, Run
    from losslens.report import Report

    rng = np.random.default_rng(1)
    epochs = []
    for e in range(6):
        c = 0.5 + 0.05 * rng.standard_normal(400)
        t = c + 0.3 + 0.01 * rng.standard_normal(400)
        v = 0.5 + 0.05 * rng.standard_normal(400)
        ms = {k: Measurement.from_values(k, x) for k, x in
              (("eval_clean", c), ("eval_augmented", c.copy()), ("train_mode", t), ("validation", v))}
        epochs.append(Epoch(e, train_loss=float(t.mean()), n_steps=10, n_samples=400, position=e + 1.0,
                            measurements=ms))
    d = diagnose(Run("dropout", epochs, meta={"framework": "torch", "probe_size": 400}))
    assert d.verdict.answer.startswith("Validation is below training at epoch 5 mainly because of dropout")
    assert d.to_dict()["verdict"]["answer"] == d.verdict.answer
    rep = Report(d)
    assert d.verdict.answer in rep.to_html() and "dropout/batch norm" in rep.to_markdown()
    assert "mainly because of dropout" in " ".join(rep.to_text(width=200).split())
    # a log whose validation loss bottomed out early: the answer is when to stop
    e = np.arange(30)
    (tmp_path / "log.csv").write_text("epoch,loss,val_loss\n" + "".join(
        f"{a},{1 / (1 + a / 3):.5f},{0.6 + 0.02 * (a - 8) ** 2 / 8 + 0.003 * ((a * 7) % 5):.5f}\n" for a in e))
    d2 = diagnose(load_log(tmp_path / "log.csv"))
    assert d2.verdict.answer.startswith("When to stop: the last material improvement was at epoch ")
