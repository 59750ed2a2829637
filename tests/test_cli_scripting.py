"""The CLI in scripts and CI (issue 16, items 9 and 10): --format text|json|markdown, --fail-on exit codes,
errors in the command's own terms, and a --help that imports no sub-command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from losslens.cli import _COMMANDS, _SHORT_HELP, main
from losslens.report.cli import EXIT_FINDINGS
from losslens.store import Store


def _runner():
    """stdout and stderr apart (--format json/markdown promises a clean stdout): click < 8.2 mixes them unless
    told not to; click >= 8.2 keeps them apart and has no such argument."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def _cli(*args):
    return _runner().invoke(main, [str(a) for a in args])


def _all(res):
    return res.stdout + res.stderr


def _overfit_csv(path):
    """A Keras CSV whose validation loss turns up from epoch 8: an overfitting warning."""
    e = np.arange(30)
    loss = 1.0 / (1 + e / 3)
    val = 0.6 + 0.02 * (e - 8) ** 2 / 8
    path.write_text("epoch,loss,val_loss\n" + "".join(f"{a},{b:.5f},{c:.5f}\n" for a, b, c in zip(e, loss, val)))
    return path


def test_help_lists_every_command_without_importing_them():
    code = ("import sys\nfrom losslens.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'pandas')"
            " or m.startswith('losslens.demo') or m.startswith('losslens.importers')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "LOADED []" in res.stdout
    for name in _COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_the_listed_help_is_each_commands_own_first_line(name):
    import click

    cmd = main.get_command(click.Context(main), name)
    assert cmd.get_short_help_str(limit=300) == _SHORT_HELP[name]


def test_diagnose_prints_one_json_document_or_markdown(tmp_path):
    log = _overfit_csv(tmp_path / "training.log")
    res = _runner().invoke(main, ["diagnose", str(log), "--out", str(tmp_path / "o"), "--format", "json"])
    assert res.exit_code == 0, _all(res)
    d = json.loads(res.stdout)
    assert d["verdict"]["code"] == "overfitting" and d["run"]["epochs"]
    assert "wrote" in res.stderr
    res = _runner().invoke(main, ["diagnose", str(log), "--out", str(tmp_path / "o"), "--format", "markdown"])
    md = res.stdout
    assert md.startswith("### losslens · ") and "training.log" in md.splitlines()[0] and "**OVERFITTING**" in md
    assert "| severity | finding | code |" in md and "`regime.overfitting`" in md
    assert "╭" not in md and "wrote" not in md


def test_diagnose_of_several_logs_as_json_lists_runs_and_errors(tmp_path):
    a = _overfit_csv(tmp_path / "a.csv")
    (tmp_path / "bad.csv").write_text("epoch,accuracy\n0,0.5\n")
    res = _runner().invoke(main, ["diagnose", str(a), str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o"),
                                    "--format", "json"])
    assert res.exit_code == 1
    d = json.loads(res.stdout)
    assert len(d["runs"]) == 1 and "bad.csv" in d["errors"][0]


def test_fail_on_gives_exit_status_3_only_at_or_above_the_level(tmp_path):
    log = _overfit_csv(tmp_path / "training.log")
    base = ["diagnose", str(log), "--out", str(tmp_path / "o"), "-q"]
    assert _cli(*base).exit_code == 0
    assert _cli(*base, "--fail-on", "warning").exit_code == EXIT_FINDINGS      # overfitting is a warning
    assert _cli(*base, "--fail-on", "error").exit_code == 0


def test_the_old_format_option_still_names_a_log_format(tmp_path):
    log = _overfit_csv(tmp_path / "training.log")
    res = _runner().invoke(main, ["diagnose", str(log), "--out", str(tmp_path / "o"), "-q", "--format",
                                    "keras_csv"])
    assert res.exit_code == 0 and "use --log-format keras_csv" in res.stderr


def test_report_formats_and_fail_on(tmp_path):
    from losslens.importers import load_log

    run = load_log(_overfit_csv(tmp_path / "training.log"))
    with Store(tmp_path / "s.db") as s:
        s.save_run(run)
    base = ["report", run.name, "--store", str(tmp_path / "s.db"), "--html", str(tmp_path / "r.html")]
    res = _runner().invoke(main, base + ["--format", "json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["verdict"]["code"] == "overfitting"
    res = _runner().invoke(main, base + ["--format", "markdown", "--fail-on", "warning"])
    assert res.exit_code == EXIT_FINDINGS and "**OVERFITTING**" in res.stdout


def test_audit_fails_on_its_error_findings_and_speaks_in_flags(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 16))
    v = x[:60].copy()                                           # every validation sample is a training sample
    np.save(tmp_path / "tr.npy", x)
    np.save(tmp_path / "va.npy", v)
    res = _cli("audit", tmp_path / "tr.npy", tmp_path / "va.npy", "--no-near", "--no-shift", "--format", "json")
    d = json.loads(res.stdout)
    assert d["exact_duplicates"]["n_val_duplicated"] == 60
    res = _cli("audit", tmp_path / "tr.npy", tmp_path / "va.npy", "--no-near", "--no-shift", "--fail-on", "error")
    assert res.exit_code == EXIT_FINDINGS, _all(res)
    res = _cli("audit", tmp_path / "tr.npy", tmp_path / "va.npy", "--no-near", "--no-shift", "--format",
               "markdown")
    assert res.stdout.startswith("### losslens split audit") and "`split.exact_duplicates`" in res.stdout
    np.save(tmp_path / "flat.npy", np.zeros(300))
    res = _cli("audit", tmp_path / "flat.npy", tmp_path / "flat.npy", "--kind", "image")
    assert res.exit_code == 1 and "--image-shape" in _all(res) and "image_shape" not in _all(res)


def test_compare_as_json(tmp_path):
    from losslens.importers import load_log

    with Store(tmp_path / "s.db") as s:
        for name in ("a", "b"):
            run = load_log(_overfit_csv(tmp_path / f"{name}.csv"))
            s.save_run(run)
    res = _runner().invoke(main, ["compare", "a.csv", "b.csv", "--store", str(tmp_path / "s.db"),
                                    "--format", "json"])
    assert res.exit_code == 0, _all(res)
    assert isinstance(json.loads(res.stdout), dict)
