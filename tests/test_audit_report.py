"""The audit's outputs: JSON, summary lines, HTML fragment (escaped, pairs side by side), findings, CLI."""

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_breast_cancer, load_digits
from threadpoolctl import threadpool_limits

from losslens.audit import audit_split
from losslens.cli import main
from losslens.findings import Finding
from losslens.report.audit import render_fragment


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    with threadpool_limits(1):
        yield


EVIL = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def digits_leaky():
    d = load_digits()
    x, y = d.images, d.target
    p = np.random.default_rng(0).permutation(len(x))
    xt, xv = x[p[:1400]], x[p[1400:]].copy()
    xv[:5] = xt[:5]
    xv[5:10] = np.roll(xt[5:10], 1, axis=2)
    xv[5:10, :, 0] = 0
    return xt, xv, y[p[:1400]], y[p[1400:]]


def test_image_pairs_as_png_thumbnails(digits_leaky):
    xt, xv, yt, yv = digits_leaky
    res = audit_split(xt, xv, labels=(yt, yv), shift=False)
    html = render_fragment(res)
    with pytest.warns(FutureWarning, match="render_fragment"):
        assert res.to_html() == html   # the deprecated method renders the same fragment
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == 2 * 10  # 5 exact + 5 near pairs, train and val side by side
    assert all(base64.b64decode(s)[:8] == b"\x89PNG\r\n\x1a\n" for s in imgs)
    assert "Exact duplicates" in html and "Near duplicates" in html and "Label shares" in html
    assert "<html" not in html  # a fragment
    assert "split.exact_duplicates" in html


def test_text_and_table_strings_are_escaped():
    train = [f"sample number {i} with some words" for i in range(60)] + [EVIL + " leaked"]
    val = [f"other text {i} entirely different" for i in range(20)] + [EVIL + " LEAKED"]
    res = audit_split(train, val, labels=(["a&b"] * 61, ["<i>c</i>"] * 21), shift=False)
    html = render_fragment(res)
    assert EVIL not in html and "<i>c</i>" not in html
    assert "&lt;script&gt;" in html and "&lt;i&gt;c&lt;/i&gt;" in html
    assert res.exact.pairs.tolist() == [[60, 20]]
    df_t = pd.DataFrame({EVIL: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "name": ["x", "y", EVIL, "z", "w", "v", "u"]})
    df_v = df_t.iloc[[2, 4, 5]].reset_index(drop=True)
    res = audit_split(df_t, df_v, shift=False)
    html = render_fragment(res)
    assert EVIL not in html and html.count("&lt;script&gt;") >= 3  # column name, cell, and the row pair
    assert "<table>" in html


def test_json_summary_and_findings(digits_leaky):
    xt, xv, yt, yv = digits_leaky
    res = audit_split(xt, xv, labels=(yt, yv), groups=(np.arange(1400) % 50, np.arange(397) % 60),
                      val_losses=np.linspace(0, 1, len(xv)), probe_losses=np.linspace(0.5, 1.5, 300))
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["exact_duplicates"]["n_val_duplicated"] == 5 and d["near_duplicates"]["n_val_near"] == 5
    assert d["group_leak"]["n_shared"] == 50
    assert d["difficulty"]["val_easier"] is True
    codes = [f["code"] for f in d["findings"]]
    assert codes == ["split.exact_duplicates", "split.near_duplicates", "split.group_leak",
                     "split.val_easier_samples"]
    fs = res.findings()
    assert all(isinstance(f, Finding) and f.evidence and f.recommendation for f in fs)
    assert fs[-1].data["causes"] == codes[:3]
    lines = res.summary_lines()
    assert lines[1].startswith("Exact duplicates: 5 validation samples")
    assert any(line.startswith("Group leak: 50 of 60") for line in lines)
    assert any("validation easier" in line for line in lines)


def _write(tmp_path, name, obj):
    p = tmp_path / name
    if name.endswith(".npy"):
        np.save(p, obj)
    elif name.endswith(".csv"):
        obj.to_csv(p, index=False)
    elif name.endswith(".txt"):
        p.write_text("\n".join(obj) + "\n", encoding="utf-8")
    return str(p)


def test_cli_arrays_with_label_files(tmp_path, digits_leaky):
    xt, xv, yt, yv = digits_leaky
    args = ["audit", _write(tmp_path, "tr.npy", xt), _write(tmp_path, "va.npy", xv),
            "--train-labels", _write(tmp_path, "ytr.npy", yt), "--val-labels", _write(tmp_path, "yva.txt",
                                                                                      [str(v) for v in yv]),
            "--no-shift", "--html", str(tmp_path / "a.html"), "--json", str(tmp_path / "a.json")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "Exact duplicates: 5 validation samples" in r.output and "split.near_duplicates" in r.output
    page = (tmp_path / "a.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Split audit" in page and "data:image/png;base64," in page
    d = json.loads((tmp_path / "a.json").read_text())
    assert d["label_shift"]["kind"] == "classes" and d["exact_duplicates"]["n_pairs"] == 5


def test_cli_csv_with_columns_and_text(tmp_path):
    bc = load_breast_cancer(as_frame=True).frame
    bc["patient"] = np.arange(len(bc)) // 2
    tr, va = bc.iloc[:400], bc.iloc[399:]
    r = CliRunner().invoke(main, ["audit", _write(tmp_path, "tr.csv", tr), _write(tmp_path, "va.csv", va),
                                  "--label-col", "target", "--group-col", "patient", "--no-shift"])
    assert r.exit_code == 0, r.output
    assert "Exact duplicates: 1 validation samples" in r.output and "Group leak: 1 of" in r.output
    t = [f"line {i} of the corpus" for i in range(30)]
    r = CliRunner().invoke(main, ["audit", _write(tmp_path, "a.txt", t), _write(tmp_path, "b.txt", t[:3]),
                                  "--no-shift"])
    assert r.exit_code == 0 and "3 validation samples (100.0 %)" in r.output


def test_cli_errors_name_the_file_or_option(tmp_path):
    ok = _write(tmp_path, "ok.npy", np.zeros((10, 3)))
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    cases = [
        (["audit", str(tmp_path / "missing.npy"), ok], "missing.npy: no such file"),
        (["audit", str(pickled), ok], "obj.npy: contains Python objects (pickled)"),
        (["audit", _write(tmp_path, "x.csv", pd.DataFrame({"a": [1]})), ok], "same kind"),
        (["audit", ok, ok, "--train-labels", ok], "--train-labels and --val-labels must be given together"),
        (["audit", ok, ok, "--image-shape", "8by8"], "--image-shape"),
        (["audit", _write(tmp_path, "t.csv", pd.DataFrame({"a": [1, 2]})),
          _write(tmp_path, "v.csv", pd.DataFrame({"a": [3]})), "--label-col", "y"], "label column 'y'"),
    ]
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    cases.append((["audit", str(bad), ok], "unsupported extension '.json'"))
    for args, msg in cases:
        r = CliRunner().invoke(main, args)
        assert r.exit_code != 0 and msg in r.output, (args, r.output)


def test_cli_npz_key_and_parquet_without_pyarrow(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(10, 4))
    b[2] = a[5]
    np.savez(tmp_path / "tr.npz", x=a, other=np.zeros(3))
    np.savez(tmp_path / "va.npz", x=b, other=np.zeros(3))
    r = CliRunner().invoke(main, ["audit", str(tmp_path / "tr.npz"), str(tmp_path / "va.npz"), "--no-shift"])
    assert r.exit_code == 0 and "Exact duplicates: 1 validation samples" in r.output, r.output
    r = CliRunner().invoke(main, ["audit", str(tmp_path / "tr.npz"), str(tmp_path / "va.npz"), "--key", "nope"])
    assert r.exit_code != 0 and "tr.npz: no array 'nope'" in r.output
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "t.parquet").write_bytes(b"PAR1")
        r = CliRunner().invoke(main, ["audit", str(tmp_path / "t.parquet"), str(tmp_path / "t.parquet")])
        assert r.exit_code != 0 and "t.parquet: reading parquet needs pyarrow" in r.output


def test_report_layer_renders_the_audit_section(digits_leaky, tmp_path):
    from losslens.record import EVAL_CLEAN, VALIDATION, Epoch, Measurement, Run
    from losslens.report import Report

    xt, xv, yt, yv = digits_leaky
    res = audit_split(xt, xv, labels=(yt, yv), shift=False)
    run = Run(name=EVIL)
    rng = np.random.default_rng(0)
    run.epochs.append(Epoch(0, train_loss=0.5, measurements={
        VALIDATION: Measurement.from_values(VALIDATION, rng.random(len(xv))),
        EVAL_CLEAN: Measurement.from_values(EVAL_CLEAN, rng.random(200) + 0.5)}))
    rep = Report.from_run(run, audit=res)
    d = rep.to_dict()
    assert d["audit"]["exact_duplicates"]["n_val_duplicated"] == 5
    rep.save_html(str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Split audit" in html and html.count("data:image/png;base64,") >= 20 and EVIL not in html
