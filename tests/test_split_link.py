"""The diagnosis and the split audit, linked on a real training run (issue 5, item 2).

Digits with half the training inputs corrupted (so the validation set is
easier than the training data) and 40 clean training samples copied into the
validation set: the exact-duplicate check of the PyTorch adapter runs at the
start of training, and ``gap.val_easier`` cites it; a full split audit passed
to the report is cited too and shown once.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from losslens.audit import audit_split
from losslens.diagnose import diagnose
from losslens.report import Report
from losslens.torch import LossLens


@pytest.fixture(scope="module")
def leaky_run():
    torch.set_num_threads(1)
    X, y = load_digits(return_X_y=True)
    p = np.random.default_rng(0).permutation(len(y))
    X = torch.tensor(X[p] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[p], dtype=torch.long)
    Xtr, ytr, Xva, yva = X[:1200].clone(), y[:1200], X[1200:], y[1200:]
    g = torch.Generator().manual_seed(1)
    Xtr[::2] += torch.randn(Xtr[::2].shape, generator=g)        # half the training inputs corrupted
    leaked = torch.arange(1, 81, 2)                               # 40 clean training samples ...
    Xva = torch.cat([Xtr[leaked], Xva])                           # ... copied into validation
    yva = torch.cat([ytr[leaked], yva])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    lens = LossLens(model, loss_fn, train_data=(Xtr, ytr), val_data=(Xva, yva), store=None, probe_size=600)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=32, shuffle=True)
    for _ in range(5):
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            lens.step(loss, batch_size=len(yb))
        lens.end_epoch()
    return lens.run, (Xtr.numpy(), ytr.numpy(), Xva.numpy(), yva.numpy()), leaked.numpy()


def test_start_of_training_duplicate_check_is_cited(leaky_run):
    run, _, leaked = leaky_run
    d = run.meta["split_exact_duplicates"]
    assert d["n_val_duplicated"] == 40
    assert sorted(a for a, _ in d["pairs"]) == sorted(leaked.tolist())
    res = diagnose(run)
    dup = res.get("split.exact_duplicates")
    assert dup is not None and dup.data["n_val_duplicated"] == 40
    easier = res.get("gap.val_easier")
    assert easier is not None
    assert "split.exact_duplicates" in easier.data["audit_codes"]


def test_clean_split_adds_no_split_finding(leaky_run):
    run, _, _ = leaky_run
    run.meta = {**run.meta, "split_exact_duplicates": {**run.meta["split_exact_duplicates"], "n_val_duplicated": 0}}
    assert not [c for c in diagnose(run).codes() if c.startswith("split.")]


def test_full_audit_is_cited_and_shown_once(leaky_run):
    run, (Xtr, ytr, Xva, yva), _ = leaky_run
    audit = audit_split(Xtr, Xva, labels=(ytr, yva), run=run, near=False, seed=0)
    report = Report.from_run(run, audit=audit)
    easier = report.diagnosis.get("gap.val_easier")
    assert easier is not None and "split.exact_duplicates" in easier.data["audit_codes"]
    html = report.to_html()
    assert "Split audit" in html
    # the audit's findings are listed once, in the report's findings section (not again in the fragment)
    assert html.count('<span class="code">split.exact_duplicates</span>') == 1
    assert "<code>split.exact_duplicates</code>" not in html
