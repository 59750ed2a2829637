"""The built-in checks, registered by name (:mod:`.registry`); their order is the order of the findings.

=========  =====  ==============================================================================================
name       order  findings
=========  =====  ==============================================================================================
stability  10     ``stability.*``: non-finite losses, divergence (:mod:`.stability`)
regime     20     ``regime.*``: the fit regime (:mod:`.regime`); none on a recorded run that diverged
data       30     ``data.*``: label noise from the probe set's per-sample losses (:mod:`.label_noise`)
stopping   35     ``stopping.*``: which checkpoint to keep, from a log and its checkpoint folders (:mod:`.checkpoints`)
gap        40     ``gap.*``: the gap decomposition and why validation is below training (:mod:`.gap`)
split      50     ``split.*``: the split audit, or the adapters' exact-duplicate check (:mod:`.split`)
recording  60     ``recording.*``: epochs whose measurement failed
=========  =====  ==============================================================================================
"""

from __future__ import annotations

from ..findings import Finding
from .checkpoints import checkpoint_findings
from .gap import gap_findings
from .label_noise import label_noise_findings
from .regime import POLICY_GRADIENT, regime_findings
from .registry import Context, register
from .stability import stability_findings
from .staircase import staircase_findings

__all__ = ["stability", "regime", "data", "stopping", "gap", "split", "recording"]


@register("stability", order=10, description="non-finite losses and divergence")
def stability(ctx: Context) -> list[Finding]:
    found = stability_findings(ctx.run)
    if ctx.run.meta.get("objective") == POLICY_GRADIENT:   # a surrogate's swings are not instability; NaN is
        found = [f for f in found if f.code == "stability.non_finite"]
    return found


@register("regime", order=20, description="the fit regime: overfitting, converged, still improving, not learning")
def regime(ctx: Context) -> list[Finding]:
    # no fit-regime verdict on a diverged recorded run: its numbers after the divergence say nothing about fit
    diverged = any(f.code == "stability.divergence" or (f.code == "stability.non_finite" and
                                                        "validation" not in str(f.data.get("what", "")))
                   for f in ctx.findings)
    return [] if diverged and ctx.run.status != "imported" else regime_findings(ctx.run)


@register("data", order=30, description="label noise in the training data, from per-sample probe losses; the "
                                        "epoch staircase of the step losses (memorization of seen samples)")
def data(ctx: Context) -> list[Finding]:
    return label_noise_findings(ctx.run) + staircase_findings(ctx.run)


@register("stopping", order=35, description="which saved checkpoint to keep, and the training after the last "
                                            "material improvement")
def stopping(ctx: Context) -> list[Finding]:
    return checkpoint_findings(ctx.run)


@register("gap", order=40, description="the gap decomposition; why the validation loss is below training")
def gap(ctx: Context) -> list[Finding]:
    audited = ctx.audit is not None or bool(ctx.split)
    return gap_findings(ctx.run, ctx.decomposition, split=ctx.split if audited else None)


@register("split", order=50, description="duplicates, leaks and shift between the training and validation sets")
def split(ctx: Context) -> list[Finding]:
    return list(ctx.split)


@register("recording", order=60, description="epochs whose probe/validation passes failed while recording; "
                                             "damaged records skipped in an imported log or a store")
def recording(ctx: Context) -> list[Finding]:
    out: list[Finding] = []
    damage = ctx.run.meta.get("damaged_records")
    if isinstance(damage, list) and damage:
        out.append(Finding(
            "recording.damaged_log", "warning", "Damaged records were skipped: some values were not read",
            "; ".join(map(str, damage[:5])) + ("; …" if len(damage) > 5 else ""),
            "Read the figures with the gap in mind; if the file is a copy, copy it again from the training "
            "machine.", [], (),
            {"damage": damage[:20]}))
    errs = ctx.run.meta.get("measurement_errors")
    if not isinstance(errs, list) or not errs:
        return out
    eps = [int(e.get("epoch", -1)) for e in errs if isinstance(e, dict)]
    first = errs[0].get("error", "") if isinstance(errs[0], dict) else str(errs[0])
    return [Finding(
        "recording.measurement_failed", "warning",
        f"The probe/validation passes failed in {len(eps)} epoch(s): those epochs have no measurements",
        f"Epochs {', '.join(map(str, eps[:10]))}{', …' if len(eps) > 10 else ''} were recorded with their step "
        f"losses only; training went on. First error: {first}",
        "Check that every probe and validation sample can be read and has the target type the loss expects "
        "(the error above names it).", [], tuple(eps[:10]), {"epochs": eps, "errors": errs[:20]})] + out
