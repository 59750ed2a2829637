"""The report layer: terminal text, self-contained HTML, JSON, figures and decimation.

Runs are built by hand here (the adapters have their own tests) so that every
corner the report must survive is reached on purpose: no validation, no
probes, estimated measurements, non-finite values, an empty run.
"""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from losslens.diagnose import diagnose
from losslens.record import MEASUREMENT_LABELS, Epoch, Measurement, Run, Steps
from losslens.report import Report, figures
from losslens.report.figures import decimate


def make_run(name="toy", n_epochs=6, probes=True, val=True, steps_per_epoch=20, seed=0, status="finished",
             meta=None, metrics=False):
    """A run whose numbers follow the DESIGN protocol: T > A > C, step losses falling within each epoch."""
    rng = np.random.default_rng(seed)
    epochs, parts = [], []
    for e in range(n_epochs):
        base = 2.0 * math.exp(-0.5 * e) + 0.3
        loss = base + 0.05 * rng.standard_normal(steps_per_epoch) + np.linspace(0.2, -0.2, steps_per_epoch)
        parts.append(Steps.build(np.full(steps_per_epoch, e), loss, batch_size=np.full(steps_per_epoch, 32)))
        ms = {}
        n = 200
        if probes:
            c = np.abs(base - 0.2 + 0.3 * rng.standard_normal(n))
            a = c + 0.05 + 0.02 * rng.standard_normal(n)
            t = a + 0.2 + 0.05 * rng.standard_normal(n)
            ms["eval_clean"] = Measurement.from_values("eval_clean", c)
            ms["eval_augmented"] = Measurement.from_values("eval_augmented", a)
            ms["train_mode"] = Measurement.from_values("train_mode", t)
        if val:
            ms["validation"] = Measurement.from_values("validation", np.abs(base - 0.1 + 0.3 * rng.standard_normal(n)))
        r = float(np.mean(loss)) if steps_per_epoch else math.nan
        epochs.append(Epoch(e, train_loss=r, n_steps=steps_per_epoch,
                            n_samples=32 * steps_per_epoch, measurements=ms,
                            metrics={"accuracy": 0.5 + 0.05 * e} if metrics else {}))
    m = {"framework": "torch", "train_size": 640, "val_size": 200, "probe_size": 200 if probes else None,
         "probe_fingerprint": "sha256:abcdef0123456789abcdef", "baseline_loss": 2.30}
    m.update(meta or {})
    return Run(name, epochs, Steps.concat(parts), meta=m, status=status)


class _Refs(HTMLParser):
    """Collects every attribute that can load a resource, and the tags used."""

    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "poster", "action") and v is not None:
                self.refs.append((tag, k, v))


def _parse(html):
    p = _Refs()
    p.feed(html)
    return p


# --------------------------------------------------------------------------------------------- HTML
def _without_library(html):
    from losslens.report.interactive import plotly_js

    lib = plotly_js()
    assert html.count(lib) == 1, "the plotly.js library is inlined exactly once"
    return html.replace(lib, "")


def test_html_is_self_contained(tmp_path):
    path = Report.from_run(make_run()).save_html(tmp_path / "r.html")
    html = path.read_text(encoding="utf-8")
    p = _parse(html)
    # nothing is loaded from anywhere: no src/href at all, the scripts are inline
    assert p.refs == []
    assert "link" not in p.tags and "iframe" not in p.tags and "img" not in p.tags
    page = _without_library(html)
    assert "http://" not in page and "https://" not in page and "@import" not in page and "url(" not in page
    # the library, then one script per figure (loss curves, decomposition); every section is there
    assert html.count("<script>") == 3 and html.count('class="plot"') == 2
    for section in ("Findings", "Figures", "Gap decomposition per epoch", "What each number is"):
        assert section in html
    assert "Split audit" not in html


def test_html_escapes_every_user_string(tmp_path):
    evil = "<script>alert(1)</script>"
    run = make_run(name=evil, metrics=True,
                   meta={"optimizer": '<img src=x onerror="alert(2)">', "loss": "<b>ce</b>",
                         "skipped": {"augmentation": "<i>none</i>"}})
    run.experiment = "<svg onload=alert(3)>"
    for e in run.epochs:
        e.metrics["<u>acc</u>"] = 0.5
    html = Report.from_run(run).to_html()
    for raw in (evil, "<img src=x", "<b>ce</b>", "<i>none</i>", "<svg onload", "<u>acc</u>"):
        assert raw not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;ce&lt;/b&gt;" in html
    p = _parse(html)
    assert "svg" not in p.tags and "u" not in p.tags and p.refs == []
    assert html.count("<script>") == 3           # only the library and the two figures' scripts
    page = _without_library(html)
    for block in page.split("<script>")[1:]:     # figure data cannot close its script element
        body = block.split("</script>", 1)[0]
        assert "<" not in body.replace("</", "")


def test_html_shows_non_finite_values_and_unfinished_status(tmp_path):
    run = make_run(status="running")
    run.epochs[3].train_loss = math.nan
    run.epochs[4].measurements["validation"] = Measurement("validation", math.inf, math.nan, 200)
    html = Report.from_run(run).to_html()
    assert ">nan<" in html and ">inf<" in html
    assert "did not finish" in html and "6 epoch(s) it committed" in html
    assert "did not finish" not in Report.from_run(make_run(status="finished")).to_html()


def test_html_decomposition_table_matches_diagnosis():
    run = make_run()
    rep = Report.from_run(run)
    html = rep.to_html()
    last = rep.diagnosis.decomposition[-1]
    for name, term in last.terms.items():
        if term.status == "measured" and term.value != 0:
            assert f"{term.value:+.4g} ± {term.se:.2g}" in html, name


class _Audit:
    def to_html(self):
        return '<p class="audit-frag">3 exact duplicates between training and validation</p>'

    def to_dict(self):
        return {"duplicates": 3, "score": math.nan}

    def summary_lines(self):
        return ["3 exact duplicates between training and validation"]


def test_audit_section_in_every_output():
    rep = Report(diagnose(make_run()), audit=_Audit())
    html = rep.to_html()
    assert "Split audit" in html
    assert '<p class="audit-frag">3 exact duplicates' in html  # already-escaped fragment kept as markup
    assert "3 exact duplicates between training and validation" in rep.to_text()
    d = json.loads(rep.to_json())
    assert d["audit"] == {"duplicates": 3, "score": None}


def test_report_rejects_wrong_types():
    with pytest.raises(TypeError, match="Diagnosis"):
        Report(make_run())
    with pytest.raises(TypeError, match="summary_lines"):
        Report(diagnose(make_run()), audit=object())
    with pytest.raises(TypeError, match="Run"):
        Report.from_run("run.db")


def test_save_to_missing_directory_names_it(tmp_path):
    from losslens.report._env import OutputPathError

    with pytest.raises(OutputPathError, match="nope"):
        Report.from_run(make_run()).save_html(tmp_path / "nope" / "r.html")


# --------------------------------------------------------------------------------------------- JSON
def _strict_loads(text):
    def bad(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=bad)


def test_json_round_trips_without_nan(tmp_path):
    run = make_run(metrics=True)
    run.epochs[2].train_loss = math.nan
    run.epochs[3].metrics["accuracy"] = math.inf
    run.epochs[4].measurements["validation"] = Measurement("validation", math.nan, math.nan, 0)
    rep = Report.from_run(run)
    d = _strict_loads(rep.save_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    again = _strict_loads(json.dumps(rep.to_dict(), allow_nan=False))
    d["report"].pop("created"), again["report"].pop("created")  # a timestamp, may tick between the calls
    assert d == again
    assert d["report"]["format_version"] == 1 and d["report"]["finished"] is True
    assert d["run"]["name"] == "toy"
    assert d["run"]["epochs"][2]["train_loss"] is None
    assert d["run"]["epochs"][3]["metrics"]["accuracy"] is None
    assert d["run"]["epochs"][4]["measurements"]["validation"]["mean"] is None
    assert d["report"]["codes"] == [f["code"] for f in d["findings"]]
    last = rep.diagnosis.decomposition[-1]
    got = d["decomposition"][-1]
    assert got["epoch"] == last.epoch
    for name, term in last.terms.items():
        assert got["terms"][name]["value"] == pytest.approx(term.value, rel=1e-12, abs=1e-15)
        assert got["terms"][name]["status"] == term.status


def test_json_of_empty_run():
    d = _strict_loads(Report.from_run(Run("empty")).to_json())
    assert d["run"]["epochs"] == [] and d["decomposition"] == []


# --------------------------------------------------------------------------------------------- terminal
def test_terminal_summary_content():
    run = make_run()
    run.id = 7
    rep = Report.from_run(run)
    text = rep.to_text(width=120)
    assert "toy" in text and "(id 7)" in text and "sha256:abcdef012345" in text
    last = rep.diagnosis.decomposition[-1]
    assert f"at epoch {last.epoch}" in text
    for name, term in last.terms.items():
        assert name in text
    assert f"{last.terms['train_mode'].value:+.4g} ± {last.terms['train_mode'].se:.2g}" in text
    for f in rep.findings:
        assert f.code in text
    assert "did not finish" not in text
    assert "\x1b[" not in text  # plain text, no colour codes


def test_terminal_does_not_interpret_markup_in_user_strings():
    text = Report.from_run(make_run(name="[bold red]x[/bold red]")).to_text()
    assert "[bold red]x[/bold red]" in text


@pytest.mark.parametrize("kwargs", [
    {"n_epochs": 0}, {"val": False}, {"probes": False}, {"probes": False, "val": False}, {"n_epochs": 1},
    {"steps_per_epoch": 0},
])
def test_every_output_survives_sparse_runs(kwargs, tmp_path):
    rep = Report.from_run(make_run(**kwargs))
    text = rep.to_text()
    assert "toy" in text
    html = rep.save_html(tmp_path / "r.html").read_text(encoding="utf-8")
    assert "What each number is" in html
    _strict_loads(rep.to_json())
    if not kwargs.get("val", True) or kwargs.get("n_epochs", 6) == 0:
        assert "Gap decomposition: not available" in text
    if not kwargs.get("probes", True) and kwargs.get("val", True):
        assert "not measured" in text


def test_terminal_marks_unfinished_runs():
    text = Report.from_run(make_run(status="running", n_epochs=3)).to_text()
    assert "did not finish" in text and "3 epoch(s)" in text


# --------------------------------------------------------------------------------------------- figures
def _lines(fig):
    return {ln.get_label(): ln for ln in fig.axes[0].get_lines()}


def test_loss_curves_place_series_at_their_real_time():
    run = make_run(n_epochs=4)
    lines = _lines(figures.loss_curves(run))
    r = lines[figures.SERIES_LABELS["train_loss"]]
    np.testing.assert_allclose(r.get_xdata(), [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(r.get_ydata(), [e.train_loss for e in run.epochs])
    for kind, sym in (("validation", "V"), ("eval_clean", "C"), ("train_mode", "T"), ("eval_augmented", "A")):
        label = f"{sym}: {MEASUREMENT_LABELS[kind]}, at the epoch end"
        np.testing.assert_allclose(lines[label].get_xdata(), [1, 2, 3, 4])
        np.testing.assert_allclose(lines[label].get_ydata(), [e.measurements[kind].mean for e in run.epochs])
    steps = lines[figures.SERIES_LABELS["steps"]]
    np.testing.assert_allclose(steps.get_xdata(), run.steps.position)
    # the ±2 SE bands: one filled polygon per measured series
    assert len(fig_collections := figures.loss_curves(run).axes[0].collections) == 4
    v = run.epochs[0].measurements["validation"]
    ys = np.concatenate([p.vertices[:, 1] for c in fig_collections for p in c.get_paths()])
    assert np.any(np.isclose(ys, v.mean + 2 * v.sem)) and np.any(np.isclose(ys, v.mean - 2 * v.sem))


def test_estimated_series_are_dashed_and_labelled():
    run = make_run(probes=False, n_epochs=3)
    for e in run.epochs:
        e.measurements["end_of_epoch_estimate"] = Measurement("end_of_epoch_estimate", e.train_loss - 0.1, 0.02, 0,
                                                              None, "estimated")
    lines = _lines(figures.loss_curves(run))
    est = [ln for label, ln in lines.items() if "estimated" in label]
    assert len(est) == 1 and est[0].get_linestyle() == "--"
    assert "within-epoch trend" in est[0].get_label() and "not a probe" in est[0].get_label()
    measured = lines[f"V: {MEASUREMENT_LABELS['validation']}, at the epoch end"]
    assert measured.get_linestyle() == "-"
    bars = figures.decomposition_bars(diagnose(run).decomposition)
    assert any("estimated" in t.get_text() for t in bars.axes[0].get_legend().get_texts())


def test_figures_skip_non_finite_and_handle_empty_runs():
    run = make_run(n_epochs=3)
    run.steps.loss[[3, 25]] = [np.nan, np.inf]
    run.epochs[1].train_loss = np.nan
    run.epochs[2].measurements["validation"] = Measurement("validation", np.inf, np.nan, 10)
    fig = figures.loss_curves(run)
    lines = _lines(fig)
    for ln in lines.values():
        assert np.all(np.isfinite(np.asarray(ln.get_ydata(), dtype=float)))
    assert len(lines[figures.SERIES_LABELS["steps"]].get_xdata()) == len(run.steps) - 2
    assert any("non-finite step loss" in label and "(2 steps)" in label for label in lines)
    assert len(lines[figures.SERIES_LABELS["train_loss"]].get_xdata()) == 2
    figures.to_png_base64(fig)
    for r in (Run("empty"), make_run(n_epochs=0), make_run(probes=False, val=False)):
        png = base64.b64decode(figures.to_png_base64(figures.loss_curves(r)))
        assert png[:4] == b"\x89PNG"
    all_nan = make_run(n_epochs=2)
    all_nan.steps.loss[:] = np.nan
    for e in all_nan.epochs:
        e.train_loss = np.nan
        e.measurements = {k: Measurement(k, np.nan) for k in e.measurements}
    fig = figures.loss_curves(all_nan)
    assert any("no finite losses" in t.get_text() for t in fig.axes[0].texts)
    svg = figures.to_svg(figures.decomposition_bars([]))
    assert svg.lstrip().startswith("<?xml") and "http://www.w3.org" in svg  # namespace only, no external refs
    assert "xlink:href=\"http" not in svg


def test_decomposition_bars_stack_positive_up_and_negative_down():
    run = make_run(n_epochs=3)
    dec = diagnose(run).decomposition
    fig = figures.decomposition_bars(dec)
    ax = fig.axes[0]
    for d in dec:
        rects = [p for p in ax.patches if abs(p.get_x() + p.get_width() / 2 - d.epoch) < 1e-9 and p.get_height() != 0]
        top = max(p.get_y() + p.get_height() for p in rects if p.get_height() > 0)
        bottom = min(p.get_y() + p.get_height() for p in rects if p.get_height() < 0)
        # bars are contributions to R − V: the generalization gap V − C enters with a minus sign
        assert top == pytest.approx(sum(t.contribution for t in d.terms.values() if t.contribution > 0))
        assert bottom == pytest.approx(sum(t.contribution for t in d.terms.values() if t.contribution < 0))
    diamonds = _lines(fig)["reported − validation (sum of the terms)"]
    np.testing.assert_allclose(diamonds.get_ydata(), [d.reported - d.validation for d in dec])
    np.testing.assert_allclose(diamonds.get_ydata(), [d.total for d in dec], rtol=1e-9, atol=1e-12)


def test_decomposition_bars_mark_non_finite_epochs():
    run = make_run(n_epochs=3)
    run.epochs[1].measurements["validation"] = Measurement("validation", np.nan)
    fig = figures.decomposition_bars(diagnose(run).decomposition)
    marks = _lines(fig)["non-finite loss: terms not drawn"]
    assert list(marks.get_xdata()) == [1]


# --------------------------------------------------------------------------------------------- decimation
def test_decimation_keeps_planted_spikes():
    rng = np.random.default_rng(1)
    n = 1_000_000
    x = np.arange(n) / 1000.0
    y = 1.0 + 0.01 * rng.standard_normal(n)
    spike, dip = 654_321, 123_457
    y[spike], y[dip] = 50.0, -3.0
    xs, ys = decimate(x, y)
    assert xs.size <= figures.DECIMATE_THRESHOLD + 4
    assert np.all(np.diff(xs) > 0)  # original order, no duplicates
    assert ys.max() == 50.0 and xs[ys.argmax()] == x[spike]
    assert ys.min() == -3.0 and xs[ys.argmin()] == x[dip]
    assert xs[0] == x[0] and xs[-1] == x[-1]
    # every kept point is an original point
    np.testing.assert_array_equal(ys, y[np.round(xs * 1000).astype(int)])
    # short series come back unchanged, non-finite points dropped
    xs2, ys2 = decimate([0, 1, 2, 3], [1.0, np.nan, 3.0, np.inf])
    np.testing.assert_array_equal(xs2, [0, 2]) and np.testing.assert_array_equal(ys2, [1.0, 3.0])
    with pytest.raises(ValueError, match="x has 2 points but y has 3"):
        decimate([0, 1], [0, 1, 2])


def test_million_step_run_plots_decimated_with_its_spike():
    n = 1_000_000
    rng = np.random.default_rng(2)
    loss = np.exp(-np.linspace(0, 3, n)) + 0.02 * rng.standard_normal(n)
    loss[777_777] = 40.0
    epoch = np.repeat(np.arange(10), n // 10)
    run = Run("big", [Epoch(i, train_loss=float(loss[epoch == i].mean())) for i in range(10)],
              Steps.build(epoch, loss))
    line = _lines(figures.loss_curves(run))[figures.SERIES_LABELS["steps"]]
    ys = np.asarray(line.get_ydata())
    assert ys.size <= figures.DECIMATE_THRESHOLD + 4
    assert ys.max() == 40.0


def test_the_verdict_comes_first_everywhere():
    """JSON has a top-level verdict; the terminal and the HTML page open with it, before the run's metadata."""
    rep = Report(diagnose(make_run(n_epochs=8)))
    d = json.loads(rep.to_json())
    v = d["verdict"]
    assert v["code"] in ("overfitting", "converged", "still_improving", "not_learning", "unstable", "degenerate",
                         "insufficient")
    assert v["finding"] in d["report"]["codes"] and v["sentence"]
    text = rep.to_text()
    assert text.index(v["code"].replace("_", " ").upper()) < text.index("losslens report")
    html = rep.to_html()
    assert 'id="verdict"' in html and html.index('id="verdict"') < html.index('class="facts"')


def test_reports_display_inline_in_jupyter():
    rep = Report(diagnose(make_run()))
    html = rep._repr_html_()
    stamp = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")   # the minute may turn between the renders
    assert stamp.sub("", html) == stamp.sub("", rep.to_html()) and 'id="verdict"' in html


def test_long_runs_get_thinned_figures_and_tables_but_a_complete_json(tmp_path):
    """Cost and readability stay bounded: at most MAX_BARS bars per term in the decomposition figure and
    MAX_TABLE_ROWS rows per HTML table (always the first, last and best epoch); report.json keeps every epoch."""
    from matplotlib.patches import Rectangle

    from losslens.report import figures
    from losslens.report.html import MAX_TABLE_ROWS

    run = make_run(n_epochs=450, steps_per_epoch=2, probes=True)
    diag = diagnose(run)
    fig = figures.decomposition_bars(diag.decomposition)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    n_terms = len({n for d in diag.decomposition for n in d.terms})
    assert 0 < len(bars) <= 2 * figures.MAX_BARS * n_terms
    assert "evenly spaced" in ax.get_xlabel()
    short = figures.decomposition_bars(diagnose(make_run(n_epochs=6)).decomposition)
    assert "evenly spaced" not in short.axes[0].get_xlabel()
    rep = Report(diag)
    html = rep.to_html()
    assert "of 450 epochs listed" in html
    rows = html.split('id="decomposition"')[1].split("</table>")[0].count("<tr>") - 1
    assert rows <= MAX_TABLE_ROWS
    vals = [(e.get("validation").mean, e.index) for e in run.epochs]
    best = min(vals)[1]
    assert f'<td class="num">{best}</td>' in html.split('id="decomposition"')[1]
    rep.save_json(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert len(d["run"]["epochs"]) == 450 and len(d["decomposition"]) == 450
