"""Every adapter passes the conformance suite of tests/conformance.py (one check, one adapter, one test)."""

from __future__ import annotations

import importlib.util

import conformance as cf
import pytest

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore:.*LeafSpec.*")]

CRASH_AFTER = 2


@pytest.fixture(scope="module", params=sorted(cf.HARNESSES))
def outcomes(request, tmp_path_factory):
    name = request.param
    module, harness = cf.HARNESSES[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    tmp = tmp_path_factory.mktemp(name)
    off = harness(False, None)
    on = harness(True, tmp / "on.db")
    again = harness(True, tmp / "again.db")
    crashed = harness(True, tmp / "crashed.db", crash_after=CRASH_AFTER)
    return name, off, on, again, crashed


def test_training_unchanged(outcomes):
    _, off, on, _, _ = outcomes
    cf.check_training_unchanged(off, on)


def test_decomposition_identity(outcomes):
    cf.check_decomposition_identity(outcomes[2])


def test_per_sample_losses(outcomes):
    cf.check_per_sample_losses(outcomes[2])


def test_deterministic_probe(outcomes):
    _, _, on, again, _ = outcomes
    cf.check_deterministic_probe(on, again)


def test_crash_safety(outcomes):
    cf.check_crash_safety(outcomes[4], CRASH_AFTER)


def test_every_check_has_a_test():
    tests = {n[len("test_"):] for n in globals() if n.startswith("test_") and n != "test_every_check_has_a_test"}
    assert tests == set(cf.CHECKS)
