"""The gap decomposition and "why is validation loss below training loss?".

At the end of epoch e (DESIGN.md, "The measurement protocol"), with R the
reported training loss (data part), Ω the penalty in the reported loss, T/A/C
the probe passes and V the validation loss::

    (R + Ω) − V = Ω + (R − T) + (T − A) + (A − C) − (V − C)
                  penalty  timing  train_mode augmentation generalization_gap

The identity is exact by construction (a telescoping sum). A pass that cannot
differ from the next is skipped and its term is 0: without augmentation A = C,
without dropout or batch norm T = A.

Standard errors (all from per-sample losses):

* ``penalty``: 0 (computed exactly from the weights).
* ``timing`` (R − T): R is a mean over every training step of the epoch, T a
  mean over the probe subset, so the uncertainty is T's: sd(t) / sqrt(n).
  No finite-population correction is applied (conservative).
* ``train_mode`` (T − A) and ``augmentation`` (A − C): paired differences over
  the same probe samples: sd(t_i − a_i) / sqrt(n).
* ``generalization_gap`` (V − C, DESIGN.md's sign; it enters the sum with −): independent
  samples: sqrt(se(C)² + se(V)²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..findings import Z_NOISE, Evidence, Finding, where
from ..record import (
    END_OF_EPOCH_ESTIMATE,
    EVAL_AUGMENTED,
    EVAL_CLEAN,
    TRAIN_MODE,
    VALIDATION,
    Epoch,
    Measurement,
    Run,
    loss_unit,
)

__all__ = ["Term", "EpochDecomposition", "decompose", "decompose_epoch", "paired_difference", "TERM_LABELS",
           "scale_mismatch",
           "gap_findings"]

TERMS = ("penalty", "timing", "train_mode", "augmentation", "generalization_gap")

#: What each term means, for reports.
TERM_LABELS = {
    "penalty": "regularization penalty in the reported loss (Ω)",
    "timing": "within-epoch averaging: reported mean taken while the model improved (R − T)",
    "train_mode": "train-mode layers: dropout, batch-norm batch statistics (T − A)",
    "augmentation": "augmented vs clean inputs (A − C)",
    "generalization_gap": "generalization gap: validation loss − eval-mode training loss (V − C); it enters "
                          "reported − validation with a minus sign",
    "unmeasured": "not decomposed without probe passes (end-of-epoch training loss − V)",
}

MEASURED, SKIPPED, NOT_MEASURED = "measured", "skipped", "not measured"


@dataclass
class Term:
    """One term of the decomposition (loss per sample).

    ``status`` is ``"measured"``, ``"skipped"`` (the passes cannot differ, so
    the term is exactly 0) or ``"not measured"``. ``sign`` is how the term
    enters ``reported − validation``: +1, except the generalization gap
    (V − C, DESIGN.md's sign), which enters with −1.
    """

    name: str
    value: float
    se: float
    status: str = MEASURED
    sign: float = 1.0

    @property
    def contribution(self) -> float:
        """``sign · value``: the term's share of ``reported − validation``."""
        return self.sign * self.value

    @property
    def z(self) -> float:
        """value / se (inf when se is 0 and value is not)."""
        if self.se > 0:
            return self.value / self.se
        return 0.0 if self.value == 0 else math.copysign(math.inf, self.value)

    @property
    def significant(self) -> bool:
        """True when the term is beyond noise (|z| > Z_NOISE)."""
        return self.status in (MEASURED, "estimated") and math.isfinite(self.value) and abs(self.z) > Z_NOISE


@dataclass
class EpochDecomposition:
    """The decomposition of one epoch.

    Attributes
    ----------
    epoch : int
        0-based epoch.
    reported : float
        R + Ω, the training loss the framework shows.
    validation : float
        V.
    validation_se : float
        Standard error of V (NaN when unknown).
    terms : dict of str -> Term
        In the order penalty, timing, train_mode, augmentation, generalization_gap
        (or penalty, timing, unmeasured when the run has no probe measurements).
    """

    epoch: int
    reported: float
    validation: float
    terms: dict[str, Term] = field(default_factory=dict)
    validation_se: float = math.nan

    @property
    def total(self) -> float:
        """Sum of the terms' contributions; equals ``reported − validation`` up to float rounding."""
        return float(sum(t.contribution for t in self.terms.values()))

    @property
    def generalization_gap(self) -> Term | None:
        """V − C with its standard error, or None when C was not measured."""
        g = self.terms.get("generalization_gap")
        return g if g is not None and g.status == MEASURED else None


def _sem(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan


def paired_difference(a: Measurement, b: Measurement) -> tuple[float, float]:
    """Mean difference a − b and its paired standard error.

    Paired over per-sample losses when both measurements carry values of the
    same length (the same samples in the same order); otherwise the
    independent-samples error sqrt(se_a² + se_b²).

    Returns
    -------
    diff, se : float
    """
    diff = a.mean - b.mean
    la, lb = a.linearized(), b.linearized()   # the values, or for token-weighted losses their linearisation
    if la is not None and lb is not None and la.size == lb.size and la.size > 1:
        return diff, _sem(la - lb)
    return diff, math.hypot(a.sem, b.sem) if math.isfinite(a.sem) and math.isfinite(b.sem) else math.nan


def decompose_epoch(epoch: Epoch) -> EpochDecomposition | None:
    """Decompose one epoch; None when the epoch has no validation loss or no training loss."""
    v = epoch.get(VALIDATION)
    if v is None or math.isnan(epoch.train_loss):
        return None
    terms: dict[str, Term] = {"penalty": Term("penalty", float(epoch.penalty), 0.0)}
    c = epoch.get(EVAL_CLEAN)
    a = epoch.get(EVAL_AUGMENTED)
    t = epoch.get(TRAIN_MODE)
    if c is None:
        # Imported logs: an end-of-epoch training loss estimated from the within-epoch trend
        # (END_OF_EPOCH_ESTIMATE) still separates the timing term.
        t = t if t is not None else epoch.get(END_OF_EPOCH_ESTIMATE)
        rest = epoch.train_loss
        if t is not None and math.isfinite(t.mean):
            terms["timing"] = Term("timing", epoch.train_loss - t.mean, t.sem,
                                   MEASURED if t.source == "measured" else "estimated")
            rest = t.mean
        se = v.sem if t is None else math.hypot(t.sem, v.sem)
        terms["unmeasured"] = Term("unmeasured", rest - v.mean, se, NOT_MEASURED)
        return EpochDecomposition(epoch.index, epoch.reported_loss, v.mean, terms, v.sem)
    a_eff = a if a is not None else c
    t_eff = t if t is not None else a_eff
    terms["timing"] = Term("timing", epoch.train_loss - t_eff.mean, t_eff.sem)
    if t is None:
        terms["train_mode"] = Term("train_mode", 0.0, 0.0, SKIPPED)
    else:
        terms["train_mode"] = Term("train_mode", *paired_difference(t, a_eff))
    if a is None:
        terms["augmentation"] = Term("augmentation", 0.0, 0.0, SKIPPED)
    else:
        terms["augmentation"] = Term("augmentation", *paired_difference(a, c))
    se_cv = math.hypot(c.sem, v.sem) if math.isfinite(c.sem) and math.isfinite(v.sem) else math.nan
    terms["generalization_gap"] = Term("generalization_gap", v.mean - c.mean, se_cv, sign=-1.0)
    return EpochDecomposition(epoch.index, epoch.reported_loss, v.mean, terms, v.sem)


def quantities_differ(run: Run) -> str | None:
    """``"train_nll (negative log-likelihood) vs val_rmse (root mean squared error)"`` when the run's training and
    validation losses measure different quantities (set by the importers from the names), else None."""
    roles = run.meta.get("roles")
    q = roles.get("quantities_differ") if isinstance(roles, dict) else None
    return str(q) if q else None


def decompose(run: Run) -> list[EpochDecomposition]:
    """Decompose every epoch of ``run`` that has a training and a validation loss.

    Returns an empty list when the two losses measure different quantities (:func:`quantities_differ`):
    their difference is not a gap, and splitting it would be meaningless.
    """
    if quantities_differ(run):
        return []
    out = []
    for e in run.epochs:
        d = decompose_epoch(e)
        if d is not None:
            out.append(d)
    return out


def _fmt(x: float, se: float) -> str:
    if math.isfinite(se):
        return f"{x:+.4g} ± {se:.2g}"
    return f"{x:+.4g}"


def _val_below(d: EpochDecomposition) -> bool:
    """Reported training loss above validation loss beyond noise.

    R averages every training step of the epoch (no sampling error); V's
    standard error is that of the validation set.
    """
    diff = d.reported - d.validation
    se = d.validation_se
    return diff > 0 and (se == 0 or not math.isfinite(se) or diff > Z_NOISE * se)


#: Causes of "validation below training" are ranked on the mean of each term over the last epochs where the
#: gap holds (up to this many), not at one epoch: a ranking that flips from epoch to epoch is noise.
POOL_EPOCHS = 3

#: Words for the terms in sentences.
TERM_WORDS = {"penalty": "the penalty", "timing": "timing", "train_mode": "dropout/batch norm (train mode)",
              "augmentation": "augmentation", "generalization_gap": "the data (a negative generalization gap)"}


def _pooled_terms(decs: list[EpochDecomposition]) -> dict[str, Term]:
    """Each term's mean over ``decs``, with a standard error that treats the epochs as fully correlated (they
    share the probe and validation samples): the mean of the epochs' errors. A conservative choice: the
    sampling noise of the mean is at most that; real change of a term between epochs is not noise."""
    out: dict[str, Term] = {}
    for name, t0 in decs[-1].terms.items():
        ts = [d.terms[name] for d in decs if name in d.terms and math.isfinite(d.terms[name].value)]
        if not ts:
            out[name] = t0
            continue
        vals = np.array([t.value for t in ts])
        ses = np.array([t.se if math.isfinite(t.se) else 0.0 for t in ts])
        se = float(ses.mean())
        out[name] = Term(name, float(vals.mean()), se, t0.status, t0.sign)
    return out


#: Scale check (:func:`scale_mismatch`): the training loss must be at least this many times the validation loss
#: (median over epochs), with a ratio this stable (interquartile range / median), over at least this many epochs,
#: while the validation loss itself moves by this share of its median (so a constant ratio means something).
#: Calibration: on the real logs of ``shared/real-logs`` the three runs with a median ratio >= 1.5 (2.58, 2.41,
#: 1.63) have relative IQRs of 0.29, 0.86 and 0.76, so none is flagged; a factor k in {2, 4, 8} applied to the
#: logged training loss of the runs whose own ratio is stable (relative IQR <= 0.15) is flagged in all 18 cases;
#: on 2 000 noise runs whose ratio drifts between 0.5 and 1.8 it fires on none (tests/test_scale_mismatch.py).
SCALE_RATIO_MIN = 2.0
SCALE_SPREAD_MAX = 0.15
SCALE_MIN_EPOCHS = 4
SCALE_V_MOVE_MIN = 0.1


def scale_mismatch(run: Run, reference: str = VALIDATION) -> dict[str, float] | None:
    """The training loss a constant multiple (>= 2) of the validation loss: two losses not on one scale.

    ``reference``: the measurement the reported training loss is compared with: the validation loss for logs; for
    recorded runs the train-mode (or eval-mode) loss on the probe set, which a correctly logged training loss
    follows closely.

    huggingface/transformers#34242 and #37766: under gradient accumulation the logged training loss was summed over
    the accumulated steps, k times the evaluation loss. A sum instead of a mean, or a training objective much
    harder than validation's (mixup, cutmix), looks the same. Judged on the epochs with a finite, positive
    reported training loss and validation loss (:data:`SCALE_RATIO_MIN`, :data:`SCALE_SPREAD_MAX`,
    :data:`SCALE_MIN_EPOCHS`, :data:`SCALE_V_MOVE_MIN`).

    Returns
    -------
    dict or None
        ``{"ratio": median R/V, "spread": IQR/median, "epochs": n, "k": nearest integer}``, or None.
    """
    pairs = [(e.train_loss, e.get(reference).mean) for e in run.epochs  # type: ignore[union-attr]
             if e.get(reference) is not None]
    arr = np.array([(r, v) for r, v in pairs if math.isfinite(r) and math.isfinite(v) and r > 0 and v > 0])
    if len(arr) < SCALE_MIN_EPOCHS:
        return None
    ratio = arr[:, 0] / arr[:, 1]
    med = float(np.median(ratio))
    q25, q75 = np.percentile(ratio, [25, 75])
    spread = float((q75 - q25) / med)
    v_move = float((arr[:, 1].max() - arr[:, 1].min()) / np.median(arr[:, 1]))
    if med < SCALE_RATIO_MIN or spread > SCALE_SPREAD_MAX or v_move < SCALE_V_MOVE_MIN:
        return None
    return {"ratio": med, "spread": spread, "epochs": float(len(arr)), "k": float(round(med))}


def gap_findings(run: Run, decomposition: list[EpochDecomposition] | None = None,
                 split: list[Finding] | None = None) -> list[Finding]:
    """Findings of the gap family, judged at the last decomposable epoch.

    * ``gap.decomposition`` (info): the split of reported − validation into
      measured parts, largest first.
    * ``gap.val_below_train`` (info): validation loss below the reported
      training loss beyond noise, with the measured causes ranked by size,
      at the last epoch where it holds (and in how many epochs it holds).
    * ``gap.batchnorm_running_stats`` (warning): the train-mode term is
      negative beyond noise: eval mode (running statistics) is worse than
      train mode (batch statistics) on the same inputs.
    * ``gap.val_easier`` (warning): V < C beyond noise (the eval-mode training
      loss is above the validation loss): the data, not the training
      procedure, makes validation easier; audit the split.
    * ``gap.not_measured`` (info): no probe passes, so the gap cannot be split.

    ``split``: the split findings when the split was audited (an audit, or the adapters' duplicate check found
    something); ``gap.val_easier`` then says what they found, or that they found nothing.
    """
    differ = quantities_differ(run)
    if differ:
        return [Finding(
            "gap.different_quantities", "info", "Training and validation losses measure different things",
            f"The log pairs {differ}: their difference is not a generalization gap, so losslens does not split "
            "it. The regime is judged on each curve's own shape.",
            "Log the same loss on both splits (e.g. the validation loss with the training criterion) to compare "
            "them.", [], (), {"quantities": differ})]
    ref = (TRAIN_MODE if run.has(TRAIN_MODE) else EVAL_CLEAN) if run.has(EVAL_CLEAN) else VALIDATION
    scale = scale_mismatch(run, ref)
    if scale is not None:
        k = int(scale["k"])
        ref_name = {VALIDATION: "validation loss", TRAIN_MODE: "train-mode loss measured on the probe set",
                    EVAL_CLEAN: "eval-mode loss measured on the probe set"}[ref]
        return [Finding(
            "gap.scale_mismatch", "warning", "The training and validation losses are not on the same scale",
            f"The reported training loss is {scale['ratio']:.3g} times the {ref_name}, at a nearly constant "
            f"ratio (interquartile range {scale['spread']:.0%} of it) over {int(scale['epochs'])} epochs. "
            f"A constant factor this large (about {k}) is what a training loss summed over {k} "
            "gradient-accumulation steps or over a batch, instead of averaged, looks like (transformers#34242), "
            "or a training objective much harder than validation's (mixup, cutmix). Their difference is not a "
            "generalization gap, so losslens does not split it; each curve's shape is still judged.",
            f"Check how the training loss is logged (divide by the accumulation steps: about {k})"
            + ("; or record the run with a losslens adapter, which measures the training loss on the validation "
               "loss's scale." if ref == VALIDATION else
               ": the loss given to the recorder must be the mean per sample (per token for language models)."),
            [Evidence(f"median reported training loss / {ref_name}", scale["ratio"], math.nan)], (),
            {**scale, "reference": ref})]
    dec = decomposition if decomposition is not None else decompose(run)
    dec = [d for d in dec if all(math.isfinite(t.value) for t in d.terms.values())]
    if not dec:
        return []
    d = dec[-1]
    findings: list[Finding] = []
    ev = [Evidence(TERM_LABELS[n], t.value, t.se, (d.epoch,)) for n, t in d.terms.items()]
    diff = d.reported - d.validation
    if "unmeasured" in d.terms:
        timing = d.terms.get("timing")
        if timing is not None:
            what = (f"the timing part is estimated from the within-epoch trend of the logged losses "
                    f"({_fmt(timing.value, timing.se)}); the rest ({_fmt(d.terms['unmeasured'].value, math.nan)}: "
                    "dropout/batch norm, augmentation and generalization together) is not measured without "
                    "probe passes.")
        else:
            what = ("without probe passes the parts of this difference (timing, dropout/batch norm, augmentation, "
                    "generalization) are not measured.")
        off = run.meta.get("probes_off_reason")
        rec = ("Record the run with a losslens adapter (e.g. `lens = LossLens(model, loss_fn, train_data=train_ds, "
               "val_data=val_ds)` and `lens.step(loss, batch_size=len(y))` / `lens.end_epoch()`) to measure them.")
        if isinstance(off, str) and off:   # an adapter recorded without probes, and said why
            what += f" {off}"
            rec = "Nothing to change for the recording; read the difference as the whole gap of the objective."
        findings.append(Finding(
            "gap.not_measured", "info",
            "The gap between training and validation loss cannot be fully split" if timing is not None else
            "The gap between training and validation loss cannot be split",
            f"At {where(run, d.epoch)} the reported training loss is {d.reported:.4g} and the validation loss "
            f"{d.validation:.4g} (difference {diff:+.4g}); {what}", rec, ev, (d.epoch,)))
        findings += _imported_val_below(run, dec)
        return findings
    parts = "; ".join(f"{'− ' if t.sign < 0 else ''}{n}: {_fmt(t.value, t.se)}" for n, t in d.terms.items())
    findings.append(Finding(
        "gap.decomposition", "info",
        f"Reported training loss − validation loss = {diff:+.4g} at epoch {d.epoch}, split into measured parts",
        f"{parts} ({loss_unit(run)}; terms sum to {d.total:+.4g}).", "", ev, (d.epoch,),
        {"epoch": d.epoch, **{f"term_{n}": t.value for n, t in d.terms.items()}}))
    below = [x for x in dec if _val_below(x)]
    if below:
        # Judged at the last epoch where it holds: curves that cross late (validation above training at the
        # very end) still get their explanation, with the count of epochs it held in.
        db = below[-1]
        pooled = _pooled_terms(below[-POOL_EPOCHS:])
        ranked_b = sorted((t for t in pooled.values() if t.status == MEASURED), key=lambda t: -abs(t.value))
        causes = [t for t in ranked_b if t.contribution > 0 and (t.significant or t.name == "penalty")]
        k = min(POOL_EPOCHS, len(below))
        span = f"epoch {db.epoch}" if k == 1 else f"the last {k} epochs where it holds (to epoch {db.epoch})"
        when = f"at epoch {db.epoch}" + ("" if db.epoch == d.epoch else " (the last epoch where it holds)")
        held = f" It holds beyond noise in {len(below)} of {len(dec)} epochs."
        tie: list[str] = []
        if causes:
            top = causes[0]
            tie = [top.name] + [t.name for t in causes[1:]
                                if top.contribution - t.contribution <= Z_NOISE * math.hypot(top.se, t.se)]
            # values, a term with sign −1 written "− name" so the parts read as a sum, and shares of the causes'
            # total, so they add up to 100 % (docs/diagnosis.md, "Conventions"); a share of the difference
            # exceeds 100 % whenever a negative part (e.g. V above C) offsets the causes
            total = sum(t.contribution for t in causes)
            lines = ", ".join(f"{'− ' if t.sign < 0 else ''}{t.name} {t.value:+.4g} ± {t.se:.2g} "
                              f"({100 * t.contribution / total:.0f} %)" for t in causes)
            tie_txt = ""
            if len(tie) > 1:
                tie_txt = (f" {' and '.join(TERM_WORDS.get(n, n) for n in tie)} are of similar size (within noise "
                           "of each other): neither is the larger cause.")
            msg = (f"The validation loss ({db.validation:.4g}) is below the reported training loss "
                   f"({db.reported:.4g}) {when}. Measured causes, averaged over {span}, largest first, with "
                   f"their shares of the causes' total: {lines}.{tie_txt}{held}")
        else:
            msg = (f"The validation loss is below the reported training loss {when}, but no single measured part "
                   f"is beyond noise.{held}")
        rec = _RECOMMEND.get(causes[0].name, "") if causes else ""
        findings.append(Finding(
            "gap.val_below_train", "info", "Why the validation loss is below the training loss", msg, rec,
            [Evidence(TERM_LABELS[t.name], t.value, t.se, (db.epoch,)) for t in causes], (db.epoch,),
            {"causes": [t.name for t in causes], "tie": tie if len(tie) > 1 else [], "epoch": db.epoch,
             "epochs_holding": len(below), "epochs_pooled": k}))
    tm = d.terms.get("train_mode")
    if tm is not None and tm.value < 0 and tm.significant:
        n_neg = sum(1 for x in dec if x.terms["train_mode"].significant and x.terms["train_mode"].value < 0)
        findings.append(Finding(
            "gap.batchnorm_running_stats", "warning",
            "Eval mode is worse than train mode: batch-norm running statistics lag the weights",
            f"At epoch {d.epoch} the probe loss in train mode is {-tm.value:.4g} ± {tm.se:.2g} lower than in eval "
            f"mode on the same inputs (beyond noise in {n_neg} of {len(dec)} epochs). Dropout can only raise the "
            "train-mode loss; batch norm's running mean/variance, used in eval mode, differ from the batch "
            "statistics the weights were trained with.",
            "Recompute the batch-norm statistics at the end-of-epoch weights before evaluating (e.g. "
            "torch.optim.swa_utils.update_bn, or a few forward passes in train mode without gradient), use a larger "
            "momentum, or larger batches.",
            [Evidence(TERM_LABELS["train_mode"], tm.value, tm.se, (d.epoch,))], (d.epoch,),
            {"epochs_beyond_noise": n_neg}))
    g = d.terms["generalization_gap"]
    if g.value < 0 and g.significant:
        n_ep = sum(1 for x in dec
                   if x.terms["generalization_gap"].significant and x.terms["generalization_gap"].value < 0)
        audit_txt, audited = "", {}
        if split is not None:
            flagged = [f for f in split if f.severity != "info"]
            audit_txt = (" The split audit found: " + "; ".join(f.title for f in flagged) + "." if flagged else
                         " The split audit found no duplicates, leaks or shift: look at per-sample difficulty and "
                         "label noise in the training set.")
            audited = {"audit_codes": [f.code for f in flagged]}
        findings.append(Finding(
            "gap.val_easier", "warning", "The validation set is easier than the training data",
            f"With the same end-of-epoch weights in eval mode on clean inputs, the training probe loss "
            f"({d.validation - g.value:.4g}) is above the validation loss ({d.validation:.4g}) by "
            f"{_fmt(-g.value, g.se)} at epoch {d.epoch} (beyond noise in {n_ep} of {len(dec)} epochs). "
            "Dropout, timing and augmentation cannot cause this: the data does." + audit_txt,
            "Audit the split: duplicates or leaks between training and validation, label noise or corrupted "
            "samples in the training set, or a validation set drawn from an easier distribution.",
            [Evidence(TERM_LABELS["generalization_gap"], g.value, g.se, (d.epoch,))], (d.epoch,),
            {"epochs_beyond_noise": n_ep, **audited}))
    return findings


def _imported_val_below(run: Run, dec: list[EpochDecomposition]) -> list[Finding]:
    """``gap.val_below_train`` for a log without probes: by how much, in how many evaluations, and how much of
    it the estimated timing part explains; what only probe passes can tell is said."""
    below = [x for x in dec if x.reported > x.validation]
    if not below or below[-1] is not dec[-1]:   # about the end of the run, as the user asks it
        return []
    db = below[-1]
    diff = db.reported - db.validation
    timing = db.terms.get("timing")
    t_txt, data = "", {"epoch": db.epoch, "epochs_holding": len(below), "difference": diff, "causes": []}
    if timing is not None and math.isfinite(timing.value):
        share = timing.value / diff if diff else math.nan
        t_txt = (f" The estimated timing part (the training loss averaged over an epoch in which the model "
                 f"improved) is {_fmt(timing.value, timing.se)}" + (f", {100 * share:.0f} % of it" if
                                                                     math.isfinite(share) else "") + ".")
        data["timing"] = timing.value
        if timing.significant and timing.value > 0:
            data["causes"] = ["timing"]
    rest = diff - (timing.value if timing is not None and math.isfinite(timing.value) else 0.0)
    return [Finding(
        "gap.val_below_train", "info", "The validation loss is below the training loss",
        f"At {where(run, db.epoch)} the validation loss ({db.validation:.4g}) is {diff:.4g} below the reported "
        f"training loss ({db.reported:.4g}); it is below in {len(below)} of {len(dec)} evaluations.{t_txt} The "
        f"remaining {rest:+.4g} is dropout/batch norm in train mode, augmentation, a penalty in the training loss, "
        "or an easier validation set: only probe passes (the eval-mode loss of the training data) can tell them apart.",
        "Record the run with a losslens adapter to split the rest; if the validation set could be easier, run "
        "`losslens audit` on the split.",
        [Evidence("reported training loss − validation loss", diff, math.nan, (db.epoch,))], (db.epoch,), data)]


_RECOMMEND = {
    "timing": "Nothing is wrong: the reported loss is an average over an epoch in which the model improved. "
              "Compare curves at the same time (losslens places every series at its real time) or use the "
              "eval-mode training loss.",
    "train_mode": "Expected with dropout or batch norm; compare the eval-mode training loss with the validation "
                  "loss to judge generalization. If the training loss stays high too, reduce dropout.",
    "augmentation": "Expected with augmentation: the training inputs are harder than the clean validation "
                    "inputs. Judge generalization on clean inputs (eval-mode training loss vs validation).",
    "penalty": "The reported loss includes the regularization penalty; validation does not. Compare data losses.",
}
