"""stopping.checkpoints: which saved checkpoint to keep, from trainer_state.json and the folders beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from losslens.diagnose import diagnose
from losslens.importers import load_log


def _state(tmp_path, keep_steps, state_in=None):
    """A 10-evaluation fine-tune (100 steps per epoch) whose validation loss bottoms out at step 400 and then rises,
    with checkpoint folders only for ``keep_steps`` (as save_total_limit leaves them)."""
    rng = np.random.default_rng(0)
    hist = []
    for s in range(10, 1001, 10):
        hist.append({"epoch": s / 100, "loss": float(2.0 * np.exp(-s / 300) + 0.1 + 0.01 * rng.normal()), "step": s})
        if s % 100 == 0:
            v = 0.5 + 0.3 * np.exp(-s / 150) + 0.0004 * (s - 400) ** 2 / 100 + 0.002 * rng.normal()
            hist.append({"epoch": s / 100, "eval_loss": float(v), "step": s})
    out = tmp_path / "out"
    out.mkdir()
    for s in keep_steps:
        (out / f"checkpoint-{s}").mkdir()
    folder = out / f"checkpoint-{state_in}" if state_in else out
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": hist, "logging_steps": 10,
                                                             "global_step": 1000}))
    return folder / "trainer_state.json", hist


def test_the_best_checkpoint_on_disk_is_advised_and_a_deleted_best_is_said(tmp_path):
    path, hist = _state(tmp_path, [800, 900, 1000], state_in=1000)
    run = load_log(path)
    assert run.info.extras["checkpoints_on_disk"] == [800, 900, 1000]
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None
    evals = {h["step"]: h["eval_loss"] for h in hist if "eval_loss" in h}
    best = min(evals, key=evals.get)
    assert f.data["best_step"] == best and not f.data["best_on_disk"]
    assert f.data["keep"] == min((800, 900, 1000), key=evals.get)
    assert f"checkpoint of the best evaluation (step {best}) is not on disk" in f.message
    assert best in f.data["within_noise_of_best"] and 1000 not in f.data["within_noise_of_best"]
    assert f.data["epochs_after_last_improvement"] >= 5
    assert f.recommendation.startswith(f"Keep checkpoint-{f.data['keep']}")


def test_no_finding_without_checkpoint_information(tmp_path):
    path, _ = _state(tmp_path, [])
    run = load_log(path)
    assert run.info.extras["checkpoints_on_disk"] == []
    assert diagnose(run).get("stopping.checkpoints") is None          # a log copied without its folders
    run.meta["best_model_checkpoint"] = "out/checkpoint-400"            # the run did save checkpoints
    f = diagnose(run).get("stopping.checkpoints")
    assert f is not None and "No checkpoint folder is on disk" in f.message and f.data["keep"] is None
    data = json.loads(json.dumps({"log_history": json.loads(path.read_text())["log_history"]}))
    from losslens.importers.trainer_state import read

    assert "checkpoints_on_disk" not in read("<memory>", obj=data).meta   # not a file: what was saved is unknown


def test_the_cli_prints_the_advice_and_the_json_carries_it(tmp_path):
    from losslens.cli import main

    path, _ = _state(tmp_path, [300, 400, 500])
    res = CliRunner().invoke(main, ["diagnose", str(path), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "Which checkpoint to keep" in res.output and "checkpoint-400" in res.output
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    f = next(x for x in data["findings"] if x["code"] == "stopping.checkpoints")
    assert f["data"]["keep"] == 400 and f["data"]["best_on_disk"] is True
