"""``losslens diagnose PATH [PATH ...]``."""

import json
import pickle

import pytest
from click.testing import CliRunner

from losslens.cli import main


def _keras_csv(path, losses, vals, extra=""):
    rows = ["epoch,loss,val_loss" + ("," + extra if extra else "")]
    for e, (loss, v) in enumerate(zip(losses, vals)):
        rows.append(f"{e},{loss},{v}" + (f",{loss * 2}" if extra else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


LOSSES = [1.0, 0.7, 0.55, 0.47, 0.43, 0.41, 0.4]
VALS = [0.8, 0.6, 0.52, 0.5, 0.5, 0.51, 0.53]


def test_one_log_prints_findings_and_writes_both_reports(tmp_path):
    log = _keras_csv(tmp_path / "training.log", LOSSES, VALS)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["diagnose", str(log), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").exists() and (out / "report.json").exists()
    data = json.loads((out / "report.json").read_text())
    codes = data["report"]["codes"]
    assert "gap.not_measured" in codes
    # the imported run, its estimated end-of-epoch training loss and the timing term
    assert data["run"]["status"] == "imported"
    ep = data["run"]["epochs"][2]
    assert ep["measurements"]["end_of_epoch_estimate"]["source"] == "estimated"
    assert ep["measurements"]["end_of_epoch_estimate"]["mean"] == pytest.approx((0.55 + 0.47) / 2)
    assert data["decomposition"][-1]["terms"]["timing"]["status"] == "estimated"
    # what needs probes is stated, with the change to the training code
    assert "losslens.keras.LossLens" in res.output
    assert "estimated" in res.output


def test_several_logs_give_an_overview(tmp_path):
    a = _keras_csv(tmp_path / "a.csv", LOSSES, VALS)
    b = _keras_csv(tmp_path / "b.csv", [x * 1.1 for x in LOSSES], VALS)
    out = tmp_path / "reports"
    res = CliRunner().invoke(main, ["diagnose", str(a), str(b), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "overview.json").read_text())
    assert [r["run"] for r in rows] == ["a.csv", "b.csv"]
    assert rows[1]["last_train_loss"] == pytest.approx(0.44)
    assert (out / "a.csv" / "report.html").exists() and (out / "b.csv" / "report.json").exists()
    html = (out / "overview.html").read_text()
    assert 'href="a.csv/report.html"' in html
    assert "overview: 2 runs" in res.output


def test_a_folder_of_runs(tmp_path):
    for i in range(2):
        d = tmp_path / "lightning_logs" / f"version_{i}"
        d.mkdir(parents=True)
        rows = ["epoch,step,train_loss,val_loss"]
        for e in range(5):
            rows.append(f"{e},{10 * e + 9},{1.0 / (e + 1) + i},")
            rows.append(f"{e},{10 * e + 9},,{1.1 / (e + 1) + i}")
        (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["diagnose", str(tmp_path / "lightning_logs"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "overview.json").read_text())
    assert len(rows) == 2 and rows[1]["last_val_loss"] == pytest.approx(1.1 / 5 + 1)


def test_bad_input_names_the_file_and_the_reason_and_the_rest_goes_on(tmp_path):
    good = _keras_csv(tmp_path / "good.csv", LOSSES, VALS)
    bad = tmp_path / "bad.csv"
    bad.write_text("epoch,loss\n0,abc\n")
    res = CliRunner().invoke(main, ["diagnose", str(bad), str(good), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 1
    assert f"error: {bad}: column 'loss', line 2: expected a number, got 'abc'" in res.output
    assert (tmp_path / "o" / "good.csv" / "report.json").exists()
    res = CliRunner().invoke(main, ["diagnose", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "missing.csv: no such file or folder" in res.output


def test_pickles_need_the_flag(tmp_path):
    p = tmp_path / "training.pickle"
    p.write_bytes(pickle.dumps({"loss": LOSSES, "val_loss": VALS}))
    res = CliRunner().invoke(main, ["diagnose", str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "pickle" in res.output and "--allow-pickle" in res.output
    assert not (tmp_path / "o" / "report.json").exists()
    res = CliRunner().invoke(main, ["diagnose", str(p), "--allow-pickle", "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "pickle" in res.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["run"]["epochs"][6]["train_loss"] == 0.4


def test_loss_names_and_format_can_be_chosen(tmp_path):
    log = _keras_csv(tmp_path / "t.txt", LOSSES, VALS, extra="dice_loss")
    res = CliRunner().invoke(main, ["diagnose", str(log), "--train-loss", "dice_loss", "--log-format", "keras_csv",
                                    "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["run"]["meta"]["roles"]["train_loss"] == "dice_loss"
    assert data["run"]["epochs"][0]["train_loss"] == pytest.approx(2.0)
    res = CliRunner().invoke(main, ["diagnose", str(log), "--val-loss", "nope", "--out", str(tmp_path / "o3")])
    assert res.exit_code != 0 and "--val-loss 'nope' is not in the log" in res.output


def test_ambiguous_losses_are_refused_with_the_candidates(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,a_loss,b_loss\n0,1,1.0,2.0\n")
    res = CliRunner().invoke(main, ["diagnose", str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "a_loss, b_loss" in res.output and "--train-loss" in res.output


def test_hugging_face_output_folder_uses_the_latest_checkpoint(tmp_path):
    def state(last):
        hist = [{"epoch": s / 100, "loss": 2.0 / (1 + s / 100), "step": s} for s in range(10, last + 1, 10)]
        hist += [{"epoch": s / 100, "eval_loss": 1.9 / (1 + s / 100), "step": s} for s in range(50, last + 1, 50)]
        return json.dumps({"log_history": sorted(hist, key=lambda h: h["step"]), "logging_steps": 10})

    for last in (100, 200):
        d = tmp_path / "out" / f"checkpoint-{last}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(state(last))
    from losslens.importers import load_log

    runs = load_log(tmp_path / "out")
    assert len(runs) == 1 and runs[0].meta["global_step"] is None
    assert runs[0].meta["source_file"].endswith("checkpoint-200/trainer_state.json")
    assert len(runs[0].epochs) == 4  # evaluations at steps 50, 100, 150, 200
    assert "losslens.transformers.LossLens()" in runs[0].meta["how_to_measure"]   # the matching callback


def test_overview_escapes_user_strings(tmp_path):
    a = _keras_csv(tmp_path / "<img src=x onerror=alert(1)>.csv", LOSSES, VALS)
    b = _keras_csv(tmp_path / "b.csv", LOSSES, VALS)
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["diagnose", str(a), str(b), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    html = (out / "overview.html").read_text()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;.csv" in html
    sub = next(d for d in out.iterdir() if d.is_dir() and d.name != "b.csv")
    assert "<img src=x" not in (sub / "report.html").read_text()


@pytest.mark.parametrize("framework, expected", [
    ("keras", "losslens.keras.LossLens()"), ("lightning", "losslens.lightning.LossLens()"),
    ("transformers", "losslens.transformers.LossLens()"), ("torch", "losslens.torch.LossLens(")])
def test_the_advice_names_the_callback_of_the_framework_that_wrote_the_log(framework, expected):
    from losslens.importers._common import measure_hint

    assert expected in measure_hint(framework) and "adapter yet" not in measure_hint(framework)
    # a TensorBoard file does not say which framework wrote it: every adapter is offered, none is claimed missing
    tb = measure_hint("tensorboard")
    assert "adapter yet" not in tb and all(a in tb for a in ("losslens.keras", "losslens.lightning",
                                                             "losslens.transformers", "losslens.torch"))
