"""Checks registered by name: the diagnosis runs the registry; each finding is built once, by one builder."""

from __future__ import annotations

import numpy as np
import pytest

from losslens.audit import audit_split
from losslens.diagnose import diagnose
from losslens.diagnose import registry as reg
from losslens.findings import Finding
from losslens.record import EVAL_CLEAN, VALIDATION, Epoch, Measurement, Run


def _run(n_epochs: int = 6, easier: bool = False, meta: dict | None = None) -> Run:
    rng = np.random.default_rng(0)
    run = Run("r", meta=dict(meta or {}))
    for e in range(n_epochs):
        c = 1.0 / (e + 1) + 0.05 * rng.standard_normal(300)
        v = c.mean() + (-0.3 if easier else 0.05) + 0.05 * rng.standard_normal(200)
        run.epochs.append(Epoch(e, train_loss=float(c.mean()) + 0.02, measurements={
            EVAL_CLEAN: Measurement.from_values(EVAL_CLEAN, c), VALIDATION: Measurement.from_values(VALIDATION, v)}))
    return run


def test_the_built_in_checks_run_in_registry_order():
    names = [c.name for c in reg.registered_checks()]
    assert names == ["stability", "regime", "data", "stopping", "gap", "split", "recording"]
    orders = [c.order for c in reg.registered_checks()]
    assert orders == sorted(orders)
    families = {c.name: c for c in reg.registered_checks()}
    d = diagnose(_run())
    position = {"stability": 0, "regime": 1, "data": 2, "stopping": 3, "gap": 4, "split": 5, "recording": 6}
    fam = [position[{"regime": "regime", "stability": "stability", "data": "data", "stopping": "stopping",
                     "gap": "gap", "split": "split", "recording": "recording"}[f.code.split(".")[0]]]
           for f in d.findings]
    assert fam == sorted(fam) and families["gap"].description


def test_a_registered_check_is_run_and_listed_in_its_place(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))

    @reg.register("custom", order=45, description="test check")
    def custom(ctx: reg.Context) -> list[Finding]:
        seen = [f.code.split(".")[0] for f in ctx.findings]
        return [Finding("custom.seen", "info", "saw the earlier families", ",".join(sorted(set(seen))), "")]

    d = diagnose(_run())
    codes = d.codes()
    assert "custom.seen" in codes
    i = codes.index("custom.seen")
    assert all(not c.startswith(("split.", "recording.")) for c in codes[:i])
    assert "gap" in d.get("custom.seen").message and "split" not in d.get("custom.seen").message


def test_registering_a_taken_name_or_order_fails(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", dict(reg._REGISTRY))
    reg.registered_checks()
    with pytest.raises(ValueError, match="'gap' exists"):
        reg.register("gap", order=99, description="")(lambda ctx: [])
    with pytest.raises(ValueError, match="order 40 is taken by 'gap'"):
        reg.register("other", order=40, description="")(lambda ctx: [])


def test_exact_duplicates_have_one_builder_and_one_severity_rule():
    """The audit's finding and the one from the adapters' check at the start of training agree."""
    x = np.arange(400.0).reshape(200, 2)
    xv = np.concatenate([x[:6], x[:194] + 0.5])       # 6 of 200 validation samples copied: 3 % -> error
    res = audit_split(x, xv, shift=False)
    audited = next(f for f in res.findings() if f.code == "split.exact_duplicates")
    from losslens.recording import input_duplicates

    meta = {"split_exact_duplicates": input_duplicates([x], [xv])}
    recorded = diagnose(_run(meta=meta)).get("split.exact_duplicates")
    assert recorded is not None
    assert (recorded.severity, recorded.title) == (audited.severity, audited.title) == (
        "error", "6 validation samples also occur in the training set")
    assert recorded.data["pairs"] == audited.data["pairs"][:100]
    assert "when recording started" in recorded.message


def test_val_easier_is_complete_when_built():
    """gap.val_easier cites the split check: built once, with the split's findings in its message."""
    x = np.arange(400.0).reshape(200, 2)
    meta = {"split_exact_duplicates": __import__("losslens.recording", fromlist=["x"]).input_duplicates(
        [x], [np.concatenate([x[:6], x[:194] + 0.5])])}
    d = diagnose(_run(easier=True, meta=meta))
    f = d.get("gap.val_easier")
    assert f is not None
    assert "The split audit found: 6 validation samples also occur in the training set." in f.message
    assert f.data["audit_codes"] == ["split.exact_duplicates"]
    clean = diagnose(_run(easier=True)).get("gap.val_easier")
    assert "split audit" not in clean.message and "audit_codes" not in clean.data
