"""Bad input gets one clear error, nothing hangs, nothing stops training (parts of issue 13)."""

import os
import sys

import numpy as np
import pytest

from losslens.importers import LogFormatError, load_log


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_a_log_is_refused_not_read(tmp_path):
    p = tmp_path / "metrics.csv"
    os.mkfifo(p)   # opening it for reading would block until a writer appears
    with pytest.raises(LogFormatError, match="not a regular file"):
        load_log(p)


def test_run_names_cannot_drive_the_terminal(tmp_path):
    from click.testing import CliRunner

    from losslens.cli import main
    from losslens.record import Run
    from losslens.store import Store

    with Store(tmp_path / "s.db") as s:
        s.create_run("evil\x1b]0;pwned\x07\x1b[2J", {}, None)
    out = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "s.db")]).output
    assert "\x1b" not in out and "\\x1b" in out
    assert Run  # the store API used above


torch = pytest.importorskip("torch")


def test_metrics_with_a_vector_are_a_type_error():
    from losslens.torch import LossLens

    X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    lens = LossLens(torch.nn.Linear(4, 2), torch.nn.CrossEntropyLoss(), train_data=(X, y), store=None, probe_size=10)
    lens.step(torch.tensor(1.0), batch_size=8)
    with pytest.raises(TypeError, match="metrics"):
        lens.end_epoch({"acc": torch.tensor([0.5, 0.6])})


def test_batch_norm_with_a_one_sample_probe_is_refused_at_construction():
    from losslens.torch import LossLens

    X, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="probe_size"):
        LossLens(model, torch.nn.CrossEntropyLoss(), train_data=(X, y), store=None, probe_size=1)
    assert np and sys   # imports used by the platform checks above


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_folder_with_a_fifo_diagnoses_the_real_logs(tmp_path):
    from losslens.importers import load_logs

    os.mkfifo(tmp_path / "events.out.tfevents.fifo")
    (tmp_path / "log.csv").write_text("epoch,loss,val_loss\n0,1.0,1.1\n1,0.8,0.9\n2,0.6,0.8\n")
    try:
        runs = load_logs([tmp_path])
    except LogFormatError as exc:        # refused with a reason is fine; hanging is not
        assert "regular" in str(exc) or "no training log" in str(exc)
    else:
        assert runs


def test_clear_messages_for_a_store_and_a_log_without_loss(tmp_path):
    from losslens.store import Store

    with Store(tmp_path / "losslens.db") as s:
        s.create_run("r", {}, None)
    with pytest.raises(LogFormatError, match="losslens report"):
        load_log(tmp_path / "losslens.db")
    p = tmp_path / "log.csv"
    p.write_text("epoch,accuracy,val_accuracy\n0,0.5,0.4\n1,0.6,0.5\n")
    with pytest.raises(LogFormatError, match=r"no loss column \(available: accuracy, val_accuracy\)"):
        load_log(p)
