"""Valid real-world logs that importers used to refuse or misread (issue 12, item 4), the user's own metric (5)
and the noise band (6)."""

import json
import math

import numpy as np
import pytest

from losslens.diagnose import diagnose
from losslens.importers import load_log
from losslens.record import VALIDATION


def _trainer_state(path, evals, losses, extra=None, predict=False):
    lh = []
    for i, (tl, ev) in enumerate(zip(losses, evals), start=1):
        lh.append({"loss": tl, "step": i * 100, "epoch": i * 0.5, "learning_rate": 1e-4})
        lh.append({**ev, "step": i * 100, "epoch": i * 0.5})
    if predict:
        lh.append({"predict_loss": 0.3, "predict_runtime": 1.0, "epoch": len(losses) * 0.5})
    lh.append({"train_loss": float(np.mean(losses)), "train_runtime": 10.0, "step": len(losses) * 100,
               "epoch": len(losses) * 0.5})
    path.write_text(json.dumps({"log_history": lh, "global_step": len(losses) * 100, **(extra or {})}))
    return path


def test_several_evaluation_sets_are_each_diagnosed(tmp_path):
    n = 12
    g0 = [1.5 / i + 0.06 * i for i in range(1, n + 1)]          # U-shaped: overfits
    g1 = [1.4 / i for i in range(1, n + 1)]                     # still falling
    p = _trainer_state(tmp_path / "trainer_state.json", [{"eval_g0_loss": a, "eval_g1_loss": b} for a, b in
                                                         zip(g0, g1)], [2.0 / i for i in range(1, n + 1)],
                       predict=True)
    run = load_log(p)
    assert run.meta["roles"]["val_loss"] == "eval_g0_loss"      # the first set carries the headline
    assert run.meta["roles"]["other_val_losses"] == ["eval_g1_loss"]
    assert any("no 'step'" in n_ for n_ in run.meta["import_notes"])   # the predict entry is skipped, not fatal
    d = diagnose(run)
    assert d.verdict.code == "overfitting"
    other = d.get("regime.other_validation")
    assert other is not None and other.data["loss"] == "eval_g1_loss" and other.data["verdict"] == "still_improving"
    # the user's metric_for_best_model picks the headline set
    p2 = _trainer_state(tmp_path / "t2.json", [{"eval_g0_loss": a, "eval_g1_loss": b} for a, b in zip(g0, g1)],
                        [2.0 / i for i in range(1, n + 1)], extra={"metric_for_best_model": "eval_g1_loss"})
    assert load_log(p2).meta["roles"]["val_loss"] == "eval_g1_loss"


def test_hf_overfitting_names_steps_not_epoch_zero(tmp_path):
    ev = [1.0, 0.8, 0.7, 0.72, 0.8, 0.88, 0.95, 1.0, 1.05, 1.1]
    p = _trainer_state(tmp_path / "trainer_state.json", [{"eval_loss": v} for v in ev],
                       [1.2 * 0.8 ** i for i in range(10)])
    d = diagnose(load_log(p))
    v = d.verdict
    assert v.code == "overfitting" and v.best["step"] == 300 and v.best["position"] == pytest.approx(1.5)
    assert "step 300" in d.get("regime.overfitting").title and "epoch 2" not in d.get("regime.overfitting").title


def test_the_users_metric_can_disagree_with_the_loss(tmp_path):
    """eval loss up 50 % while WER keeps falling: not overfitting in the sense that matters (best_metric says WER)."""
    n = 10
    loss = [0.6, 0.5, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.75]
    wer = [40.0 - 2.5 * i for i in range(n)]
    p = _trainer_state(tmp_path / "trainer_state.json", [{"eval_loss": a, "eval_wer": b} for a, b in zip(loss, wer)],
                       [1.0 * 0.8 ** i for i in range(n)], extra={"best_metric": wer[-1]})
    run = load_log(p)
    assert run.meta["metric_for_best_model"] == "eval_wer" and run.meta["greater_is_better"] is False
    d = diagnose(run)
    um = d.get("regime.user_metric")
    assert d.verdict.code == "overfitting"
    assert um.data["disagrees_with_loss"] and um.data["verdict"] == "still_improving"
    assert um.data["best_epoch"] == n - 1


def test_noise_band_and_time_after_the_last_material_improvement(tmp_path):
    ev = [1.0, 0.7, 0.55, 0.5, 0.495, 0.5, 0.497, 0.499, 0.498, 0.5]
    p = _trainer_state(tmp_path / "trainer_state.json", [{"eval_loss": v} for v in ev], [1.0] * 10)
    d = diagnose(load_log(p))
    nb = d.get("regime.noise_band")
    assert nb.data["last_material_improvement"] == 3
    assert set(nb.data["within_noise_of_best"]) >= {4, 6, 8}
    assert nb.data["epochs_after_last_improvement"] == pytest.approx(3.0)
    assert nb.data["steps_after_last_improvement"] == 600


def test_keras_csv_without_an_epoch_column(tmp_path):
    p = tmp_path / "history.csv"
    p.write_text("loss,val_loss\n1.0,1.1\n0.8,0.9\n0.6,0.8\n0.5,0.75\n0.45,0.74\n")
    run = load_log(p)
    assert [e.index for e in run.epochs] == [0, 1, 2, 3, 4]
    assert run.epochs[3].measurements[VALIDATION].mean == pytest.approx(0.75)


def test_all_nan_validation_is_reported_as_such(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("epoch,loss,val_loss\n0,1.0,nan\n1,0.8,nan\n2,0.6,nan\n3,0.5,nan\n")
    run = load_log(p)
    assert run.meta["val_all_nan"] == "val_loss"
    d = diagnose(run)
    assert "NaN" in d.findings[0].message and "no validation loss" not in d.findings[0].message


def test_losses_of_different_kinds_are_not_decomposed(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("epoch,train_nll_loss,val_rmse_loss\n" + "".join(f"{i},{1 / (i + 1)},{1.2 / (i + 1)}\n"
                                                                  for i in range(6)))
    d = diagnose(load_log(p))
    assert d.decomposition == [] and d.get("gap.different_quantities") is not None
    assert not any(c.startswith("gap.not_measured") for c in d.codes())


def test_lightning_validate_after_fit_is_not_an_epoch(tmp_path):
    rows = ["epoch,step,train_loss_step,train_loss_epoch,val_loss"]
    st = 0
    for e in range(6):
        for _ in range(200):   # 1 200 rows: the vectorised (pandas) parser, whose arrays must be writable
            rows.append(f"{e},{st},{1.0 / (1 + st / 300):.6f},,")
            st += 1
        rows.append(f"{e},{st - 1},,,{0.9 / (1 + e / 3):.6f}")
        rows.append(f"{e},{st - 1},,{1.0 / (1 + st / 300):.6f},")
    rows.append(f"6,{st - 1},,,0.5")           # trainer.validate() after fit: epoch max_epochs, the final step
    p = tmp_path / "metrics.csv"
    p.write_text("\n".join(rows) + "\n")
    run = load_log(p)
    assert len(run.epochs) == 6
    assert run.epochs[-1].measurements[VALIDATION].mean == pytest.approx(0.9 / (1 + 5 / 3), rel=1e-5)
    assert any("after training" in n for n in run.meta["import_notes"])


def test_imported_validation_below_training_is_a_finding(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("epoch,loss,val_loss\n" + "".join(f"{i},{1.0 / (i + 1) + 0.1},{1.0 / (i + 1)}\n" for i in range(6)))
    d = diagnose(load_log(p))
    f = d.get("gap.val_below_train")
    assert f is not None and f.data["epochs_holding"] == 6
    assert f.data["difference"] == pytest.approx(0.1, rel=1e-6) and "probe" in f.message
    assert math.isfinite(f.data.get("timing", math.nan))


def test_lightning_monitor_from_hparams_is_judged_too(tmp_path):
    """A Lightning run whose hparams.yaml names the monitored metric (val_acc, mode max): loss overfits, accuracy
    keeps improving: the report says they disagree."""
    rows = ["epoch,step,train_loss,val_loss,val_acc"]
    vl = [1.0, 0.8, 0.7, 0.68, 0.7, 0.75, 0.8, 0.86, 0.9, 0.95, 1.0, 1.05]
    for e, v in enumerate(vl):
        rows.append(f"{e},{10 * e + 9},{1.0 * 0.8 ** e},,")
        rows.append(f"{e},{10 * e + 9},,{v},{0.5 + 0.03 * e}")
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "hparams.yaml").write_text("lr: 0.001\nmonitor: val_acc\nmode: max\nlayers:\n  - 64\n")
    run = load_log(tmp_path / "metrics.csv")
    assert run.meta["metric_for_best_model"] == "val_acc" and run.meta["greater_is_better"] is True
    d = diagnose(run)
    um = d.get("regime.user_metric")
    assert d.verdict.code == "overfitting" and um is not None
    assert um.data["verdict"] == "still_improving" and um.data["disagrees_with_loss"]
