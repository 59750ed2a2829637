"""Format details of each importer, and format detection."""

import json

import numpy as np
import pytest

from losslens.diagnose.timing import with_end_of_epoch_estimates
from losslens.importers import LogFormatError, detect_format, load_log
from losslens.importers.roles import assign_roles
from losslens.record import END_OF_EPOCH_ESTIMATE, TRAIN_MODE, VALIDATION


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_detection_from_content_not_names(tmp_path):
    cases = {
        "keras_csv": "epoch,loss,val_loss\n0,1.0,0.9\n",
        "lightning_csv": "epoch,step,train_loss\n0,9,1.0\n",
        "fastai": "epoch,train_loss,valid_loss,time\n0,1.0,0.9,00:01\n",
        "trainer_state": json.dumps({"log_history": [{"loss": 1.0, "step": 10, "epoch": 0.5}]}),
        "keras_history": json.dumps({"loss": [1.0], "val_loss": [0.9]}),
    }
    for fmt, text in cases.items():
        assert detect_format(_write(tmp_path, f"{fmt}.txt", text)) == fmt
    with pytest.raises(LogFormatError, match="unrecognised log format"):
        detect_format(_write(tmp_path, "x.csv", "a,b\n1,2\n"))
    with pytest.raises(LogFormatError, match="neither a trainer_state.json"):
        detect_format(_write(tmp_path, "x.json", json.dumps({"a": 1})))


def test_keras_csv_resume_and_repeated_header(tmp_path):
    text = ("epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.7\n2,0.7,0.65\n"
            "epoch,loss,val_loss\n2,0.69,0.64\n3,0.6,0.6\n")  # resumed at epoch 2 with append=True
    run = load_log(_write(tmp_path, "training.log", text))
    assert [e.index for e in run.epochs] == [0, 1, 2, 3]
    assert run.epochs[2].train_loss == 0.69  # the later row of a repeated epoch wins
    assert any("repeat an earlier epoch" in n for n in run.meta["import_notes"])


def test_keras_csv_errors_name_the_line_and_field(tmp_path):
    with pytest.raises(LogFormatError, match=r"line 3: 2 fields but the header has 3"):
        load_log(_write(tmp_path, "a.log", "epoch,loss,val_loss\n0,1.0,0.9\n1,0.8\n2,0.7,0.6\n"))
    # a shorter last line (file cut while being written) is dropped with a note
    run = load_log(_write(tmp_path, "b.log", "epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.7\n2,0.7"))
    assert len(run.epochs) == 2 and "cut while written" in run.meta["import_notes"][0]
    with pytest.raises(LogFormatError, match=r"row 2: epoch 1.5 is not a whole number"):
        load_log(_write(tmp_path, "c.log", "epoch,loss\n0,1.0\n1.5,0.8\n"), format="keras_csv")


def test_keras_history_validation_freq_and_nesting(tmp_path):
    p = _write(tmp_path, "h.json", json.dumps({"loss": [1.0, 0.8, 0.7, 0.6], "val_loss": [0.75, 0.62]}))
    run = load_log(p)
    assert [VALIDATION in e.measurements for e in run.epochs] == [False, True, False, True]
    with pytest.raises(LogFormatError, match="has 3 values but the history has 4 epochs"):
        load_log(_write(tmp_path, "bad.json", json.dumps({"loss": [1.0, 0.8, 0.7, 0.6], "val_loss": [1, 2, 3]})))
    runs = load_log(_write(tmp_path, "folds.json", json.dumps({"0": {"loss": [1.0, 0.5]}, "1": {"loss": [2.0, 1.0]}})))
    assert [r.meta["history_key"] for r in runs] == ["0", "1"]
    assert runs[1].epochs[1].train_loss == 1.0


def test_lightning_header_rewrite_and_old_format(tmp_path):
    # an old file whose header grew mid-file
    text = ("epoch,step,train_loss\n0,4,1.0\n0,9,0.9\n"
            "epoch,step,train_loss,val_loss\n0,9,,0.95\n1,14,0.8,\n1,19,0.7,\n1,19,,0.75\n")
    run = load_log(_write(tmp_path, "metrics.csv", text))
    assert [e.measurements[VALIDATION].mean for e in run.epochs] == [0.95, 0.75]
    assert np.allclose(run.steps.position, [0.45, 0.95, 1.45, 1.95])
    assert run.meta["steps_per_epoch"] == 10
    old = with_end_of_epoch_estimates(load_log(_write(tmp_path, "old.csv",
                                                      "train_loss,epoch,created_at\n1.0,0,2020-01-01\n0.5,1,2020-01-02\n")))
    assert [e.train_loss for e in old.epochs] == [1.0, 0.5] and old.meta["timing_method"] == "means"


def test_lightning_logged_nan_is_a_divergence_not_a_gap(tmp_path):
    text = "epoch,step,train_loss,val_loss\n0,4,1.0,\n0,9,nan,\n0,9,,0.9\n1,14,,\n1,19,,0.8\n"
    run = load_log(_write(tmp_path, "metrics.csv", text))
    assert np.isnan(run.steps.loss).sum() == 1
    from losslens.diagnose import diagnose

    assert "stability.non_finite" in diagnose(run).codes()


def test_trainer_state_first_step_logging_and_final_summary(tmp_path):
    hist = [{"epoch": 0.01, "loss": 3.0, "step": 1}]  # logging_first_step=True
    hist += [{"epoch": s / 100, "loss": 2.0 - s / 200, "step": s} for s in range(10, 101, 10)]
    hist += [{"epoch": 1.0, "eval_loss": 1.6, "step": 100}, {"epoch": 1.0, "step": 100, "train_loss": 1.9}]
    run = load_log(_write(tmp_path, "trainer_state.json", json.dumps({"log_history": hist, "logging_steps": 10})))
    assert run.steps.span.tolist() == [1.0, 9.0] + [10.0] * 9
    assert run.steps.position[0] == pytest.approx(0.005)
    assert run.meta["train_loss_overall"] == 1.9
    e = run.epochs[0]
    assert e.train_loss == pytest.approx(np.average(run.steps.loss, weights=run.steps.span))
    # window means v = 2 − s/200 stamped at the window end s are the loss at the window centre c = s − 5:
    # the line through them is 2 − (c + 5)/200, whose value at the end (step 100) is 1.475
    assert not run.has(TRAIN_MODE) and not run.has(END_OF_EPOCH_ESTIMATE)  # the importer records the log only
    e = with_end_of_epoch_estimates(run).epochs[0]
    assert e.measurements[END_OF_EPOCH_ESTIMATE].mean == pytest.approx(2.0 - 105 / 200, abs=1e-6)


def test_roles(tmp_path):
    r = assign_roles(["train_elbo_loss", "train_recon_loss", "val_elbo_loss", "val_recon_loss"], "f")
    assert (r.train_loss, r.val_loss) == ("train_elbo_loss", "val_elbo_loss")
    r = assign_roles(["Loss/train", "Loss/val", "lr-Adam", "val_acc"], "f")
    assert (r.train_loss, r.val_loss, r.lr, r.accuracy) == ("Loss/train", "Loss/val", "lr-Adam", ["val_acc"])
    r = assign_roles(["loss", "test_loss"], "f")
    assert (r.train_loss, r.val_loss) == ("loss", None)
    with pytest.raises(LogFormatError, match="several training loss columns.*a_loss, b_loss.*--train-loss"):
        assign_roles(["a_loss", "b_loss"], "f")
    with pytest.raises(LogFormatError, match="no loss in the log"):
        assign_roles(["acc", "lr"], "f")
    assert assign_roles(["a_loss", "b_loss"], "f", train_loss="b_loss").train_loss == "b_loss"


def test_a_folder_of_log_files(tmp_path):
    _write(tmp_path, "a.log", "epoch,loss,val_loss\n0,1.0,0.9\n1,0.8,0.7\n")
    _write(tmp_path, "b.json", json.dumps({"loss": [2.0, 1.0]}))
    _write(tmp_path, "README.md", "# not a log\n")
    assert detect_format(tmp_path) == "runs"
    runs = load_log(tmp_path)
    assert [r.name for r in runs] == ["a.log", "b.json"]
    (tmp_path / "a.log").unlink()
    (tmp_path / "b.json").unlink()
    with pytest.raises(LogFormatError, match="no training log found in this folder"):
        load_log(tmp_path)
