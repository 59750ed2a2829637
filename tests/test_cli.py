"""`losslens runs`, `losslens report` and `losslens demo` through click's CliRunner."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from losslens.cli import main
from losslens.record import Epoch, Measurement, Run, Steps
from losslens.store import Store


def hand_run(name="mlp-a", n_epochs=4, status="finished", seed=0):
    """A small hand-built run with probes and validation (the adapters are tested elsewhere)."""
    rng = np.random.default_rng(seed)
    epochs, parts = [], []
    for e in range(n_epochs):
        base = 1.5 * math.exp(-0.6 * e) + 0.2
        loss = base + np.linspace(0.1, -0.1, 10) + 0.02 * rng.standard_normal(10)
        parts.append(Steps.build(np.full(10, e), loss, batch_size=np.full(10, 16)))
        c = np.abs(base - 0.1 + 0.2 * rng.standard_normal(100))
        ms = {
            "eval_clean": Measurement.from_values("eval_clean", c),
            "train_mode": Measurement.from_values("train_mode", c + 0.15 + 0.03 * rng.standard_normal(100)),
            "validation": Measurement.from_values("validation", np.abs(base + 0.2 * rng.standard_normal(100))),
        }
        epochs.append(Epoch(e, train_loss=float(loss.mean()), n_steps=10, n_samples=160, measurements=ms))
    return Run(name, epochs, Steps.concat(parts), meta={"framework": "torch", "probe_size": 100},
               status=status, experiment="exp-1")


@pytest.fixture
def store_file(tmp_path):
    path = tmp_path / "runs.db"
    with Store(path) as s:
        s.save_run(hand_run("mlp-a"))
        s.save_run(hand_run("mlp-b", n_epochs=3, status="running", seed=1))
    return path


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False, terminal_width=160)


def test_runs_lists_the_stored_runs(store_file):
    res = _invoke(["runs", "--store", str(store_file)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "mlp-" in ln]
    assert len(lines) == 2
    with Store(store_file) as s:
        a = s.load_run("mlp-a")
    last_v = a.epochs[-1].measurements["validation"].mean
    cells_a = [c.strip() for c in lines[0].split("│") if c.strip()]
    assert cells_a == ["1", "mlp-a", "exp-1", "finished", "4", f"{last_v:.4g}"]
    cells_b = [c.strip() for c in lines[1].split("│") if c.strip()]
    assert cells_b[:5] == ["2", "mlp-b", "exp-1", "running", "3"]


def test_runs_on_an_empty_store(tmp_path):
    Store(tmp_path / "empty.db").close()
    res = _invoke(["runs", "--store", str(tmp_path / "empty.db")])
    assert res.exit_code == 0 and "No runs in store" in res.output


def test_missing_store_is_a_clear_error_and_is_not_created(tmp_path):
    missing = tmp_path / "nope.db"
    for args in (["runs", "--store", str(missing)], ["report", "x", "--store", str(missing)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0
        assert "does not exist" in res.output and "nope.db" in res.output
        assert not missing.exists()


def test_a_file_that_is_not_a_store_is_rejected(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_text("not sqlite at all " * 100)
    res = CliRunner().invoke(main, ["runs", "--store", str(bad)])
    assert res.exit_code != 0 and "notes.db" in res.output and "Traceback" not in res.output


def test_report_unknown_run_names_it_and_lists_runs(store_file):
    res = CliRunner().invoke(main, ["report", "no-such-run", "--store", str(store_file)])
    assert res.exit_code != 0
    assert "no-such-run" in res.output and "1:mlp-a" in res.output and "2:mlp-b" in res.output


def test_report_by_name_writes_html_and_json(store_file, tmp_path):
    html, js = tmp_path / "a.html", tmp_path / "a.json"
    res = _invoke(["report", "mlp-a", "--store", str(store_file), "--html", str(html), "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "mlp-a" in res.output and "gap.decomposition" in res.output and "did not finish" not in res.output
    assert f"HTML report written to {html}" in res.output.replace("\n", "")
    d = json.loads(js.read_text(encoding="utf-8"))
    assert d["run"]["name"] == "mlp-a" and len(d["run"]["epochs"]) == 4 and d["report"]["finished"] is True
    assert "<title>losslens report: mlp-a</title>" in html.read_text(encoding="utf-8")


def test_report_by_id_of_an_unfinished_run(store_file, tmp_path):
    html = tmp_path / "b.html"
    res = _invoke(["report", "2", "--store", str(store_file), "--html", str(html)])
    assert res.exit_code == 0, res.output
    assert "mlp-b" in res.output and "did not finish" in res.output
    assert "3 epoch(s)" in res.output
    text = html.read_text(encoding="utf-8")
    assert "did not finish" in text and "mlp-b" in text
    assert not (tmp_path / "b.json").exists()


def test_report_default_html_path(store_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = _invoke(["report", "mlp-a", "--store", str(store_file)])
    assert res.exit_code == 0, res.output
    assert "<title>losslens report: mlp-a</title>" in (tmp_path / "report.html").read_text(encoding="utf-8")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.imgs = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs += 1
            assert dict(attrs)["src"].startswith("data:image/png;base64,")
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_demo_two_epochs_writes_a_valid_report(tmp_path):
    html, db = tmp_path / "demo.html", tmp_path / "demo.db"
    res = _invoke(["demo", "--epochs", "2", "--store", str(db), "--html", str(html), "--seed", "3"])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", "")
    assert "HTML report written to" in out and "demo.html" in out
    assert "findings" in res.output
    text = html.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(text)
    assert parser.errors == [] and parser.stack == []   # every element is closed, in order
    assert text.count('class="plot"') == 2              # loss curves and decomposition, inline
    from losslens.report.interactive import plotly_js

    assert "demo-digits" in text and "https://" not in text.replace(plotly_js(), "")
    with Store(db) as s:
        run = s.load_run("demo-digits")
    assert run.status == "finished" and len(run.epochs) == 2
    kinds = set(run.epochs[-1].measurements)
    assert kinds == {"train_mode", "eval_augmented", "eval_clean", "validation"}
    assert run.meta["seed"] == 3 and run.meta["dropout_layers"]
    # the same run is reported again from the store
    res2 = _invoke(["report", "demo-digits", "--store", str(db), "--html", str(tmp_path / "again.html")])
    assert res2.exit_code == 0 and "demo-digits" in res2.output


def test_demo_rejects_zero_epochs(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--epochs", "0", "--store", str(tmp_path / "d.db")])
    assert res.exit_code != 0 and "--epochs" in res.output


_KILLED_TRAINING = textwrap.dedent("""
    import os, signal, sys
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from losslens.torch import LossLens
    torch.set_num_threads(1)
    store, kill_epoch = sys.argv[1], int(sys.argv[2])
    d = load_digits()
    X, y = torch.tensor(d.data[:500] / 16.0, dtype=torch.float32), torch.tensor(d.target[:500])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X[:400], y[:400]), val_data=(X[400:], y[400:]),
                run="killed-run", store=store, optimizer=opt, probe_size=200)
    for epoch in range(10):
        for i in range(0, 400, 40):
            if epoch == kill_epoch and i == 200:
                os.kill(os.getpid(), signal.SIGKILL)
            opt.zero_grad(); loss = nn.functional.cross_entropy(model(X[i:i+40]), y[i:i+40])
            loss.backward(); opt.step(); lens.step(loss, batch_size=40)
        lens.end_epoch()
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_report_of_a_run_killed_with_sigkill(tmp_path):
    script, db, k = tmp_path / "train.py", tmp_path / "killed.db", 3
    script.write_text(_KILLED_TRAINING)
    proc = subprocess.run([sys.executable, str(script), str(db), str(k)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    res = _invoke(["runs", "--store", str(db)])
    assert "killed-run" in res.output and "running" in res.output
    js = tmp_path / "killed.json"
    res = _invoke(["report", "killed-run", "--store", str(db), "--html", str(tmp_path / "k.html"),
                   "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "did not finish" in res.output and f"{k} epoch(s)" in res.output
    d = json.loads(js.read_text(encoding="utf-8"))
    assert [e["epoch"] for e in d["run"]["epochs"]] == list(range(k))
    assert d["report"]["finished"] is False
    assert [x["epoch"] for x in d["decomposition"]] == list(range(k))


def test_demo_checks_the_html_directory_before_training(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--epochs", "1", "--store", str(tmp_path / "d.db"),
                                    "--html", str(tmp_path / "missing" / "d.html")])
    assert res.exit_code != 0 and "missing" in res.output and "does not exist" in res.output
    assert not (tmp_path / "d.db").exists()


@pytest.mark.slow
def test_default_demo_shows_what_its_docstring_claims(tmp_path):
    """The default demo: validation below the reported training loss in every epoch, explained by dropout
    and augmentation beyond noise, and a fit-regime verdict (DEMO_DEFAULTS documents the measured values)."""
    import io

    from rich.console import Console

    from losslens.demo import run_demo

    out = io.StringIO()
    report = run_demo(store=tmp_path / "d.db", html=tmp_path / "d.html", seed=0,
                      console=Console(file=out, width=120), progress=False)
    run, dec = report.run, report.diagnosis.decomposition
    assert len(run.epochs) == 40 and len(dec) == 40
    assert all(d.reported > d.validation for d in dec)
    why = report.diagnosis.get("gap.val_below_train")
    assert why is not None and {"train_mode", "augmentation"} <= set(why.data["causes"])
    assert any(c.startswith("regime.") for c in report.diagnosis.codes())
    assert "gap.val_easier" not in report.diagnosis.codes()
    assert "HTML report written to" in out.getvalue()


def test_unavailable_command_explains_why(monkeypatch):
    """A sub-command whose module cannot be imported answers with the reason, not a traceback."""
    from losslens import cli as cli_module

    monkeypatch.setitem(cli_module._COMMANDS, "broken", "losslens.no_such_module:cmd")
    result = CliRunner().invoke(cli_module.main, ["broken", "--anything"])
    assert result.exit_code != 0
    assert "unavailable in this installation" in result.output and "no_such_module" in result.output


def test_reading_commands_never_change_the_files_they_read(tmp_path):
    """`losslens runs --store empty.csv` used to turn a 0-byte file into a 49 kB SQLite database (issue 16, item 3);
    every reader opens the store read-only, and a failing merge leaves no destination behind."""
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for args in (["runs", "--store", str(empty)], ["report", "x", "--store", str(empty), "--html",
                                                       str(tmp_path / "r.html")],
                 ["compare", "a", "b", "--store", str(empty)]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code != 0 and "Traceback" not in res.output, res.output
        assert empty.read_bytes() == b"", args
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "out.db"), str(corrupt)])
    assert res.exit_code != 0 and not (tmp_path / "out.db").exists()


def test_demo_without_torch_prints_the_readme_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    res = CliRunner().invoke(main, ["demo", "--epochs", "1"])
    assert res.exit_code != 0
    assert 'pip install -c constraints.txt ".[torch]"' in res.output
