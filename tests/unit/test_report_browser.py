"""The HTML report renders offline in headless Chromium and every chart draws."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from costpipe.analytics import sample
from costpipe.cli import app
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHART_IDS = ("dependency-share", "cost-per-operation", "avoided-spend", "gpu-utilisation",
             "idle-cost")


def _dump_dom(path, tmp_path) -> str:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=90, check=True).stdout


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium not installed; run scripts/ensure_chromium.sh")
def test_report_charts_draw_in_chromium(tmp_path):
    lake = open_lake(str(tmp_path / "lake"))
    costs = sample.costs(20_000, days=3)
    write_range(lake, "costs", costs, "costpipe.costs.v1", 0, 0, 0)
    write_range(lake, "gpu_samples", sample.gpu_samples(2_000), "costpipe.gpu.v1", 0, 0, 0)
    _windows, alerts = sample.windows_and_alerts(costs)
    write_range(lake, "alerts", alerts, "costpipe.alerts.v1", 0, 0, 0)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--lake", lake.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    # nothing fetched: works offline (the SVG namespace names are names, not fetched URLs)
    for namespace in ("http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"):
        text = text.replace(namespace, "")
    assert "http://" not in text and "https://" not in text
    assert "<script src" not in text
    dom = _dump_dom(out, tmp_path)
    assert 'data-charts-drawn="5"' in dom and 'data-charts-total="5"' in dom
    for chart_id in CHART_IDS:
        match = re.search(rf'<figure[^>]*id="{chart_id}"[^>]*>', dom)
        assert match, chart_id
        drawn = re.search(r'data-drawn="(\d+)"', match.group(0))
        assert drawn and int(drawn.group(1)) > 0, chart_id
    assert dom.count("cost spike on") == alerts.num_rows


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium not installed; run scripts/ensure_chromium.sh")
def test_report_on_empty_lake_says_so(tmp_path):
    out = tmp_path / "empty.html"
    result = CliRunner().invoke(app, ["report", "--lake", str(tmp_path / "none"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    dom = _dump_dom(out, tmp_path)
    assert 'data-charts-total="0"' in dom and "No data in the lake yet" in dom


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None,
                    reason="chromium not installed; run scripts/ensure_chromium.sh")
def test_short_run_gets_fine_time_buckets(tmp_path):
    """A few minutes of data (a `make run` demo) draws a line, not one daily dot."""
    lake = open_lake(str(tmp_path / "lake"))
    minutes = 5 / (24 * 60)
    write_range(lake, "costs", sample.costs(5_000, days=minutes), "costpipe.costs.v1", 0, 0, 0)
    write_range(lake, "gpu_samples", sample.gpu_samples(500, days=minutes), "costpipe.gpu.v1",
                0, 0, 0)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--lake", lake.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    dom = _dump_dom(out, tmp_path)
    for chart_id, series in (("dependency-share", 2), ("gpu-utilisation", 1)):
        figure = re.search(rf'<figure[^>]*id="{chart_id}".*?</figure>', dom, re.S)
        assert figure, chart_id
        assert 'data-drawn="' in figure.group(0)
        # the line's points: one symbol path per bucket and series (Vega's SVG renderer)
        symbols = re.search(r'<g class="mark-symbol role-mark[^"]*"[^>]*>(.*?)</g>',
                            figure.group(0), re.S)
        assert symbols, chart_id
        points = symbols.group(1).count("<path") // series
        assert 10 <= points <= 40, (chart_id, points)  # 10-second buckets over 5 minutes
    assert "per 10 s" in dom
