"""The typed view of Run.meta (losslens.meta.RunInfo): every key in one section, extras kept, stores unchanged."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losslens.meta import META_FIELDS, FrameworkInfo, ProbeInfo, RunInfo
from losslens.record import Run
from losslens.store import Store

_json = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=6)


def test_every_field_of_every_section_has_one_key():
    keys = list(META_FIELDS.values())
    assert len(keys) == len(set(keys))
    for section, typ in (("probe", ProbeInfo), ("framework", FrameworkInfo)):
        assert {a for (s, a) in META_FIELDS if s == section} == {f.name for f in fields(typ)}
    for (section, attr) in META_FIELDS:
        assert attr in {f.name for f in fields(getattr(RunInfo(), section))}


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(set(META_FIELDS.values())) + ["note", "user_x"]), _json, max_size=12))
def test_from_meta_to_meta_keeps_every_value(meta):
    info = RunInfo.from_meta(meta)
    out = info.to_meta()
    for k, v in meta.items():
        if v is None and k in ("dropout_layers", "batchnorm_layers", "skipped"):
            continue
        assert out[k] == v, k
    assert info.extras == {k: v for k, v in meta.items() if k in ("note", "user_x")}


def test_a_recorded_run_reads_through_the_typed_view(tmp_path):
    torch = pytest.importorskip("torch")
    from losslens.torch import LossLens

    X = torch.randn(300, 5)
    y = (X[:, 0] > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    lens = LossLens(model, torch.nn.CrossEntropyLoss(), train_data=(X[:200], y[:200]), val_data=(X[200:], y[200:]),
                    store=tmp_path / "s.db", meta={"team": "vision"}, seed=3, probe_size=100)
    lens.step(torch.tensor(0.7), batch_size=200)
    lens.end_epoch()
    run = lens.finish()
    with Store(tmp_path / "s.db") as st_:
        stored = st_.load_run(run.id)
    for r in (run, stored):
        info = r.info
        assert (info.probe.size, info.probe.seed, info.loss.kind, info.framework.name) == (
            100, 0, "cross_entropy", "torch")
        assert info.split.train_size == 200 and info.split.val_size == 100 and info.framework.seed == 3
        p = np.bincount(y[lens.probe_indices].numpy()) / 100   # the label prior of the probe set
        assert info.loss.baseline == pytest.approx(float(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-6)
        assert info.extras["team"] == "vision" and "torch_version" in info.extras
        assert info.framework.dropout_layers == ["1 (Dropout)"]
        assert info.loss.per_sample_check["consistent"] is True


def test_with_replaces_sections_and_refuses_unknown_ones():
    info = RunInfo.from_meta({"probe_size": 10})
    bigger = info.with_(probe=replace(info.probe, size=20))
    assert (info.probe.size, bigger.probe.size) == (10, 20)
    with pytest.raises(TypeError, match="unknown section"):
        info.with_(model=1)
    assert Run("r", meta=bigger.to_meta()).info == bigger
