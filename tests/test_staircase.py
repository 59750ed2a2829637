"""The epoch staircase (issue 17, item 5): a drop of the step losses at each epoch boundary is found and measured
with its standard error; smooth noisy curves (a shuffled, non-repeating stream) raise no false alarm."""

import math

import numpy as np
import pytest

from losslens.diagnose import diagnose
from losslens.diagnose.staircase import MIN_REL_STEP, boundary_jumps, staircase_findings
from losslens.record import Epoch, Measurement, Run, Steps


def _run(epochs, per_epoch, drop, noise, seed, val=None, decay=1.5):
    """Step losses of ``epochs`` epochs, ``per_epoch`` logged points each: a smooth decay plus, from each new
    epoch on, a further ``drop`` (the staircase), plus noise."""
    rng = np.random.default_rng(seed)
    n = epochs * per_epoch
    pos = (np.arange(n) + 0.5) / per_epoch
    ep = np.floor(pos).astype(int)
    loss = 0.6 + 1.0 * np.exp(-pos / decay) - drop * ep + noise * rng.standard_normal(n)
    steps = Steps.build(ep, loss, position=pos)
    recs = []
    for e in range(epochs):
        ms = {}
        if val is not None:
            ms["validation"] = Measurement("validation", float(val[e]), math.nan, 0, None, "imported")
        recs.append(Epoch(e, train_loss=float(loss[ep == e].mean()), n_steps=per_epoch, position=e + 1.0,
                          measurements=ms))
    return Run("stairs", recs, steps, meta={"framework": "transformers"})


@pytest.mark.parametrize("drop", [0.05, 0.1])
def test_a_staircase_is_found_and_its_size_measured(drop):
    run = _run(epochs=3, per_epoch=60, drop=drop, noise=0.02, seed=0, val=[0.9, 0.92, 0.95])
    jumps = boundary_jumps(run)
    assert [j["boundary"] for j in jumps] == [1.0, 2.0]
    for j in jumps:
        assert abs(j["jump"] + drop) < 3 * j["se"], j         # the known drop, within its error
    (f,) = staircase_findings(run)
    assert f.code == "data.epoch_staircase" and f.data["mean_jump"] == pytest.approx(-drop, abs=3 * f.data["se"])
    assert "rose" in f.message and "memorization" in f.message      # the validation loss rose over those epochs
    assert "data.epoch_staircase" in diagnose(run).codes()


def test_a_staircase_that_still_helps_validation_says_so():
    run = _run(epochs=3, per_epoch=60, drop=0.1, noise=0.02, seed=1, val=[0.9, 0.85, 0.8])
    (f,) = staircase_findings(run)
    assert f.data["validation_change"] < 0 and "still helped" in f.message


def test_false_alarms_on_smooth_noisy_curves_are_rare():
    """300 curves with no boundary effect (a shuffled, non-repeating stream): decays of several speeds, 2-5
    epochs, 12-200 logged points per epoch, 0.5-10 % noise. Measured: 1 of 300 flagged (the test allows 1 %)."""
    rng = np.random.default_rng(7)
    flagged = 0
    for k in range(300):
        run = _run(epochs=int(rng.integers(2, 6)), per_epoch=int(rng.integers(12, 201)), drop=0.0,
                   noise=float(rng.uniform(0.005, 0.1)), seed=k, decay=float(rng.uniform(0.2, 5.0)))
        flagged += bool(staircase_findings(run))
    assert flagged <= 3, flagged


def test_a_small_step_below_the_material_threshold_is_not_reported():
    run = _run(epochs=3, per_epoch=200, drop=0.5 * MIN_REL_STEP * 0.7, noise=0.002, seed=2)
    jumps = boundary_jumps(run)
    assert jumps and all(j["jump"] < 0 for j in jumps)      # measured, and beyond noise
    assert staircase_findings(run) == []                    # but too small to matter


def test_one_epoch_or_too_few_points_gives_nothing():
    assert staircase_findings(_run(epochs=1, per_epoch=100, drop=0.1, noise=0.01, seed=0)) == []
    assert staircase_findings(_run(epochs=3, per_epoch=5, drop=0.1, noise=0.01, seed=0)) == []


def test_with_probes_the_memorization_is_measured_against_validation():
    """A recorded run: per-sample eval-mode losses of the probe set (seen training samples) and of the validation
    set at each epoch, the seen samples' loss falling by 0.1 per epoch more than the unseen ones'. The finding gives
    the generalization gap at the first and last epoch with paired standard errors, and its growth."""
    rng = np.random.default_rng(3)
    run = _run(epochs=3, per_epoch=60, drop=0.1, noise=0.02, seed=2, val=[0.9, 0.92, 0.95])
    base_c, base_v = rng.gamma(4, 0.2, 400), rng.gamma(4, 0.2, 300)
    for e in run.epochs:
        c = base_c * (1 - 0.1 * e.index) + 0.01 * rng.standard_normal(400)
        v = base_v + 0.02 * e.index + 0.01 * rng.standard_normal(300)
        e.measurements["eval_clean"] = Measurement.from_values("eval_clean", c)
        e.measurements["validation"] = Measurement.from_values("validation", v)
    (f,) = staircase_findings(run)
    mem = f.data["memorization"]
    exp = [float(run.epochs[k].get("validation").mean - run.epochs[k].get("eval_clean").mean) for k in (0, 2)]
    assert mem["gap_first"] == pytest.approx(exp[0]) and mem["gap_last"] == pytest.approx(exp[1])
    assert mem["growth"] == pytest.approx(exp[1] - exp[0]) and mem["growth"] > 3 * mem["growth_se"] > 0
    assert "Measured on the probe set" in f.message and "that growth is the memorization" in f.message
    # the same measurements by passes over the training set (complete epochs: every probe sample seen e + 1 times)
    assert [x["times_seen"] for x in mem["seen"]] == [1.0, 2.0, 3.0]
    assert [x["train"] for x in mem["seen"]] == [e.get("eval_clean").mean for e in run.epochs]
    assert [x["validation"] for x in mem["seen"]] == [e.get("validation").mean for e in run.epochs]
    assert "after 1 pass:" in f.message and "3 passes:" in f.message
    run_without = _run(epochs=3, per_epoch=60, drop=0.1, noise=0.02, seed=2, val=[0.9, 0.92, 0.95])
    (g,) = staircase_findings(run_without)
    assert g.data["memorization"] is None and "Measured on the probe set" not in g.message


# --- real fine-tunes (benchmarks/staircase.py measures the rates over many seeds) ---------------------------------

@pytest.fixture(scope="module")
def facts_bench():
    """``benchmarks/staircase.py`` and a tiny GPT-2 pre-trained on facts (seed 0; about 30 s on one CPU core)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import staircase as bench

    return bench, bench.pretrained(0)


def test_a_3_epoch_fine_tune_that_memorizes_shows_the_staircase_and_the_measured_memorization(tmp_path,
                                                                                                facts_bench):
    """The Hugging Face Trainer fine-tunes the pre-trained model on the same 1 024 facts for 3 epochs, recorded by
    ``losslens.transformers.LossLens``: the step loss steps down at both epoch boundaries, the finding says so with
    the memorization measured on the probe set (V − C grows by many standard errors), and the validation loss
    (unseen facts) rose, so the report says the drop does not carry over."""
    bench, base = facts_bench
    trainer, run = bench.fine_tune(base, repeating=True, seed=0, out=tmp_path)
    assert trainer.state.global_step == bench.EPOCHS * bench.N_TRAIN // bench.BATCH     # never interrupted
    f = diagnose(run).get("data.epoch_staircase")
    assert f is not None and [int(j["boundary"]) for j in f.data["jumps"]] == [1, 2]
    assert f.data["mean_jump"] < -3 * f.data["se"]
    mem = f.data["memorization"]
    assert mem["growth"] > 5 * mem["growth_se"] > 0 and mem["gap_last"] > mem["gap_first"]
    # V − C at the last epoch is the validation mean minus the probe's eval-mode mean, as recorded
    last = run.epochs[-1]
    assert mem["gap_last"] == pytest.approx(last.get("validation").mean - last.get("eval_clean").mean, rel=1e-9)
    assert f.data["validation_change"] > 0 and "does not carry over" in f.message
    assert "Measured on the probe set" in f.message
    # by passes: the probe samples' loss falls with each pass while the never-seen samples' loss does not
    train = [x["train"] for x in mem["seen"]]
    val = [x["validation"] for x in mem["seen"]]
    assert [x["times_seen"] for x in mem["seen"]] == [1.0, 2.0, 3.0]
    assert train[0] - train[-1] > 0.5 and val[-1] >= val[0]


def test_the_same_fine_tune_on_a_non_repeating_stream_shows_no_staircase(tmp_path, facts_bench):
    """The same schedule with new facts each epoch (no sample seen twice): no boundary effect, no finding, and the
    probe's V − C does not grow beyond noise."""
    bench, base = facts_bench
    trainer, run = bench.fine_tune(base, repeating=False, seed=0, out=tmp_path)
    assert trainer.state.global_step == bench.EPOCHS * bench.N_TRAIN // bench.BATCH
    assert diagnose(run).get("data.epoch_staircase") is None
    r = bench.summarize(run)
    assert abs(r["z"]) < 3 and abs(r["memorization"]["growth"]) < 3 * r["memorization"]["growth_se"]
