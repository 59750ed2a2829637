"""Crafted inputs get one clear error naming the file, within a memory and time bound; outputs never go through
a link out of the output folder; one bad log in a folder does not cost the others (issue 13)."""

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from losslens.cli import main
from losslens.importers import LogFormatError, SkippedLogWarning, load_log

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _state(history, **extra):
    return json.dumps({"log_history": history, **extra})


def _good_history(n=4):
    out = []
    for e in range(1, n + 1):
        out += [{"epoch": float(e), "step": 10 * e, "loss": 1.0 / e}, {"epoch": float(e), "step": 10 * e,
                                                                          "eval_loss": 1.1 / e}]
    return out


def _write(folder, text, name="trainer_state.json"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------------- one clear line
def test_deep_nesting_and_huge_integers_are_one_clear_error(tmp_path):
    deep = _write(tmp_path / "deep", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(LogFormatError, match="nested too deeply") as exc:
        load_log(deep)
    assert str(deep) in str(exc.value)
    big = _write(tmp_path / "big", '{"log_history": [{"epoch": 1, "step": ' + "9" * 401 + ', "loss": 1.0}]}')
    with pytest.raises(LogFormatError, match=r"log_history\[0\]\.step: integer with 401 digits"):
        load_log(big)


def test_a_lone_surrogate_in_a_key_still_gives_a_complete_json_report(tmp_path):
    hist = _good_history()
    text = _state(hist).replace('"loss": 1.0,', '"loss": 1.0, "\\ud800x": 2,', 1)
    p = _write(tmp_path / "s", text)
    res = _cli("diagnose", p, "--out", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))


def test_a_loss_of_1e308_is_drawn_without_warnings(tmp_path):
    hist = _good_history()
    hist[0]["loss"] = 1e308
    p = _write(tmp_path / "huge", _state(hist))
    res = _cli("diagnose", p, "--out", tmp_path / "out", "-q")
    assert res.exit_code == 0
    assert "warning" not in res.output.lower() and "overflow" not in res.output
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "1e-9", "1e12"])
def test_absurd_steps_per_epoch_are_refused_by_name(tmp_path, value):
    p = tmp_path / "history.csv"
    p.write_text("epoch,train_loss,valid_loss,time\n0,1.0,1.1,00:01\n1,0.9,1.0,00:01\n2,0.8,0.95,00:01\n")
    res = _cli("diagnose", p, "--steps-per-epoch", value, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "--steps-per-epoch" in res.output and res.exception is not None
    assert not isinstance(res.exception, (ValueError, OverflowError))
    with pytest.raises(LogFormatError, match="steps_per_epoch"):
        load_log(p, steps_per_epoch=float(value))


def test_memory_follows_the_file_not_the_values_in_it(tmp_path):
    """Crafted inputs under a 2 GiB address-space limit and a time limit: each one clear line or a report."""
    hist = _good_history(2)
    for k in (2, 3):
        hist[k]["step"] = 1e11
    cases = {
        "step1e11": _write(tmp_path / "a", _state(hist)),
        "deep": _write(tmp_path / "b", "{\"a\":" * 200_000 + "1" + "}" * 200_000),
        "header": _write(tmp_path / "c", "epoch," + ",".join(f"c{i}" for i in range(200_000)) + "\n0," +
                         ",".join("1" for _ in range(200_000)) + "\n", name="log.csv"),
    }
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.csv")
        cases["fifo"] = tmp_path / "fifo.csv"
    runner = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from losslens.cli import main
        sys.argv = ["losslens", "diagnose", sys.argv[1], "--out", sys.argv[2], "-q"]
        main()
    """)
    for name, path in cases.items():
        res = subprocess.run([sys.executable, "-c", runner, str(path), str(tmp_path / f"out-{name}")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode in (0, 1), (name, res.stderr[-2000:])
        assert "Traceback" not in res.stderr and "MemoryError" not in res.stderr, (name, res.stderr[-2000:])
        if res.returncode == 1:
            assert str(path) in res.stderr or os.path.basename(path) in res.stderr, (name, res.stderr)


def test_tensorboard_steps_that_imply_absurd_epochs_are_refused(tmp_path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb"))
    for s in (1, 2, 10**15):
        w.add_scalar("train_loss", 1.0 / s, s)
    w.close()
    with pytest.raises(LogFormatError, match="steps per epoch"):
        load_log(tmp_path / "tb", steps_per_epoch=1)


# ------------------------------------------------------------------------------------------- folders
def test_one_bad_log_in_a_folder_does_not_cost_the_others(tmp_path):
    _write(tmp_path / "runs" / "good1", _state(_good_history()))
    _write(tmp_path / "runs" / "good2", _state(_good_history(5)))
    bad = _write(tmp_path / "runs" / "bad", "[" * 100_000)
    with pytest.warns(SkippedLogWarning, match="bad"):
        runs = load_log(tmp_path / "runs")
    assert len(runs) == 2
    res = _cli("diagnose", tmp_path / "runs", "--out", tmp_path / "out", "-q")
    assert res.exit_code == 1
    assert str(bad) in res.output
    assert len(json.loads((tmp_path / "out" / "overview.json").read_text())) == 2
    _write(tmp_path / "only_bad" / "x", "{")
    with pytest.warns(SkippedLogWarning), pytest.raises(LogFormatError, match="none of the 1 logs"):
        load_log(tmp_path / "only_bad")


def test_symbolic_link_loops_import_each_run_once(tmp_path):
    root = tmp_path / "loop"
    _write(root / "x" / "run", _state(_good_history()))
    os.symlink("..", root / "x" / "up")          # x/up -> loop: a loop through every level
    os.symlink(root / "x", root / "x" / "again")  # a second path to the same folder
    os.symlink(root, root / "self")
    runs = load_log(root)
    assert len(runs) == 1


# ------------------------------------------------------------------------------------------- TensorBoard CRC
def _records(data):
    off, out = 0, []
    while off < len(data):
        n = struct.unpack_from("<Q", data, off)[0]
        out.append((off, n))
        off += 16 + n
    return out


def test_a_damaged_tensorboard_record_is_skipped_and_said(tmp_path):
    pytest.importorskip("torch")
    from torch.utils.tensorboard import SummaryWriter

    d = tmp_path / "tb"
    w = SummaryWriter(str(d))
    for e in range(6):
        for k in range(4):
            w.add_scalar("train_loss", 1.0 / (e + 1) + 0.01 * k, 4 * e + k + 1)
        w.add_scalar("val_loss", 1.2 / (e + 1), 4 * e + 4)
    w.close()
    clean = load_log(d)
    f = next(p for p in d.iterdir() if "tfevents" in p.name)
    data = bytearray(f.read_bytes())
    recs = _records(bytes(data))
    assert len(recs) == 1 + 6 * 5        # the file version, then per epoch 4 step values and 1 validation value
    off, n = recs[1 + 5 + 1]             # a train_loss step of epoch 1: its data CRC fails
    data[off + 12 + n] ^= 0xFF
    off2, _ = recs[1 + 4 * 5 + 1]        # and a step of epoch 4 whose length is damaged: the reader resynchronises
    data[off2] ^= 0xFF
    f.write_bytes(bytes(data))
    run = load_log(d)
    notes = run.meta["import_notes"]
    assert any("2 damaged record(s)" in n for n in notes), notes
    assert len(run.epochs) == len(clean.epochs) == 6           # the values after the damage were read
    assert len(run.steps) == len(clean.steps) - 2
    from losslens.diagnose import diagnose

    codes = diagnose(run).codes()
    assert "recording.damaged_log" in codes
    assert "recording.damaged_log" not in diagnose(clean).codes()


# ------------------------------------------------------------------------------------------- pickles, arrays
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy_history_pickles_of_every_protocol_load(tmp_path, protocol):
    p = tmp_path / "history.pickle"
    p.write_bytes(pickle.dumps({"loss": np.array([1.0, 0.8, 0.7]), "val_loss": [np.float64(1.1), np.float32(0.9),
                                                                                0.85]}, protocol=protocol))
    with pytest.warns(UserWarning, match="loading a pickle"):
        run = load_log(p, allow_pickle=True)
    assert len(run.epochs) == 3


def test_a_pickle_asking_for_another_codec_is_refused(tmp_path):
    p = tmp_path / "evil.pickle"
    p.write_bytes(b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcX\x04\x00\x00\x00zlibq\x01\x86R.")
    with pytest.warns(UserWarning), pytest.raises(LogFormatError, match="refusing _codecs.encode"):
        load_log(p, allow_pickle=True)


def test_an_npy_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000, 4), }"
    hdr = hdr + " " * (118 - len(hdr)) + "\n"
    (tmp_path / "big.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode()
                                       + b"\x00" * 64)
    np.save(tmp_path / "v.npy", np.zeros((5, 4)))
    res = _cli("audit", tmp_path / "big.npy", tmp_path / "v.npy")
    assert res.exit_code == 1 and "big.npy" in res.output and "declares" in res.output
    assert not isinstance(res.exception, MemoryError)


# ------------------------------------------------------------------------------------------- output paths
def test_output_paths_are_refused_before_the_work(tmp_path):
    log = _write(tmp_path / "r", _state(_good_history()))
    (tmp_path / "afile").write_text("x")
    res = _cli("diagnose", log, "--out", tmp_path / "afile" / "sub")
    assert res.exit_code == 1 and "--out" in res.output and "losslens report" not in res.output
    assert "verdict" not in res.output.lower()        # nothing was diagnosed or printed first
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.html").mkdir()          # the single-run report path is a folder
    res = _cli("diagnose", log, "--out", tmp_path / "o", "-q")
    assert res.exit_code == 1 and "report.html" in res.output and "is a folder" in res.output
    assert res.output.count("\n") <= 2 and not isinstance(res.exception, IsADirectoryError)
    res = _cli("audit", tmp_path / "x.npy", tmp_path / "y.npy", "--html", tmp_path / "missing" / "a.html")
    assert res.exit_code == 1 and "--html" in res.output and "does not exist" in res.output


def test_run_names_that_collide_with_outputs_get_their_own_folders(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "overview.html", _state(_good_history()))   # a run folder named like the overview page
    _write(runs / "b", _state(_good_history(5)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_trainer_state.json").write_text("a file where run b's folder would go")
    res = _cli("diagnose", runs, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert (out / "overview.html").is_file() and (out / "overview.json").is_file()
    assert (out / "b_trainer_state.json").read_text() == "a file where run b's folder would go"
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all((out / f / "report.html").is_file() for f in folders)


def test_a_link_in_the_output_folder_is_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.html").write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside / "precious.html", out / "report.html")
    log = _write(tmp_path / "r", _state(_good_history()))
    res = _cli("diagnose", log, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert (outside / "precious.html").read_text() == "keep me"
    assert not (out / "report.html").is_symlink() and "losslens" in (out / "report.html").read_text()


_ENTRY = st.sampled_from(["file", "dir", "link_out_file", "link_out_dir", "dangling"])
_NAMES = st.sampled_from(["report.html", "report.json", "overview.html", "overview.json", "a_trainer_state.json",
                          "b_trainer_state.json", "a_trainer_state.json_2"])


@SETTINGS
@given(layout=st.dictionaries(_NAMES, _ENTRY, max_size=5), multi=st.booleans())
def test_fuzzed_output_folders_never_write_outside_and_never_trace_back(tmp_path_factory, layout, multi):
    tmp = tmp_path_factory.mktemp("fuzz")
    outside = tmp / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "f").write_text("outside")
    runs = tmp / "runs"
    _write(runs / "a", _state(_good_history()))
    if multi:
        _write(runs / "b", _state(_good_history(5)))
    out = tmp / "out"
    out.mkdir()
    for name, kind in layout.items():
        p = out / name
        if kind == "file":
            p.write_text("user file")
        elif kind == "dir":
            p.mkdir()
        elif kind == "link_out_file":
            os.symlink(outside / "f", p)
        elif kind == "link_out_dir":
            os.symlink(outside / "d", p)
        else:
            os.symlink(tmp / "nowhere", p)
    res = _cli("diagnose", runs if multi else runs / "a", "--out", out, "-q")
    assert res.exit_code in (0, 1), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert (outside / "f").read_text() == "outside" and list((outside / "d").iterdir()) == []
    assert not (tmp / "nowhere").exists()
    if res.exit_code == 1:
        assert res.output.strip().count("\n") == 0 and "--out" in res.output
    for name, kind in layout.items():
        if kind == "file" and name not in ("report.html", "report.json", "overview.html", "overview.json"):
            assert (out / name).read_text() == "user file"


# ------------------------------------------------------------------------------------------- the store opener
def _valid_store_bytes(tmp_path):
    from losslens.record import Epoch
    from losslens.store import Store

    p = tmp_path / "valid.db"
    with Store(p) as s:
        rid = s.create_run("r", {"framework": "test"}, None)
        s.append_epoch(rid, Epoch(index=0, train_loss=1.0, n_steps=1, n_samples=8, position=1.0), None)
    return p.read_bytes()


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_flips=st.integers(1, 64), keep_header=st.booleans(),
       cut=st.floats(0.05, 1.0))
def test_fuzzed_store_files_give_a_store_error_or_open(tmp_path_factory, seed, n_flips, keep_header, cut):
    from losslens.store import Store, StoreError

    tmp = tmp_path_factory.mktemp("store")
    data = bytearray(_valid_store_bytes(tmp))
    rng = np.random.default_rng(seed)
    lo = 100 if keep_header else 0
    for i in rng.integers(lo, len(data), n_flips):
        data[i] = int(rng.integers(0, 256))
    data = data[:max(1, int(len(data) * cut))]
    p = tmp / "fuzzed.db"
    p.write_bytes(bytes(data))
    before = p.read_bytes()
    try:
        with Store(p, read_only=True) as s:
            for run in s.list_runs():
                s.load_run(run["id"])
    except StoreError as exc:
        assert "fuzzed.db" in str(exc)
    assert p.read_bytes() == before          # a reader never changes the file
    res = _cli("runs", "--store", p)
    assert res.exit_code in (0, 1) and (res.exception is None or isinstance(res.exception, SystemExit)), \
        repr(res.exception)
