"""The scenario bank of issue 10: one injected cause per run, 15 scenarios x 3 seeds, real CPU training.

The headline must name the injected cause in >= 95 % of runs with no false headline claim; the run is
deterministic (the numbers and findings of a scenario are identical when it is run again).
"""

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scenarios  # noqa: E402


@pytest.fixture(scope="module")
def bank():
    return scenarios.run_bank(seeds=3)


def test_every_scenario_has_three_seeds(bank):
    assert len(scenarios.SCENARIOS) >= 15
    assert len(bank) == 3 * len(scenarios.SCENARIOS)


def test_the_headline_names_the_injected_cause(bank):
    named = sum(r["named"] for r in bank)
    assert named / len(bank) >= 0.95, scenarios.summary(bank)


def test_no_false_headline_claims(bank):
    false = [(r["scenario"], r["seed"], r["false"]) for r in bank if r["false"]]
    assert not false, scenarios.summary(bank)


def test_a_scenario_run_again_is_identical(bank):
    first = next(r for r in bank if r["scenario"] == "label noise" and r["seed"] == 1)
    again = scenarios.headline_claims(scenarios.s_label_noise(1))
    d = scenarios.s_label_noise(1)
    assert scenarios._fingerprint(d) == first["numbers"] and sorted(again) == first["claims"]
