"""Fit regime: overfitting, still improving, under-fitting, good fit.

Judged on the validation loss V (end-of-epoch weights, eval mode) and the
eval-mode training loss C (or, without probes, the reported training loss R),
against measured noise (:mod:`._noise`): paired per-sample errors of the fixed
validation set and the curve's epoch-to-epoch scatter. "Beyond noise" means
more than :data:`~.findings.Z_NOISE` standard errors.

Decision order (one regime finding per run):

1. fewer than :data:`MIN_EPOCHS` epochs with a validation loss → ``regime.too_few_epochs``;
2. the last validation loss is above the minimum beyond noise, and has been
   for at least :data:`MIN_SUSTAINED` of the run → ``regime.overfitting``
   (best epoch, worsening, a suggested early-stopping patience); a shorter
   final rise is reported as the onset of overfitting in the plateau verdict;
3. the validation loss still falls beyond noise over the last epochs, by a
   material amount over another run of the same length → ``regime.still_improving``,
   unless the training loss is high (skill below :data:`MIN_SKILL`) and, at
   its current rate, another run of the same length would not bring it to
   :data:`MIN_SKILL`: then training longer will not fix it (step 4's
   under-fitting verdicts);
4. plateau: the training loss relative to the baseline loss (the best constant
   predictor) decides between ``regime.good_fit`` and under-fitting, which is
   ``regime.over_regularized`` when the measured regularization cost (train-mode
   term + penalty) exceeds the generalization gap beyond noise, else
   ``regime.underfit_capacity``; without a baseline, ``regime.plateau``.
"""

from __future__ import annotations

import math

import numpy as np

from ..findings import Z_NOISE, Evidence, Finding
from ..record import EVAL_AUGMENTED, EVAL_CLEAN, TRAIN_MODE, VALIDATION, Measurement, Run
from ._noise import epoch_diff_se, scatter_sigma, trend
from .gap import paired_difference
from .label_noise import label_noise_share
from .logged import judged_findings
from .series import baseline_of, curve, relative, suggest_patience, train_curve

__all__ = ["regime_findings", "surrogate_loss_finding", "POLICY_GRADIENT", "suggest_patience", "MIN_EPOCHS",
           "MIN_SKILL", "MIN_EFFECT", "MIN_SUSTAINED"]

#: Fewest epochs with a validation loss before a regime is judged: a trend and
#: its scatter need at least four points (two second differences).
MIN_EPOCHS = 4

#: Skill ``1 − loss / baseline`` below which a plateaued training loss counts as
#: high. 0.5 is the point where the model removes only half of the loss of the
#: best constant predictor (for MSE, R² = 0.5; skill score as in Murphy 1988,
#: "Skill scores based on the mean square error", Mon. Weather Rev. 116).
MIN_SKILL = 0.5


#: Smallest gain of practical interest, as a fraction of the baseline loss (2 points of skill; for MSE,
#: 2 points of R²): a fall of the validation loss whose continuation over another run of the same length
#: would gain less than this is beyond noise yet immaterial, so the run is not "still improving". The concept
#: is the "smallest effect size of interest" of equivalence testing (Lakens, Scheel & Isager 2018, Adv.
#: Methods Pract. Psychol. Sci. 1(2)); the value is a convention, like R² points in regression reports.
MIN_EFFECT = 0.02

#: Overfitting is a regime, not a blip: the validation loss must have been above its minimum beyond noise
#: for at least this fraction of the run's epochs (and at least MIN_EPOCHS − 1 epochs); a shorter final rise
#: is reported as the onset of overfitting inside the plateau verdict. Set by the seed-004 LSTM runs
#: (tests/test_keras_examples.py): the 800-epoch run its tutorial reads as a good fit has been beyond noise
#: for the last 3.6 % of its epochs, the 1200-epoch run it reads as overfitting for 36 %.
MIN_SUSTAINED = 0.1

#: Smallest relative fall of the training loss, projected over another run of the same length, for a run
#: below MIN_SKILL to count as still improving rather than capacity-limited: a quarter of its current level.
#: Calibrated on benchmarks/scenarios.py ("not converged": a few epochs at a low learning rate project
#: falls of 40-60 %; "too little capacity" and the seed-004 LSTM(1) project < 5 %).
MIN_REL_PROGRESS = 0.25

#: Skill below which a plateaued eval-mode training loss counts as high for over-regularization: the
#: regularized model keeps more than a quarter of the constant predictor's loss. Calibrated on
#: benchmarks/scenarios.py (dropout 0.8 + L2: skill 0.55-0.6; dropout 0.5 alone on the same data: > 0.95).
MAX_SKILL_OVER_REGULARIZED = 0.75

#: Smallest regularization cost (train-mode term + penalty), relative to the eval-mode training loss, that
#: can make a model over-regularized: below a quarter it is a detail, not the cause of a high loss.
MIN_REG_SHARE = 0.25


#: ``run.meta["objective"]`` of a run whose logged loss is a policy-gradient surrogate (TRL's GRPO and RLOO
#: trainers: the Hugging Face callback sets it when the trainer has ``reward_funcs``).
POLICY_GRADIENT = "policy_gradient"


def surrogate_loss_finding(run: Run) -> Finding | None:
    """``regime.surrogate_loss`` when the run's loss is a policy-gradient surrogate, else None.

    Such a loss is the advantage-weighted log-probability ratio plus a KL penalty: the advantages are normalized
    within each group of generations, so it is near 0 by construction at every step, and its level and trend say
    nothing about fit (Shao et al., 2024, *DeepSeekMath*, §4.1, the GRPO objective). The fit regime is not judged on
    it."""
    if run.meta.get("objective") != POLICY_GRADIENT:
        return None
    name = run.meta.get("trainer") or "The trainer"
    return Finding(
        "regime.surrogate_loss", "info", "The logged loss is a policy-gradient surrogate: the fit is not judged on it",
        f"{name} optimises a policy-gradient objective: its loss is the advantage-weighted probability ratio (plus a "
        "KL penalty), whose advantages are normalized within each group of generations, so it stays near 0 "
        "whether or not the policy improves. Overfitting, convergence and learning cannot be read from it.",
        "Judge the run by its reward (logged as `reward`) on held-out prompts and by the KL to the reference model.")


def regime_findings(run: Run) -> list[Finding]:
    """The fit-regime finding of a run (a list of zero or one :class:`Finding`).

    Runs whose validation loss has per-sample values (recorded by an adapter) are judged with paired
    errors (module docstring); imported logs, and runs without a validation loss (on their training loss),
    by :func:`losslens.diagnose.curves.judge_curve`; a run whose loss is a policy-gradient surrogate is not judged
    (:func:`surrogate_loss_finding`).
    """
    idx, pos, vms = curve(run, VALIDATION)
    if not run.epochs:
        return []
    surrogate = surrogate_loss_finding(run)
    if surrogate is not None:
        return [surrogate]
    if not vms and not run.has(VALIDATION):
        return judged_findings(run, "training")
    if vms and all(m.values is None for m in vms):
        return judged_findings(run, "validation")
    if not vms:
        if run.has(VALIDATION):
            return [Finding(
                "regime.no_validation", "info", "No finite validation loss: the fit regime cannot be judged",
                "A validation loss was measured, but it is NaN or infinite in every epoch (see the stability "
                "findings).", "Fix the non-finite losses first.")]
        return [Finding(
            "regime.no_validation", "info", "No validation loss: the fit regime cannot be judged",
            "Overfitting and generalization need a loss on data the model does not train on.",
            "Pass a validation set (`val=` in losslens, `validation_data=` in Keras).")]
    if len(vms) < MIN_EPOCHS:
        return [Finding(
            "regime.too_few_epochs", "info", "Not enough epochs to tell the fit regime",
            f"{len(vms)} epoch(s) with a validation loss; a trend judged against its own noise needs at least "
            f"{MIN_EPOCHS}.", "Train for more epochs (or record more of them) before judging the regime.",
            [Evidence("validation loss", vms[-1].mean, vms[-1].sem, (idx[-1],))], tuple(idx))]

    nl = _not_learning_recorded(run, idx)
    if nl is not None:
        return [nl]
    v = np.array([m.mean for m in vms])
    sigma_v = scatter_sigma(v)
    b = int(np.argmin(v))
    last = len(vms) - 1
    baseline = baseline_of(run)
    material = MIN_EFFECT * baseline if baseline is not None else 0.0
    minor_rise = slow_note = ""
    rose = sustained = False  # the last epoch is above the minimum beyond noise; for long enough

    # 2. overfitting: the last validation loss is worse than the minimum beyond noise, and has been for a
    # sustained stretch of the run (a rise only in its last few epochs is the onset, reported as such).
    if b < last:
        rise = v[last] - v[b]
        se_rise = epoch_diff_se(vms[last], vms[b], sigma_v)
        rose = rise > Z_NOISE * se_rise
        if rose:
            se_to_best = np.array([epoch_diff_se(m, vms[b], sigma_v) for m in vms])
            acceptable = (v - v[b]) <= Z_NOISE * se_to_best
            first_bad = next(i for i in range(b + 1, last + 1) if not acceptable[i])
            sustained = last - first_bad + 1 >= max(MIN_EPOCHS - 1, MIN_SUSTAINED * len(vms))
            if not sustained:
                minor_rise = (f" The validation loss has risen beyond noise since epoch {idx[first_bad]} "
                              f"({rise:+.3g} ± {se_rise:.2g} above its minimum at epoch {idx[b]}), only in the last "
                              f"{last - first_bad + 1} epochs: the onset of overfitting. Stop at epoch {idx[b]}.")
        if rose and sustained:
            gap_grew, gap_txt = _gap_grew(run, idx[b], idx[last])
            if not gap_grew:
                sustained = False
                minor_rise = (f" The validation loss rose after epoch {idx[b]}, but the eval-mode training loss rose "
                              f"with it{gap_txt}: the generalization gap did not grow, so this is not overfitting "
                              "(a learning rate too high late, or regularization pulling both up).")
        if rose and sustained:
            first_bad = next(i for i in range(b + 1, last + 1) if not acceptable[i])
            sug = suggest_patience(v, acceptable)
            data = {"best_epoch": idx[b], "best_val_loss": float(v[b]), "worsening": float(rise),
                    "worsening_se": float(se_rise), "worsening_relative": float(rise / v[b]) if v[b] else math.nan,
                    "first_epoch_worse": idx[first_bad]}
            rec = (f"Stop at epoch {idx[b]} (keep its weights): early stopping on the validation loss with "
                   "restore_best_weights=True")
            if sug is not None:
                data["patience"], data["stop_epoch"], data["restored_epoch"] = sug[0], idx[sug[1]], idx[sug[2]]
                kept = ("the best epoch" if sug[2] == b else
                        f"epoch {idx[sug[2]]}, whose validation loss is within noise of the best")
                rec += (f" and patience={sug[0]} would have stopped at epoch {idx[sug[1]]} "
                        f"({idx[last] - idx[sug[1]]} epochs earlier) and kept {kept} "
                        "(on this run's curve; other seeds differ, so allow a margin)")
            rec += ". Or add data, augmentation or regularization to delay the rise."
            tidx, _, tms, tname = train_curve(run)
            by_epoch = dict(zip(tidx, tms))
            tr_msg = ""
            if idx[b] in by_epoch and tidx and tidx[-1] > idx[b]:
                tr_msg = (f" Meanwhile the {tname} went from {by_epoch[idx[b]].mean:.4g} to "
                          f"{tms[-1].mean:.4g}.")
            return [Finding(
                "regime.overfitting", "warning", f"Overfitting: validation loss is lowest at epoch {idx[b]}",
                f"The validation loss reached its minimum {v[b]:.4g} at epoch {idx[b]} and is {rise:+.4g} ± "
                f"{se_rise:.2g}{relative(rise, v[b])} higher at epoch {idx[last]}; it was beyond noise "
                f"from epoch {idx[first_bad]} on.{tr_msg}",
                rec,
                [Evidence("best validation loss (eval mode, end of epoch)", float(v[b]), vms[b].sem, (idx[b],)),
                 Evidence("rise of validation loss since the best epoch (paired per-sample + scatter)",
                          float(rise), se_rise, (idx[b], idx[last]))],
                (idx[b], idx[last]), data)]

    # 3. still improving: validation falls beyond noise over the last epochs.
    k = max(MIN_EPOCHS - 1, math.ceil(len(vms) / 3))
    k = min(k, len(vms))
    slope, se_slope = trend(pos[-k:], vms[-k:], sigma_v)
    ev_trend = Evidence(f"validation loss trend over the last {k} epochs (loss per epoch)", slope, se_slope,
                        tuple(idx[-k:]), "loss per sample per epoch")
    n_so_far = float(pos[-1]) if pos.size and math.isfinite(pos[-1]) else float(len(vms))
    # Still improving means falling now: a curve whose last epoch is above its minimum beyond noise is not,
    # even when a line through the window slopes down.
    # Material: the gain of another run of the same length at the current rate, capped by the current loss
    # (the losses diagnosed here -- cross-entropy, MSE, MAE -- cannot fall below zero).
    gain = min(-slope * n_so_far, float(v[last])) if math.isfinite(slope) else 0.0
    improving = not rose and math.isfinite(slope) and slope < -Z_NOISE * se_slope and gain >= material
    _, tpos, tms, tname = train_curve(run)
    train_last = tms[-1] if tms else None
    skill = 1.0 - train_last.mean / baseline if baseline is not None and train_last is not None else math.nan
    if improving and math.isfinite(skill) and skill < MIN_SKILL and train_last is not None and baseline is not None:
        # Not converged, but is training longer enough? Project the training loss over another run of the
        # same length; if it would still be far from MIN_SKILL, the capacity (not the schedule) limits it.
        kt = min(k, len(tms))
        t_slope, _ = trend(tpos[-kt:], tms[-kt:], scatter_sigma(np.array([m.mean for m in tms])))
        projected = train_last.mean + min(t_slope, 0.0) * n_so_far if math.isfinite(t_slope) else math.inf
        rel_gain = (train_last.mean - projected) / train_last.mean if train_last.mean > 0 else 0.0
        if projected > (1.0 - MIN_SKILL) * baseline and rel_gain < MIN_REL_PROGRESS:
            improving = False
            slow_note = (f" The {tname} still falls by {-t_slope:.3g} per epoch, too slowly: another "
                         f"{n_so_far:.0f} epochs would bring it only to about {projected:.4g}, still above "
                         f"{(1 - MIN_SKILL) * baseline:.4g} (half the baseline loss).")
    if improving:
        return [Finding(
            "regime.still_improving", "info", "Still improving: the validation loss is still falling",
            f"Over the last {k} epochs the validation loss fell by {-slope:.3g} ± {se_slope:.2g} per epoch "
            f"(now {v[last]:.4g}); training has not converged.",
            "Train longer (more epochs), or raise the learning rate if progress is slow; keep monitoring the "
            "validation loss for the point where it turns.", [ev_trend], tuple(idx[-k:]),
            {"slope": slope, "slope_se": se_slope, "window": k})]

    # 4. plateau (or, under-fitting, too slow to be fixed by training longer).
    gap = v[last] - train_last.mean if train_last is not None else math.nan
    if baseline is None or train_last is None:
        return [Finding(
            "regime.plateau", "info", "The validation loss has stopped improving",
            f"Over the last {k} epochs the validation loss trend is {slope:+.3g} ± {se_slope:.2g} per epoch "
            f"(within noise), at {v[last]:.4g}.{minor_rise} Without a baseline loss (best constant predictor) "
            "losslens cannot say whether this level is high.",
            "Compare with a simple baseline, or record the run with a losslens adapter (it measures the baseline).",
            [ev_trend], tuple(idx[-k:]), {"slope": slope, "slope_se": se_slope})]
    ev_skill = Evidence(f"{tname} / baseline loss (best constant predictor)", train_last.mean / baseline,
                        (train_last.sem / baseline) if math.isfinite(train_last.sem) else math.nan,
                        (idx[-1],), "ratio")
    ev_gap = Evidence("generalization gap: validation − " + tname, gap,
                      math.hypot(vms[-1].sem, train_last.sem) if math.isfinite(vms[-1].sem) and
                      math.isfinite(train_last.sem) else math.nan, (idx[-1],))
    reg_f = _over_regularized(run, idx, tname, train_last, baseline, skill, gap, ev_skill, ev_gap, ev_trend,
                              slow_note)
    if reg_f is not None:
        return [reg_f]
    if skill >= MIN_SKILL or label_noise_share(run) is not None:
        return [Finding(
            "regime.good_fit", "info", "Good fit: validation loss has converged without overfitting",
            f"The validation loss no longer changes materially over the last {k} epochs ({slope:+.3g} ± "
            f"{se_slope:.2g} per epoch) at {v[last]:.4g}; the {tname} {train_last.mean:.4g} is {100 * skill:.0f} % "
            f"below the baseline loss {baseline:.4g}; generalization gap {gap:+.4g}.{minor_rise}",
            "Nothing to fix in the schedule. To go further: more data or a better model; stop training here "
            "to save compute.", [ev_trend, ev_skill, ev_gap], tuple(idx[-k:]),
            {"skill": skill, "gap": gap, "slope": slope, "slope_se": se_slope})]

    # Under-fitting: too little capacity, or too much regularization (any measured share, skill < MIN_SKILL)?
    reg_f = _over_regularized(run, idx, tname, train_last, baseline, skill, gap, ev_skill, ev_gap, ev_trend,
                              slow_note, max_skill=math.inf, min_share=0.0)
    if reg_f is not None:
        return [reg_f]
    reg, reg_se, reg_measured = _regularization_cost(run)
    ev_reg = Evidence("regularization cost: train-mode term (T − A) + penalty Ω", reg, reg_se, (idx[-1],))
    extra = "" if reg_measured else " (dropout/penalty cost not measured: this could also be over-regularization)"
    wd = run.meta.get("weight_decay")
    if wd:
        extra += f"; the optimizer applies weight decay {wd}"
    return [Finding(
        "regime.underfit_capacity", "warning",
        "Under-fitting: the training loss is high and training longer will not fix it",
        f"The validation loss changes by {slope:+.3g} ± {se_slope:.2g} per epoch and the {tname} "
        f"{train_last.mean:.4g} is only {100 * skill:.0f} % below the baseline loss {baseline:.4g}; the "
        f"generalization gap is {gap:+.4g}{extra}.{slow_note}{minor_rise}",
        "Increase the model's capacity (wider or deeper layers, more units), train with a larger learning rate, "
        "or check the inputs carry the signal.", [ev_skill, ev_gap, ev_reg, ev_trend], (idx[-1],),
        {"skill": skill, "gap": gap, "regularization_cost": reg})]


def _gap_grew(run: Run, e_best: int, e_last: int) -> tuple[bool, str]:
    """Whether the generalization gap V − C grew beyond noise from the best epoch to the last (paired
    per-sample differences of both sets); True when C is not measured at both (the rise of V decides then)."""
    eb = next((e for e in run.epochs if e.index == e_best), None)
    el = next((e for e in run.epochs if e.index == e_last), None)
    if eb is None or el is None:
        return True, ""
    cb, cl = eb.get(EVAL_CLEAN), el.get(EVAL_CLEAN)
    vb, vl = eb.get(VALIDATION), el.get(VALIDATION)
    if cb is None or cl is None or vb is None or vl is None or cb.source != "measured":
        return True, ""
    dv, sv = paired_difference(vl, vb)
    dc, sc = paired_difference(cl, cb)
    grow = dv - dc
    se = math.hypot(sv, sc) if math.isfinite(sv) and math.isfinite(sc) else math.nan
    txt = f" (validation {dv:+.3g}, eval-mode training loss {dc:+.3g}; the gap changed by {grow:+.3g} ± {se:.2g})"
    return (grow > Z_NOISE * se if math.isfinite(se) else grow > 0), txt


def _regularization_cost(run: Run) -> tuple[float, float, bool]:
    """At the last epoch: the penalty Ω plus the train-mode term T − A (paired), its standard error, and
    whether anything of it was measured."""
    last_epoch = run.epochs[-1]
    reg, reg_se = float(last_epoch.penalty), 0.0
    t, a = last_epoch.get(TRAIN_MODE), last_epoch.get(EVAL_AUGMENTED) or last_epoch.get(EVAL_CLEAN)
    if t is not None and a is not None and t.source == "measured":
        d, se = paired_difference(t, a)
        reg, reg_se = reg + d, se
    return reg, reg_se, reg != 0.0 or t is not None


def _over_regularized(run: Run, idx: list[int], tname: str, train_last: Measurement, baseline: float,
                      skill: float, gap: float, ev_skill: Evidence, ev_gap: Evidence, ev_trend: Evidence,
                      slow_note: str, max_skill: float = MAX_SKILL_OVER_REGULARIZED,
                      min_share: float = MIN_REG_SHARE) -> Finding | None:
    """``regime.over_regularized``: regularization (dropout/batch-norm train mode and the penalty) costs more
    training loss than the generalization gap it prevents (beyond noise), at least ``min_share`` of the
    eval-mode training loss, while the skill stays below ``max_skill``."""
    reg, reg_se, measured = _regularization_cost(run)
    gap_se = ev_gap.se if math.isfinite(ev_gap.se) else 0.0
    if not (measured and skill < max_skill and reg >= min_share * train_last.mean
            and reg - max(gap, 0.0) > Z_NOISE * math.hypot(reg_se, gap_se)):
        return None
    ev_reg = Evidence("regularization cost: train-mode term (T − A) + penalty Ω", reg, reg_se, (idx[-1],))
    return Finding(
        "regime.over_regularized", "warning", "Under-fitting from too much regularization",
        f"The {tname} is at {train_last.mean:.4g}, only {100 * skill:.0f} % below the baseline loss "
        f"{baseline:.4g}, while dropout/batch norm and the penalty cost {reg:.4g} ± {reg_se:.2g} of training "
        f"loss — more than the generalization gap ({gap:+.4g}) they are there to prevent.{slow_note}",
        "Reduce dropout and weight decay / L2 penalties, then re-check the gap; raise the learning rate if it "
        "was lowered to tame regularization.", [ev_skill, ev_reg, ev_gap, ev_trend], (idx[-1],),
        {"skill": skill, "regularization_cost": reg, "gap": gap})


#: Largest skill (1 − loss / baseline) of the best epoch's training loss for "not learning": the model never
#: beat the constant predictor by more than 5 % (LABELS.md: a loss "at chance level").
MAX_SKILL_NOT_LEARNING = 0.05


def _not_learning_recorded(run: Run, idx: list[int]) -> Finding | None:
    """``regime.not_learning`` for a recorded run: its training loss never got materially below the baseline
    loss (the best constant predictor, e.g. ln K for K balanced classes)."""
    baseline = baseline_of(run)
    if baseline is None:
        return None
    _, _, tms, tname = train_curve(run)
    vals = np.array([m.mean for m in tms if math.isfinite(m.mean)])
    if vals.size < 2:
        return None
    best = float(vals.min())
    if best < (1 - MAX_SKILL_NOT_LEARNING) * baseline:
        return None
    return Finding(
        "regime.not_learning", "error", "Not learning: the loss never beats a constant prediction",
        f"The {tname} is at best {best:.4g}, within {100 * MAX_SKILL_NOT_LEARNING:.0f} % of the baseline loss "
        f"{baseline:.4g} of the best constant predictor (the label prior): the model has learnt nothing a "
        "constant output does not give.",
        "Check that the labels match the inputs and the loss, that the optimizer updates the model's parameters, "
        "and the learning rate (too low: nothing moves; too high: it jumps back to the prior). Then check the "
        "model can carry the signal (a one-unit bottleneck cannot).",
        [Evidence(f"best {tname}", best, math.nan, tuple(idx[-1:])),
         Evidence("baseline loss (best constant predictor)", baseline)], tuple(idx[-1:]),
        {"best": best, "baseline_loss": baseline})
