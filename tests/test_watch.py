"""``losslens watch`` (issue 16, item 11): a log being written and a store being recorded by a real training
process, followed as epochs arrive."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

WATCH = [sys.executable, "-c", "from losslens.cli import main; main()", "watch"]


def _reader(stream, lines):
    for line in stream:
        lines.append(line)


def _wait_for(lines, pattern, timeout=60.0):
    """Wait until a line matching ``pattern`` was printed (the watcher's pace, not a fixed sleep: the test holds
    on a loaded machine)."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if any(re.search(pattern, ln) for ln in list(lines)):
            return
        time.sleep(0.05)
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {''.join(lines)[-2000:]}")


def test_watch_follows_a_log_as_epochs_are_appended(tmp_path):
    import threading

    log = tmp_path / "training.log"
    html = tmp_path / "live.html"
    proc = subprocess.Popen(WATCH + [str(log), "--interval", "0.2", "--max-updates", "3", "--html", str(html)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "120"})
    out_lines: list[str] = []
    err_lines: list[str] = []
    threads = [threading.Thread(target=_reader, args=(proc.stdout, out_lines), daemon=True),
               threading.Thread(target=_reader, args=(proc.stderr, err_lines), daemon=True)]
    for t in threads:
        t.start()
    try:
        _wait_for(err_lines, r"waiting: .*training.log")         # the file does not exist yet
        log.write_text("epoch,loss,val_loss\n")                  # a header and no epoch yet: still waiting
        rows = [f"{e},{1 / (1 + e):.5f},{1.1 / (1 + e) + 0.002 * e:.5f}\n" for e in range(9)]
        for k in (3, 6, 9):
            with open(log, "a") as fh:
                fh.writelines(rows[k - 3:k])
            _wait_for(out_lines, rf"losslens watch .*: {k} epoch\(s\)")
        proc.wait(timeout=60)
        for t in threads:
            t.join(timeout=10)
    finally:
        proc.kill()
    out, err = "".join(out_lines), "".join(err_lines)
    assert proc.returncode == 0, err
    counts = [int(n) for n in re.findall(r"losslens watch .*?: (\d+) epoch\(s\)", out)]
    assert counts == [3, 6, 9], (counts, out[-2000:])
    assert "Traceback" not in err
    page = html.read_text(encoding="utf-8")
    assert '<meta http-equiv="refresh" content="0.2">' in page and "9 recorded" in page


TRAIN = textwrap.dedent("""
    import sys, time
    import torch
    from torch import nn
    from losslens.torch import LossLens

    torch.manual_seed(0)
    X, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), val_data=(X[:50], y[:50]), store=sys.argv[1],
                  run="watched", probe_size=50) as lens:
        for epoch in range(5):
            for i in range(0, 200, 40):
                loss = nn.functional.cross_entropy(model(X[i:i + 40]), y[i:i + 40])
                opt.zero_grad(); loss.backward(); opt.step()
                lens.step(loss, batch_size=40)
            lens.end_epoch()
            time.sleep(0.8)
""")


def test_watch_follows_a_store_until_the_run_finishes(tmp_path):
    pytest.importorskip("torch")
    store = tmp_path / "runs.db"
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    # the watcher first: it waits for the store, then follows the run epoch by epoch until it finishes
    watcher = subprocess.Popen(WATCH + [str(store), "--interval", "0.2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "120"})
    trainer = subprocess.Popen([sys.executable, str(script), str(store)], stderr=subprocess.PIPE, text=True)
    try:
        trainer.wait(timeout=120)
        w_out, w_err = watcher.communicate(timeout=120)
    finally:
        trainer.kill()
        watcher.kill()
    assert trainer.returncode == 0, trainer.stderr.read() if trainer.stderr else ""
    assert watcher.returncode == 0, w_err
    assert "run 'watched' finished" in w_err and "Traceback" not in w_err
    counts = [int(n) for n in re.findall(r"losslens watch .*?: (\d+) epoch\(s\)", w_out)]
    assert counts and counts[-1] == 5 and counts == sorted(counts) and len(counts) >= 2, counts
