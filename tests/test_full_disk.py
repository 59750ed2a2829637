"""A store on a filesystem that fills up (issue 13): a real training loop, a real SQLite file, and a real write
limit (``RLIMIT_FSIZE``: every file the process writes is capped, so writes fail with ``EFBIG`` exactly as on a
full disk). Every completed epoch ends up in the store, in order, none merged, and the run goes on."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
resource = pytest.importorskip("resource")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics: Linux")

SCRIPT = textwrap.dedent(r"""
    import json, os, resource, signal, sys, warnings
    import torch
    from torch import nn
    from losslens.torch import LossLens

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    store = sys.argv[1]
    torch.manual_seed(0)
    X, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), val_data=(X[:64], y[:64]), store=store,
                    run="fills-up", probe_size=64)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    log = {"warnings": [], "epochs_in_memory": []}
    for epoch in range(6):
        if epoch == 2:   # the disk is full: no file may grow any more
            size = max(os.path.getsize(p) for p in (store, store + "-wal") if os.path.exists(p))
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
        if epoch == 4:   # space freed
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        for i in range(0, 256, 32):
            loss = nn.functional.cross_entropy(model(X[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
            lens.step(loss, batch_size=32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lens.end_epoch()
        log["warnings"] += [str(w.message) for w in caught]
        log["epochs_in_memory"].append([e.index for e in lens.run.epochs])
    lens.finish()
    print(json.dumps(log))
""")


def test_a_store_on_a_full_disk_keeps_every_epoch_and_the_run_goes_on(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    store = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    res = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    log = json.loads(res.stdout.strip().splitlines()[-1])
    # the writes failed while the disk was full, and the user was told which store and that they are retried
    full = [w for w in log["warnings"] if "could not write epoch" in w]
    assert full and all("runs.db" in w for w in full), log["warnings"]
    assert any("retried" in w or "kept" in w for w in full)
    # in memory the epochs never merged or renumbered
    assert log["epochs_in_memory"][-1] == list(range(6))
    from losslens.store import Store

    with Store(store, read_only=True) as s:
        run = s.load_run("fills-up")
    assert [e.index for e in run.epochs] == list(range(6))
    assert [e.n_steps for e in run.epochs] == [8] * 6
    assert len(run.steps) == 48
    assert run.status == "finished"
    assert all(e.get("validation") is not None for e in run.epochs)
