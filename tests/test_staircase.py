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
    run_without = _run(epochs=3, per_epoch=60, drop=0.1, noise=0.02, seed=2, val=[0.9, 0.92, 0.95])
    (g,) = staircase_findings(run_without)
    assert g.data["memorization"] is None and "Measured on the probe set" not in g.message
