"""Plain DDP: 2 CPU processes (gloo) give the probe losses of one process, and rank 0 alone writes the store.

The worker runs as a standalone script (``torch.multiprocessing.spawn`` inside it),
so the test does not depend on how pytest imports this module.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from losslens.recording.probe import class_strata, probe_permutation  # noqa: E402
from losslens.store import Store  # noqa: E402
from losslens.torch import LossLens  # noqa: E402

WORKER = textwrap.dedent(
    """
    import json, os, sys, warnings
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from sklearn.datasets import load_digits
    from losslens.torch import LossLens

    def data():
        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        return X[:1000], y[:1000], X[1000:1301], y[1000:1301]

    def model_fn():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    def work(rank, world, port, out):
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        Xtr, ytr, Xva, yva = data()
        model = model_fn()
        ddp = nn.parallel.DistributedDataParallel(model)
        ds = torch.utils.data.TensorDataset(Xtr, ytr)
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=25, sampler=sampler, drop_last=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        lossf = nn.CrossEntropyLoss()
        lens = LossLens(ddp, lossf, train_data=(Xtr, ytr), val_data=(Xva, yva), run="ddp",
                        store=os.path.join(out, "runs.db"), probe_size=300)
        local = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for xb, yb in loader:
                opt.zero_grad()
                loss = lossf(ddp(xb), yb)
                loss.backward()
                opt.step()
                lens.step(loss, batch_size=len(yb))
                local.append(float(loss))
            ep = lens.end_epoch()
            np.savez(os.path.join(out, f"rank{rank}_epoch{epoch}.npz"),
                     **{k: m.values for k, m in ep.measurements.items()})
            torch.save(model.state_dict(), os.path.join(out, f"weights_epoch{epoch}.pt")) if rank == 0 else None
        lens.finish()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"local_steps": local, "probe_indices": lens.probe_indices.tolist(),
                       "run_id": lens.run.id, "world_size": lens.run.meta.get("world_size")}, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.spawn(work, args=(2, int(sys.argv[2]), sys.argv[1]), nprocs=2, join=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    return X[:1000], y[:1000], X[1000:1301], y[1000:1301]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, str(script), str(out), str(free_port())], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_ddp_probe_losses_equal_one_process(ddp_run):
    """C and V per sample, gathered from 2 ranks, equal one process's losses with the same weights."""
    Xtr, ytr, Xva, yva = digits()
    idx = np.sort(probe_permutation(0, 1000, class_strata(np.asarray(ytr)))[:300])
    for epoch in range(3):
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
        model.load_state_dict(torch.load(ddp_run / f"weights_epoch{epoch}.pt"))
        model.eval()
        with torch.no_grad():
            c = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx], reduction="none").numpy()
            v = nn.functional.cross_entropy(model(Xva), yva, reduction="none").numpy()
        r0 = np.load(ddp_run / f"rank0_epoch{epoch}.npz")
        r1 = np.load(ddp_run / f"rank1_epoch{epoch}.npz")
        np.testing.assert_allclose(r0["eval_clean"], c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r0["validation"], v, rtol=1e-5, atol=1e-6)
        assert r0["train_mode"].shape == (300,)  # every probe sample once: no DistributedSampler padding
        # T too: the same training-size batches, the same per-batch random draws, as one process
        ref = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                       probe_size=300)
        for _ in range(epoch + 1):
            model.train()
            ref.step(torch.tensor(0.0), batch_size=25)
            ep = ref.end_epoch()
        np.testing.assert_allclose(r0["train_mode"], ep.get("train_mode").values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r0["eval_clean"], ep.get("eval_clean").values, rtol=1e-5, atol=1e-6)
        for k in ("eval_clean", "validation", "train_mode"):
            np.testing.assert_array_equal(r0[k], r1[k])  # every rank holds the same gathered record


def test_ddp_store_written_by_rank0_only_and_complete(ddp_run):
    info0 = json.loads((ddp_run / "rank0.json").read_text())
    info1 = json.loads((ddp_run / "rank1.json").read_text())
    assert info1["run_id"] is None and info0["run_id"] is not None
    assert info0["world_size"] == 2
    assert info0["probe_indices"] == info1["probe_indices"]
    with Store(ddp_run / "runs.db") as store:
        assert len(store.list_runs()) == 1
        run = store.load_run(info0["run_id"])
    assert run.status == "finished"
    assert [e.index for e in run.epochs] == [0, 1, 2]
    # 500 samples per rank, batches of 25: 20 steps per epoch, each the mean of the two ranks' losses
    local0 = np.asarray(info0["local_steps"]).reshape(3, 20)
    local1 = np.asarray(info1["local_steps"]).reshape(3, 20)
    for e in run.epochs:
        st = run.steps.for_epoch(e.index)
        np.testing.assert_allclose(st.loss, (local0[e.index] + local1[e.index]) / 2, rtol=1e-6)
        np.testing.assert_array_equal(st.batch_size, 50)
        assert e.n_samples == 1000
        assert e.train_loss == pytest.approx(float(np.mean(st.loss)), rel=1e-9)
        assert e.get("eval_clean").n == 300 and e.get("validation").n == 301


def test_distributed_true_without_a_process_group_is_an_error():
    model = nn.Linear(4, 2)
    X, y = torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)
    with pytest.raises(RuntimeError, match="distributed=True"):
        LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), store=None, distributed=True)
    with pytest.raises(ValueError, match="distributed"):
        LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), store=None, distributed="yes")
    lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(X, y), store=None)  # no process group: one process
    assert lens.run.info.framework.world_size is None


FSDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from sklearn.datasets import load_digits
    from losslens.torch import LossLens

    def work(rank, world, port, out):
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        X, y = load_digits(return_X_y=True)
        X = torch.tensor(X / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        Xtr, ytr, Xva, yva = X[:1000], y[:1000], X[1000:1037], y[1000:1037]   # 37 validation samples: odd
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[4], mesh=mesh)
        fully_shard(model, mesh=mesh)
        # uneven shards: 101 probe samples, eval batches of 8 (rank 0 runs 7, rank 1 runs 6) and train-mode
        # batches of 20 (5 batches: rank 0 runs 3, rank 1 runs 2); without padding the forwards would hang
        lens = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), run="fsdp",
                        store=os.path.join(out, "runs.db"), probe_size=101, eval_batch_size=8,
                        train_batch_size=20)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        g = torch.Generator().manual_seed(rank)
        for epoch in range(2):
            for _ in range(10):
                i = torch.randint(0, 1000, (25,), generator=g)
                model.train()
                loss = nn.functional.cross_entropy(model(Xtr[i]), ytr[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                lens.step(loss, batch_size=25)
            ep = lens.end_epoch()
            full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
            if rank == 0:
                torch.save(full, os.path.join(out, f"weights_epoch{epoch}.pt"))
            np.savez(os.path.join(out, f"rank{rank}_epoch{epoch}.npz"),
                     **{k: m.values for k, m in ep.measurements.items()})
        lens.finish()
        dist.destroy_process_group()

    if __name__ == "__main__":
        torch.multiprocessing.spawn(work, args=(2, int(sys.argv[2]), sys.argv[1]), nprocs=2, join=True)
    """
)


def test_fsdp2_two_processes_with_uneven_shards_equal_one_process(tmp_path):
    """FSDP2 (``fully_shard``) gathers parameters in every forward: with uneven shards the ranks pad their passes
    with discarded forwards, nothing hangs, and C, T and V per sample equal one process's on the gathered
    weights."""
    pytest.importorskip("torch.distributed.fsdp")
    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), str(free_port())], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    Xtr, ytr, Xva, yva = digits()
    Xva, yva = Xva[:37], yva[:37]
    for epoch in range(2):
        model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
        model.load_state_dict(torch.load(tmp_path / f"weights_epoch{epoch}.pt"))
        ref = LossLens(model, nn.CrossEntropyLoss(), train_data=(Xtr, ytr), val_data=(Xva, yva), store=None,
                       probe_size=101, eval_batch_size=8, train_batch_size=20)
        for _ in range(epoch + 1):   # the T pass of epoch e is seeded by e
            model.train()
            ref.step(torch.tensor(0.0), batch_size=25)
            want = ref.end_epoch()
        r0 = np.load(tmp_path / f"rank0_epoch{epoch}.npz")
        r1 = np.load(tmp_path / f"rank1_epoch{epoch}.npz")
        for k in ("eval_clean", "validation", "train_mode"):
            np.testing.assert_allclose(r0[k], want.get(k).values, rtol=1e-5, atol=1e-6, err_msg=k)
            np.testing.assert_array_equal(r0[k], r1[k])
        assert r0["validation"].shape == (37,) and r0["train_mode"].shape == (101,)
    with Store(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
        assert len(store.load_run(run["id"]).epochs) == 2
