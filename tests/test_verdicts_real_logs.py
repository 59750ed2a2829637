"""Headline verdicts agree with the expert labels of ../shared/real-logs (issue 12: >= 95 %, no refusal)."""

from pathlib import Path

import pytest

from losslens.diagnose import VERDICT_CODES
from losslens.diagnose.labels import labelled_verdicts

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real-logs"
pytestmark = pytest.mark.skipif(not (REAL / "labels.tsv").exists(), reason="../shared/real-logs/labels.tsv is absent")


def test_headline_verdicts_agree_with_the_experts():
    rows = [r for r in labelled_verdicts(REAL) if r["label"] != "same_run_as_train"]
    assert not [r for r in rows if r["verdict"] == "error"], "every labelled file imports and diagnoses"
    assert all(r["verdict"] in VERDICT_CODES for r in rows)
    agree = sum(r["agrees"] for r in rows)
    wrong = [(r["file"], r["run_index"], r["label"], r["verdict"]) for r in rows if not r["agrees"]]
    assert agree / len(rows) >= 0.95, wrong


def test_overfitting_verdicts_name_the_best_evaluation():
    rows = [r for r in labelled_verdicts(REAL) if r["verdict"] == "overfitting"]
    assert rows
    for r in rows:
        assert r["best"] is not None and r["best"]["epoch"] is not None
        if r["file"].startswith("trainer_state/"):
            assert r["best"]["step"] is not None and "step" in r["sentence"] or "evaluation" in r["sentence"]
