"""The SQLite store: round trips, crash safety, schema versioning, clear errors."""

import math
import os
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from losslens.record import EVAL_CLEAN, VALIDATION, Epoch, Measurement, Run, Steps, fingerprint_indices
from losslens.store import SCHEMA_VERSION, Store, StoreError


def _epoch(i, rng):
    v = rng.normal(1.0, 0.3, 50).astype(np.float32)
    c = rng.normal(0.8, 0.3, 40).astype(np.float32)
    return Epoch(i, train_loss=float(rng.random()), penalty=0.01 * i, n_steps=5, n_samples=160,
                 measurements={VALIDATION: Measurement.from_values(VALIDATION, v),
                               EVAL_CLEAN: Measurement.from_values(EVAL_CLEAN, c)},
                 metrics={"accuracy": float(rng.random()), "lr": 0.1}, seconds=1.5, probe_seconds=0.1)


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    store = Store(tmp_path / "s.db")
    rid = store.create_run("r", {"framework": "test", "dropout_layers": ["a", "b"], "weight_decay": 1e-4})
    steps_all = []
    for i in range(3):
        st = Steps.build(np.full(5, i), rng.random(5), batch_size=[32, 32, 32, 32, 16], penalty=np.full(5, 0.01 * i))
        steps_all.append(st)
        store.append_epoch(rid, _epoch(i, np.random.default_rng(i)), st)
    run = store.load_run("r")
    assert run.id == rid and run.meta["dropout_layers"] == ["a", "b"] and len(run) == 3
    for i, e in enumerate(run.epochs):
        ref = _epoch(i, np.random.default_rng(i))
        assert e.train_loss == ref.train_loss and e.penalty == ref.penalty and e.metrics == ref.metrics
        for k in (VALIDATION, EVAL_CLEAN):
            assert e.measurements[k].mean == ref.measurements[k].mean
            assert e.measurements[k].sem == ref.measurements[k].sem
            np.testing.assert_array_equal(e.measurements[k].values, ref.measurements[k].values)
    ref_steps = Steps.concat(steps_all)
    for col in Steps.COLUMNS:
        np.testing.assert_array_equal(getattr(run.steps, col), getattr(ref_steps, col))
    # positions are batch centres in fractional epochs, weighted by batch size
    assert run.steps.position[0] == pytest.approx(16 / 144)
    assert run.steps.position[4] == pytest.approx(1 - 8 / 144)
    store.close()


def test_non_finite_values_survive(tmp_path):
    with Store(tmp_path / "s.db") as store:
        rid = store.create_run("nan")
        m = Measurement.from_values(VALIDATION, np.array([1.0, np.nan, np.inf]))
        store.append_epoch(rid, Epoch(0, train_loss=math.nan, measurements={VALIDATION: m}),
                           Steps.build([0, 0], [np.nan, np.inf]))
        run = store.load_run(rid)
    assert math.isnan(run.epochs[0].train_loss)
    assert math.isnan(run.epochs[0].measurements[VALIDATION].mean)
    assert np.isinf(run.epochs[0].measurements[VALIDATION].values[2])
    assert np.isnan(run.steps.loss[0]) and np.isinf(run.steps.loss[1])


def test_wal_and_schema_version(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("UPDATE losslens_info SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_a_version_1_store_is_migrated_when_opened(tmp_path):
    """Schema 1 kept the end-of-epoch estimate of imported logs as a train_mode measurement with source
    "estimated"; opening it gives the estimate its own kind and leaves measured train-mode passes alone."""
    path = tmp_path / "v1.db"
    with Store(path) as st:
        ep = Epoch(0, 1.0, measurements={"train_mode": Measurement("train_mode", 0.9, 0.01, 0, None, "estimated"),
                                         VALIDATION: Measurement.from_values(VALIDATION, [1.1, 1.2])})
        ep2 = Epoch(1, 0.8, measurements={"train_mode": Measurement.from_values("train_mode", [0.7, 0.8])})
        rid = st.save_run(Run("old", epochs=[ep, ep2], status="imported"))
    con = sqlite3.connect(path)
    con.execute("UPDATE measurements SET kind='train_mode' WHERE kind='end_of_epoch_estimate'")  # as v1 wrote it
    con.execute("UPDATE losslens_info SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    with Store(path) as st:
        run = st.load_run(rid)
    assert set(run.epochs[0].measurements) == {"end_of_epoch_estimate", VALIDATION}
    assert run.epochs[0].measurements["end_of_epoch_estimate"].mean == pytest.approx(0.9)
    assert set(run.epochs[1].measurements) == {"train_mode"}
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM losslens_info WHERE key='schema_version'").fetchone()[0] == \
        str(SCHEMA_VERSION)
    con.close()


def test_clear_errors(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a losslens store"):
        Store(other)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(tmp_path / "junk.db")
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing-dir" / "s.db")
    with Store(tmp_path / "ok.db") as store:
        store.create_run("a")
        with pytest.raises(StoreError, match=r"no run 'b'.*1:a"):
            store.load_run("b")
        with pytest.raises(ValueError, match="run name"):
            store.create_run("")


def test_killed_writer_leaves_committed_epochs(tmp_path):
    """A process killed between epochs (SIGKILL, no cleanup) leaves every committed epoch readable."""
    path = tmp_path / "k.db"
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from losslens.record import Epoch, Measurement, Steps, VALIDATION
        from losslens.store import Store
        s = Store({str(path)!r})
        rid = s.create_run("killed")
        for i in range(10):
            if i == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            m = Measurement.from_values(VALIDATION, np.full(1000, float(i)))
            s.append_epoch(rid, Epoch(i, train_loss=float(i), measurements={{VALIDATION: m}}),
                           Steps.build(np.full(100, i), np.arange(100.0)))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    with Store(path) as store:
        run = store.load_run("killed")
    assert [e.index for e in run.epochs] == [0, 1, 2, 3]
    assert run.status == "running"
    assert run.epochs[3].measurements[VALIDATION].values.size == 1000
    assert len(run.steps) == 400


def test_save_run_and_list(tmp_path):
    run = Run("imported", [Epoch(0, train_loss=1.0), Epoch(1, train_loss=0.5)],
              Steps.build([0, 0, 1, 1, 2], [1, 1, 0.5, 0.5, 0.4]), {"framework": "keras-csv"}, status="imported")
    with Store(tmp_path / "s.db") as store:
        rid = store.save_run(run)
        back = store.load_run(rid)
        rows = store.list_runs()
    assert back.status == "imported" and len(back.steps) == 5 and back.steps.epoch[-1] == 2
    assert rows[0]["n_epochs"] == 2 and rows[0]["name"] == "imported"


def test_fingerprint_is_order_independent():
    assert fingerprint_indices([3, 1, 2], 10) == fingerprint_indices(np.array([1, 2, 3]), 10)
    assert fingerprint_indices([1, 2, 3], 10) != fingerprint_indices([1, 2, 3], 11)
    assert fingerprint_indices([1, 2, 3], 10) != fingerprint_indices([1, 2, 4], 10)


def test_merge_copies_every_run(tmp_path):
    """`losslens merge` gathers per-node stores into one, with every epoch and step."""
    from click.testing import CliRunner

    from losslens.cli import main

    rng = np.random.default_rng(0)
    for node in ("a", "b"):
        with Store(tmp_path / f"{node}.db") as s:
            rid = s.create_run(f"run-{node}", {"node": node}, experiment="exp")
            s.append_epoch(rid, _epoch(0, rng), Steps.build(np.zeros(3), rng.random(3)))
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "all.db"), str(tmp_path / "a.db"), str(tmp_path / "b.db")])
    assert res.exit_code == 0, res.output
    with Store(tmp_path / "all.db") as s:
        runs = s.load_experiment("exp")
        with Store(tmp_path / "a.db") as a:
            orig = a.load_run("run-a")
    assert [r.name for r in runs] == ["run-a", "run-b"]
    np.testing.assert_array_equal(runs[0].epochs[0].measurements[VALIDATION].values,
                                  orig.epochs[0].measurements[VALIDATION].values)
    np.testing.assert_array_equal(runs[0].steps.loss, orig.steps.loss)
    res = CliRunner().invoke(main, ["merge", str(tmp_path / "all.db"), str(tmp_path / "all.db")])
    assert res.exit_code != 0 and "into itself" in res.output


def test_merge_by_run_identity_atomically_and_never_into_a_hard_link(tmp_path):
    """Issues 13/16: the same source twice, or a re-run, copies nothing twice; a failing source leaves DEST as it
    was; a hard link to DEST is recognised as DEST."""
    import os

    from click.testing import CliRunner

    from losslens.cli import main

    rng = np.random.default_rng(0)
    with Store(tmp_path / "a.db") as s:
        for k in range(2):
            rid = s.create_run(f"seed{k}", {}, experiment="exp")
            s.append_epoch(rid, _epoch(0, rng), Steps.build(np.zeros(3), rng.random(3)))
    out, a = str(tmp_path / "out.db"), str(tmp_path / "a.db")
    r = CliRunner().invoke(main, ["merge", out, a, a])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(main, ["merge", out, a]).exit_code == 0    # a re-run
    with Store(out) as s:
        assert sorted(x["name"] for x in s.list_runs()) == ["seed0", "seed1"]
    before = open(out, "rb").read()
    (tmp_path / "bad.db").write_bytes(b"this is not a database at all" * 100)
    r = CliRunner().invoke(main, ["merge", out, a, str(tmp_path / "bad.db")])
    assert r.exit_code != 0 and "unchanged" in r.output
    assert open(out, "rb").read() == before
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "new.db"), str(tmp_path / "bad.db")])
    assert r.exit_code != 0 and not os.path.exists(tmp_path / "new.db")
    os.link(out, tmp_path / "link.db")
    r = CliRunner().invoke(main, ["merge", out, str(tmp_path / "link.db")])
    assert r.exit_code != 0 and "itself" in r.output
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".losslens-merge-")]


def _open_and_create(path, barrier, queue):
    try:
        barrier.wait()
        with Store(path) as st:
            st.create_run("sweep-job", {"pid": os.getpid()})
        queue.put("")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_twelve_processes_create_one_store_at_once(tmp_path):
    """A sweep's jobs starting together all open (and create) the same store: 100 of 100 rounds succeed, every
    job's run is in it (before: 'database is locked' or 'no such table: runs' in some rounds)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for r in range(100):
        path = tmp_path / f"s{r}.db"
        barrier, queue = ctx.Barrier(12), ctx.Queue()
        procs = [ctx.Process(target=_open_and_create, args=(path, barrier, queue)) for _ in range(12)]
        for p in procs:
            p.start()
        errors = [e for e in (queue.get(timeout=60) for _ in procs) if e]
        for p in procs:
            p.join()
        assert not errors, f"round {r}: {errors[:2]}"
        with Store(path) as st:
            assert len(st.list_runs()) == 12


def test_a_read_only_store_is_read_without_writing(tmp_path):
    """Opened read-only (a read-only mount, another user's file, or the CLI's readers): every run reads, a schema-1
    store is translated while reading, nothing is written, and a write says why it cannot be done."""
    path = tmp_path / "v1.db"
    with Store(path) as st:
        ep = Epoch(0, 1.0, measurements={"train_mode": Measurement("train_mode", 0.9, 0.01, 0, None, "estimated")})
        rid = st.save_run(Run("old", epochs=[ep], status="imported"))
    con = sqlite3.connect(path)
    con.execute("UPDATE measurements SET kind='train_mode' WHERE kind='end_of_epoch_estimate'")
    con.execute("UPDATE losslens_info SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()
    before = path.read_bytes()
    with Store(path, read_only=True) as st:
        assert st.read_only
        run = st.load_run(rid)
        assert set(run.epochs[0].measurements) == {"end_of_epoch_estimate"}
        with pytest.raises(StoreError, match="read-only"):
            st.create_run("new", {})
    assert path.read_bytes() == before                       # not migrated, not touched
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing.db", read_only=True)


def test_a_reader_does_not_wait_for_a_writer(tmp_path):
    """`losslens report` while a training process holds a write transaction: the read-only reader reads the
    committed runs at once (write-ahead logging), instead of waiting 30 s and failing."""
    import time

    path = tmp_path / "s.db"
    writer = Store(path)
    rid = writer.create_run("r", {})
    writer._conn.execute("BEGIN IMMEDIATE")
    writer._conn.execute("UPDATE runs SET status='x' WHERE id=?", (rid,))
    t0 = time.perf_counter()
    with Store(path, read_only=True) as reader:
        assert reader.load_run(rid).status == "running"      # the committed state
    assert time.perf_counter() - t0 < 5
    writer._conn.execute("ROLLBACK")
    writer.close()


@pytest.mark.parametrize("damage, what", [
    ("UPDATE runs SET meta='{not json' WHERE id=1", "the run"),
    ("UPDATE steps SET data=x'0102' WHERE run_id=1", "the run"),
    ("DROP TABLE epochs", "the run"),
])
def test_a_damaged_store_raises_one_store_error_naming_the_file(tmp_path, damage, what):
    path = tmp_path / "s.db"
    with Store(path) as st:
        st.save_run(Run("r", epochs=[Epoch(0, 1.0)], steps=Steps.build([0, 0], [1.0, 0.9])))
    con = sqlite3.connect(path)
    con.execute(damage)
    con.commit()
    con.close()
    with Store(path, read_only=True) as st:
        with pytest.raises(StoreError, match=f"{str(path)!r}: {what} could not be read"):
            st.load_run(1)


def test_a_damaged_store_still_shows_what_is_readable(tmp_path):
    """A bad step blob and bad metrics in one epoch: the strict read raises; the salvaging read keeps the other
    epochs and steps, says what it skipped, and `losslens report` shows it with recording.damaged_log."""
    from click.testing import CliRunner

    from losslens.cli import main
    from losslens.diagnose import diagnose

    path = tmp_path / "s.db"
    with Store(path) as st:
        st.save_run(Run("r", epochs=[Epoch(e, 1.0 - 0.1 * e, position=e + 1.0) for e in range(4)],
                        steps=Steps.build([0, 0, 1, 1, 2, 2, 3, 3], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])))
    con = sqlite3.connect(path)
    con.execute("UPDATE steps SET data=x'0102' WHERE run_id=1 AND epoch=2")
    con.execute("UPDATE epochs SET metrics='{bad' WHERE run_id=1 AND epoch=1")
    con.commit()
    con.close()
    with Store(path, read_only=True) as st:
        with pytest.raises(StoreError):
            st.load_run("r")
        run = st.load_run("r", salvage=True)
    assert [e.index for e in run.epochs] == [0, 2, 3]
    assert sorted(set(run.steps.epoch.tolist())) == [0, 1, 3]
    assert len(run.meta["damaged_records"]) == 2
    assert "recording.damaged_log" in diagnose(run).codes()
    res = CliRunner().invoke(main, ["report", "r", "--store", str(path), "--html", str(tmp_path / "r.html"),
                                    "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "still readable" in res.output
    assert "recording.damaged_log" in (tmp_path / "r.json").read_text()


def test_a_version_2_store_gains_weights_and_reads_read_only(tmp_path):
    """Schema 3 adds the per-sample weights (token counts); a version-2 file opened read-only still reads, one
    opened for writing is migrated, and weighted measurements keep their weights through the store."""
    path = tmp_path / "v2.db"
    with Store(path) as st:
        old = st.save_run(Run("old", epochs=[Epoch(0, 1.0, measurements={
            VALIDATION: Measurement.from_values(VALIDATION, [1.0, 2.0])})]))
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE measurements DROP COLUMN weights")   # as version 2 wrote it
    con.execute("UPDATE losslens_info SET value='2' WHERE key='schema_version'")
    con.commit()
    con.close()
    with Store(path, read_only=True) as st:
        m = st.load_run(old).epochs[0].measurements[VALIDATION]
    assert m.mean == pytest.approx(1.5) and m.weights is None
    with Store(path) as st:
        ep = Epoch(0, 1.0, measurements={VALIDATION: Measurement.from_values(VALIDATION, [1.0, 3.0, 2.0],
                                                                             weights=[1, 3, 0])})
        rid = st.save_run(Run("lm", epochs=[ep]))
    with Store(path, read_only=True) as st:
        m = st.load_run(rid).epochs[0].measurements[VALIDATION]
    assert m.mean == pytest.approx((1.0 + 9.0) / 4)
    assert m.weights is not None and m.weights.tolist() == [1.0, 3.0, 0.0]
