"""Every file of ../shared/real-logs is imported (or refused with a reason), and docs/real-logs.md is current."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from losslens.diagnose.timing import with_end_of_epoch_estimates
from losslens.importers import LogFormatError, load_log
from losslens.importers.tensorboard import load_scalars
from losslens.record import END_OF_EPOCH_ESTIMATE, TRAIN_MODE, VALIDATION
from losslens.report.tables import real_logs_table, table_in_doc

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real-logs"
pytestmark = pytest.mark.skipif(not (REAL / "manifest.tsv").exists(), reason="../shared/real-logs is absent")


def _manifest():
    with open(REAL / "manifest.tsv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def table():
    return real_logs_table(REAL)


def test_the_documented_table_is_current(table):
    doc = (ROOT / "docs" / "real-logs.md").read_text(encoding="utf-8")
    assert table_in_doc(doc) == table, (
        "docs/real-logs.md is out of date: run python -c \"from losslens.report.tables import update_doc; "
        "update_doc('../shared/real-logs', 'docs/real-logs.md')\"")


def test_every_manifest_file_has_a_row(table):
    for r in _manifest():
        assert f"`{r['local_file']}`" in table
    lines = [ln for ln in table.splitlines()[2:]]
    assert all(("| imported |" in ln) or ("| refused |" in ln and "refused: " in ln) for ln in lines)


@pytest.mark.parametrize("row", _manifest() if (REAL / "manifest.tsv").exists() else [],
                         ids=lambda r: r["local_file"][:40])
def test_each_file_imports_or_is_refused_with_a_reason(row):
    p = REAL / row["local_file"]
    try:
        got = load_log(p)
    except LogFormatError as exc:
        assert str(p) in str(exc) and exc.reason
        return
    runs = got if isinstance(got, list) else [got]
    assert runs and all(r.status == "imported" for r in runs)
    has_val = any(r.has(VALIDATION) for r in runs)
    if row["has_val"] == "yes" and "__train__" not in row["local_file"]:
        assert has_val, "the manifest lists a validation loss"
    if row["kind"] == "keras":
        assert sum(len(r.epochs) for r in runs) == int(row["n_rows_or_entries"])
    for r in runs:
        assert not r.has(TRAIN_MODE) and not r.has(END_OF_EPOCH_ESTIMATE)  # importers record the log only
        for e in with_end_of_epoch_estimates(r).epochs:
            t = e.measurements.get(END_OF_EPOCH_ESTIMATE)
            if t is not None:
                assert t.source == "estimated" and (math.isfinite(t.sem) or math.isnan(t.mean))


def test_tensorboard_files_are_read_completely():
    """Every scalar point of the loss tags is read (manifest: loss-tag scalar points)."""
    for r in _manifest():
        if r["kind"] != "tfevents":
            continue
        data = load_scalars(REAL / r["local_file"])
        n = sum(s.size for t, (s, _) in data.items() if "loss" in t.lower())
        assert n == int(r["n_rows_or_entries"]), r["local_file"]


def test_keras_tf2_tensor_events_make_one_run():
    files = sorted((REAL / "tfevents").glob("002__*"))
    from losslens.importers.tensorboard import read_files

    run = read_files([("train", str(files[0])), ("validation", str(files[1]))])
    assert run.meta["framework"] == "keras" and len(run.epochs) == 24
    assert run.epochs[0].train_loss == pytest.approx(0.23813822865486145)
    assert run.epochs[0].measurements[VALIDATION].mean == pytest.approx(13.205711364746094)
    assert run.meta["roles"]["learning_rate"] == "train/epoch_lr"
    # a Keras TF2 file on its own is told by its tags: the validation file has only validation losses
    alone = load_log(files[1])
    assert alone.has(VALIDATION) and all(math.isnan(e.train_loss) for e in alone.epochs)


def test_trainer_state_windows_and_evaluations():
    p = REAL / "trainer_state" / "010__arshiv-web__Financial-News-Sentiment-Analysis__trainer_state.json"
    state = json.loads(p.read_text())
    run = load_log(p)
    evals = [h for h in state["log_history"] if "eval_loss" in h]
    assert [e.measurements[VALIDATION].mean for e in run.epochs] == pytest.approx([h["eval_loss"] for h in evals])
    assert [e.position for e in run.epochs] == pytest.approx([h["epoch"] for h in evals])
    losses = [h for h in state["log_history"] if "loss" in h]
    spe = 10350 / 10
    # window means at the window centre: (previous step + step) / 2, in epochs
    steps = np.array([h["step"] for h in losses], dtype=float)
    centre = (np.concatenate([[0.0], steps[:-1]]) + steps) / 2 / spe
    assert np.allclose(run.steps.position, centre)
    assert np.allclose(run.steps.span, 500)
    assert run.epochs[0].metrics["eval_accuracy"] == pytest.approx(evals[0]["eval_accuracy"])


def test_lightning_sparse_rows_and_epoch_ends():
    p = REAL / "lightning" / "012__Hachimboua__CONTROLIT__lightning_logs__version_0__metrics.csv"
    run = load_log(p)
    assert run.meta["steps_per_epoch"] == 29
    # the step value at global step 49 is in epoch 1 (steps 29..57): batch 20 of 29
    i = int(np.flatnonzero(np.isclose(run.steps.loss, 1.4103891849517822))[0])
    assert run.steps.epoch[i] == 1 and run.steps.position[i] == pytest.approx(1 + 20.5 / 29)
    assert run.epochs[0].measurements[VALIDATION].mean == pytest.approx(1.4304062128067017)


def test_appended_keras_runs_are_split():
    runs = load_log(REAL / "keras" /
                    "018__dhairyasheelsutar__Food-11-image-classification__logs__inceptionV3_regularize.csv")
    assert [len(r.epochs) for r in runs] == [7, 5, 4, 7]
    assert len({r.name for r in runs}) == 4


def test_keras_tf1_epoch_means_and_batches():
    p = next((REAL / "tfevents").glob("010__*"))
    run = load_log(p)
    assert len(run.steps) == 14400 and len(run.epochs) == 2
    assert run.epochs[0].train_loss == pytest.approx(0.7184673, rel=1e-6)
    assert run.epochs[1].measurements[VALIDATION].mean == pytest.approx(0.5146044, rel=1e-6)
