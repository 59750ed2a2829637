"""The HTML report in a real browser (issue 16, item 7): headless Chromium opens the self-contained page from
disk (no network), draws both interactive figures, logs no console error, and shows the default series.

Chromium comes from the system (Debian's ``chromium`` package; ``.ci/run`` installs it). Without it the test is
skipped, except under CI (``CI=true``), where a missing browser is a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_report import make_run  # tests/ is on sys.path (pytest rootdir)

from losslens.report import Report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI=true but no Chromium found (apt-get install chromium): the report test needs a browser")
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


def _open(html_path, *extra: str) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the page's console messages."""
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000",
           "--host-resolver-rules=MAP * ~NOTFOUND",   # offline: any attempt to fetch would log an error
           *extra, f"file://{html_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    return res.stdout, console


def test_the_report_draws_its_interactive_figures_in_chromium(tmp_path):
    run = make_run(n_epochs=12, steps_per_epoch=30)
    run.steps.loss[5] = 80.0                                # a spike must not stretch the default axis
    path = Report.from_run(run).save_html(tmp_path / "report.html")
    dom, console = _open(path, "--dump-dom")
    assert console == [], console
    for fig in ("losslens-loss-curves", "losslens-decomposition"):
        block = dom.split(f'id="{fig}"', 1)[1].split("</figure>", 1)[0]
        assert block.count('class="main-svg"') >= 2, fig          # plotly drew the figure
        assert "legendtoggle" in block or 'class="legend"' in block
    curves = dom.split('id="losslens-loss-curves"', 1)[1].split("</figure>", 1)[0]
    # the default series are drawn, the rest are one click away (legend entries drawn faded)
    assert len(re.findall(r'class="trace scatter', curves)) >= 3
    # the y axis follows the default series (R, C, V: about 0.3 to 2.3), not the hidden 80.0 spike
    ticks = [float(t.replace("−", "-")) for t in re.findall(r'class="ytick"><text[^>]*>([−\d.]+)<', curves)]
    assert ticks and max(ticks) < 10, ticks


def test_a_screenshot_of_the_report_is_not_blank(tmp_path):
    path = Report.from_run(make_run(n_epochs=8)).save_html(tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    _, console = _open(path, f"--screenshot={shot}", "--window-size=1200,2400")
    assert console == [], console
    assert shot.exists() and shot.stat().st_size > 20_000
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000
    # not one flat colour: the page has text and drawn figures in it
    assert float(np.std(img[..., :3])) > 0.05


def test_the_overview_of_several_logs_overlays_their_curves_in_chromium(tmp_path):
    from click.testing import CliRunner

    from losslens.cli import main

    e = np.arange(20)
    for k, name in enumerate(("a", "b", "c")):
        (tmp_path / f"{name}.csv").write_text("epoch,loss,val_loss\n" + "".join(
            f"{i},{1 / (1 + i / (3 + k)):.5f},{0.6 + 0.01 * (i - 6 - k) ** 2 / 6:.5f}\n" for i in e))
    res = CliRunner().invoke(main, ["diagnose", *(str(tmp_path / f"{n}.csv") for n in "abc"), "--out",
                                    str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    page = tmp_path / "out" / "overview.html"
    dom, console = _open(page, "--dump-dom")
    assert console == [], console
    block = dom.split('id="losslens-overview"', 1)[1].split("</figure>", 1)[0]
    assert block.count('class="main-svg"') >= 2
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', block)
    assert {t.split(":")[0].split("/")[-1] for t in legend} >= {"a.csv", "b.csv", "c.csv"}
    # the table answers first: each run's headline verdict is a word, not a list of finding codes
    assert "regime." not in dom.split("<h2>Runs</h2>", 1)[1].split("</table>", 1)[0]
