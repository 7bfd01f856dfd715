"""`costpipe dashboard` in Debian's headless Chromium (driven by Playwright, no browser download).

Why a real browser: the figures are placed and the charts drawn by the page's JavaScript and
the Vega served by the dashboard, and the live part is a Server-Sent Events stream. Every
headline number is checked against SQL written here by hand on the lake views (the SQL that
docs/dashboard.md documents), so page and SQL cannot drift apart. One Chromium per module, one
seeded lake per module; screenshots go to test-artifacts/dashboard/ (ignored by git).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.kafka_clients import confluent_consumer, confluent_producer
from costpipe.core.settings import Settings
from costpipe.dashboard import server
from costpipe.dashboard.app import FEED
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range
from costpipe.schemas.codec import decode, encode_arrow
from costpipe.schemas.envelope import headers_for
from costpipe.schemas.records import ALERT, WINDOW_AGGREGATE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed; run scripts/ensure_chromium.sh")]


class ServerThread:
    """The dashboard on 127.0.0.1:<free port>, in its own event loop thread."""

    def __init__(self, settings: Settings, live: bool) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        settings = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
            update={"listen": "127.0.0.1:0"})})
        future = asyncio.run_coroutine_threadsafe(server.start(settings, live), self.loop)
        self.runner, self.url = future.result(30)
        self.app = self.runner.app

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lake_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A seeded lake: 20k cost records over 3 days, GPU samples, windows and alerts."""
    root = tmp_path_factory.mktemp("dashboard")
    lake = open_lake(str(root / "lake"))
    costs = sample.costs(20_000, seed=3, days=3)
    write_range(lake, "costs", costs, "costpipe.costs.v1", 0, 0, 0)
    write_range(lake, "gpu_samples", sample.gpu_samples(2_000, seed=3), "costpipe.gpu.v1",
                0, 0, 0)
    windows, alerts = sample.windows_and_alerts(costs)
    write_range(lake, "windows", windows, "costpipe.windows.v1", 0, 0, 0)
    write_range(lake, "alerts", alerts, "costpipe.alerts.v1", 0, 0, 0)
    return Settings.model_validate({"lake": {"location": str(root / "lake")},
                                    "state_dir": str(root / "state"),
                                    "cache_dir": str(Path.home() / ".cache" / "costpipe")})


@pytest.fixture(scope="module")
def lake_server(lake_settings: Settings) -> Iterator[ServerThread]:
    running = ServerThread(lake_settings, live=False)
    yield running
    running.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                  accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _open(page: Any, url: str, tab: str) -> None:
    page.goto(url)
    page.wait_for_selector(f"body[data-ready={tab}]", state="attached", timeout=20_000)


def _kpis(page: Any) -> dict[str, str]:
    return page.eval_on_selector_all(
        "#kpis .tile", "els => Object.fromEntries(els.map(e => "
        "[e.id.replace('kpi-', ''), e.querySelector('.value').textContent]))")


def _money(value: Any) -> str:
    return f"${Decimal(value or 0):,.2f}"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _expected(settings: Settings, where: str = "TRUE") -> dict[str, str]:
    """The headline numbers by hand-written SQL on the views (docs/dashboard.md)."""
    con = analytics.connect(settings)
    row = con.execute(f"""
        SELECT count(*) FILTER (WHERE record_type = 'request'),
               sum(cost),
               sum(cost) FILTER (WHERE provider_kind = 'external'),
               sum(cost) FILTER (WHERE provider_kind = 'internal'),
               sum(cost) FILTER (WHERE record_type = 'idle'),
               sum(shadow_cost) FILTER (WHERE provider_kind = 'internal')
                 - sum(cost) FILTER (WHERE provider_kind = 'internal'),
               count(*) FILTER (WHERE record_type = 'request' AND provider_kind = 'external')
                 / count(*) FILTER (WHERE record_type = 'request'),
               sum(input_tokens + output_tokens) FILTER (WHERE record_type <> 'idle'
                                                         AND provider_kind = 'external')
                 / sum(input_tokens + output_tokens) FILTER (WHERE record_type <> 'idle'),
               CAST(sum(cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE)
                 / CAST(sum(cost) FILTER (WHERE record_type <> 'idle') AS DOUBLE)
        FROM costs WHERE {where}""").fetchall()[0]
    target = settings.target_internal_share
    return {
        "requests": f"{row[0]:,}", "total-cost": _money(row[1]), "external-cost": _money(row[2]),
        "own-cost": _money(row[3]), "idle-cost": _money(row[4]), "avoided": _money(row[5]),
        "share-requests": _share(1 - row[6]), "share-tokens": _share(1 - row[7]),
        "share-cost": _share(1 - row[8]), "target": _share(target),
        "progress": _share((1 - row[6]) / target),
    }


def test_headline_numbers_equal_the_documented_sql(lake_server: ServerThread,
                                                   lake_settings: Settings, page: Any) -> None:
    started = time.perf_counter()
    _open(page, lake_server.url, "overview")
    first_paint = time.perf_counter() - started
    shown = _kpis(page)
    assert shown == _expected(lake_settings)
    # ... and the views the README documents say the same
    con = analytics.connect(lake_settings)
    summary = analytics.summary(con)
    assert shown["requests"] == f"{summary['requests']:,}"
    assert shown["total-cost"] == _money(summary["total_cost"])
    assert shown["idle-cost"] == _money(summary["idle_cost"])
    assert shown["avoided"] == _money(con.execute(
        "SELECT sum(avoided_spend) FROM avoided_spend").fetchall()[0][0])
    share = con.execute("SELECT 1 - sum(external_requests) / sum(requests), "
                        "1 - sum(external_tokens) / sum(tokens), "
                        "1 - CAST(sum(external_cost) AS DOUBLE) / CAST(sum(cost) AS DOUBLE) "
                        "FROM dependency_share").fetchall()[0]
    assert [shown["share-requests"], shown["share-tokens"], shown["share-cost"]] == [
        _share(v) for v in share]
    page.wait_for_selector("#chart-daily-share[data-drawn]", state="attached")
    page.wait_for_selector("#chart-window-share[data-drawn]", state="attached")
    windows = con.execute(  # the live table and chart show the last hour of windows
        "SELECT count(*) FROM window_share WHERE window_start >= "
        "(SELECT max(window_start) FROM window_share) - INTERVAL 1 HOUR").fetchall()[0][0]
    assert page.locator("#windows-table tbody tr").count() == min(20, windows)
    assert page.locator("#alerts-feed li").count() == con.execute(
        "SELECT count(*) FROM alerts").fetchall()[0][0]
    assert first_paint < 10, first_paint  # the 1 s figure is bench/bench_dashboard.py's
    _shot(page, "overview")


def test_filter_changes_figures_and_the_url_reproduces_them(
        lake_server: ServerThread, lake_settings: Settings, page: Any, browser: Any) -> None:
    _open(page, lake_server.url, "overview")
    before = _kpis(page)
    page.wait_for_selector("#filters [name=team] option[value=search]", state="attached")
    page.select_option("#filters [name=team]", "search")
    page.wait_for_selector("body[data-ready=overview]", state="attached")
    page.select_option("#filters [name=operation]", "chat")
    page.wait_for_selector("body[data-ready=overview]", state="attached")
    page.fill("#filters [name=from]", "2026-11-02")
    page.dispatch_event("#filters [name=from]", "change")
    page.wait_for_function("() => document.body.dataset.ready === 'overview' && "
                           "location.search.includes('from=2026-11-02')")
    filtered = _kpis(page)
    where = "coalesce(team, '(none)') = 'search' AND operation = 'chat' AND \"date\" >= " \
            "DATE '2026-11-02'"
    assert filtered == _expected(lake_settings, where)
    assert filtered["requests"] != before["requests"]
    url = page.url
    assert "team=search" in url and "operation=chat" in url and "from=2026-11-02" in url
    other = browser.new_page()
    try:
        _open(other, url, "overview")
        assert _kpis(other) == filtered
        assert other.input_value("#filters [name=team]") == "search"
    finally:
        other.close()


def test_each_tab_draws_its_charts(lake_server: ServerThread, page: Any) -> None:
    for tab, charts in (("costs", ("cost-per-request", "cost-per-1k", "breakeven")),
                        ("gpus", ("gpu-utilisation", "idle-per-gpu", "busy-idle"))):
        _open(page, f"{lake_server.url}?tab={tab}", tab)
        for chart in charts:
            page.wait_for_selector(f"#chart-{chart}[data-drawn] svg .role-mark",
                                   state="attached")
        _shot(page, tab)
    _open(page, f"{lake_server.url}?tab=health", "health")
    assert page.text_content("#health-spool") == "0.0 KiB"
    assert page.text_content("#health-last-lake") not in ("", "…", "none")
    _shot(page, "health")


def _run_sql(page: Any, sql: str) -> str:
    page.fill("#sql-input", sql)
    page.click("#sql-run")
    page.wait_for_selector("body[data-sql]", state="attached")
    return page.get_attribute("body", "data-sql")


def test_sql_console_answers_selects_and_refuses_everything_else(
        lake_server: ServerThread, lake_settings: Settings, page: Any, tmp_path: Path) -> None:
    _open(page, f"{lake_server.url}?tab=sql", "sql")
    assert _run_sql(page, "SELECT operation, count(*) AS n FROM costs GROUP BY operation "
                          "ORDER BY operation") == "ok", page.text_content("#sql-error")
    con = analytics.connect(lake_settings)
    expected = con.execute("SELECT operation, count(*) FROM costs GROUP BY operation "
                           "ORDER BY operation").fetchall()
    cells = page.eval_on_selector_all("#sql-result tbody tr", "rows => rows.map(r => "
                                      "Array.from(r.cells).map(c => c.textContent))")
    assert cells == [[op, str(n)] for op, n in expected]
    with page.expect_download() as download:
        page.click("#sql-csv")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0] == "operation,n" and len(lines) == len(expected) + 1
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n1\n")
    hostile = {
        f"COPY (SELECT * FROM costs) TO '{tmp_path / 'out.csv'}'": "refused COPY",
        f"ATTACH '{tmp_path / 'other.db'}' AS other": "refused ATTACH",
        "INSTALL httpfs": "refused LOAD",
        "CREATE TABLE stolen AS SELECT * FROM costs": "refused CREATE",
        f"SELECT * FROM read_csv('{outside}')": "the console reads the lake and nothing else",
        "SELECT * FROM read_text('/etc/passwd')": "the console reads the lake and nothing else",
        "SET enable_external_access = true": "refused SET",
    }
    for sql, message in hostile.items():
        assert _run_sql(page, sql) == "error", sql
        assert message in page.text_content("#sql-error"), (sql, page.text_content("#sql-error"))
        if sql.startswith("COPY"):
            _shot(page, "sql-refused")
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.db").exists()
    # still usable afterwards
    assert _run_sql(page, "SELECT count(*) FROM dependency_share") == "ok"
    assert page.text_content("#sql-error") == ""
    _shot(page, "sql")


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_live_window_and_alert_reach_the_open_page(kafka_bootstrap: str, tmp_path: Path,
                                                   page: Any) -> None:
    """With a worker running, a window it closes shows within 5 s; an alert too; the health
    tab reads the group's lag; on the lake the seeded run wrote, the headline numbers equal
    the SQL."""
    from tests.streams_support.harness import StreamsRun
    from tests.streams_support.workload import make_workload

    run = StreamsRun(kafka_bootstrap, tmp_path)
    group = run.env["COSTPIPE_SERVERS__WORKER_GROUP"]  # the health tab's lag is this group's
    settings = run.settings.model_copy(update={
        "state_dir": tmp_path / "dash-state",
        "servers": run.settings.servers.model_copy(update={"worker_group": group})})
    dash = ServerThread(settings, live=True)
    watcher = Consumer(confluent_consumer(settings, f"dash-test-{uuid.uuid4().hex}",
                                          **{"auto.offset.reset": "earliest"}))
    try:
        _open(page, dash.url, "overview")
        page.wait_for_selector("#live-state.on", state="attached")
        feed = dash.app[FEED]
        assert feed is not None
        deadline = time.monotonic() + 30
        while not feed.connected and time.monotonic() < deadline:
            time.sleep(0.2)  # the feed reads from the latest offsets once assigned
        assert feed.connected
        work = make_workload(run.settings, seconds=60, per_second=10)
        run.start_worker()
        run.send(run.settings.topics.requests, work.requests, "request_event")
        run.send(run.settings.topics.gpu, work.samples, "gpu_sample")
        run.push_event_time(work.end + dt.timedelta(minutes=2))
        watcher.subscribe([settings.topics.windows])
        first: dt.datetime | None = None
        deadline = time.monotonic() + 150
        while first is None and time.monotonic() < deadline:
            for msg in watcher.consume(100, 0.2):
                if msg.error() is None:
                    rows = decode(msg.value(), msg.headers(), WINDOW_AGGREGATE).batch
                    if rows.num_rows:
                        first = rows.column("window_start")[0].as_py()
                        break
        assert first is not None, run.logs()
        on_topic = time.monotonic()
        row = page.locator(f"#windows-table tr[data-window-start='{first.isoformat()}']")
        row.wait_for(state="attached", timeout=5_000)
        assert time.monotonic() - on_topic < 5
        _shot(page, "live-window")

        alert = {"alert_id": uuid.uuid4().hex[:20], "timestamp": dt.datetime.now(dt.UTC),
                 "rule": "spike", "severity": "warning", "key": "chat/openai/gpt-4o-live",
                 "window_start": first, "observed": 12.5, "threshold": 3.0,
                 "message": "cost $12.50 vs baseline $3.00 (live test)"}
        producer = Producer(confluent_producer(settings))
        producer.produce(settings.topics.alerts,
                         value=encode_arrow(pa.RecordBatch.from_pylist([alert], schema=ALERT)),
                         headers=headers_for("arrow", "alert"))
        assert producer.flush(10) == 0
        produced = time.monotonic()
        page.locator("#alerts-feed li", has_text="chat/openai/gpt-4o-live").wait_for(
            state="attached", timeout=5_000)
        assert time.monotonic() - produced < 5

        _open(page, f"{dash.url}?tab=health", "health")
        assert page.text_content("#health-lag").endswith("msgs")
        assert page.text_content("#health-dead") != "–"
        assert page.text_content("#health-last-live") >= first.isoformat()
        assert page.text_content("#health-error") == ""
        _shot(page, "live-health")

        # the lake this seeded simulated run wrote: headline numbers = the SQL on it
        sent = sum(batch.num_rows for batch in work.requests)

        def in_lake() -> int:
            return analytics.connect(settings).execute(
                "SELECT count(*) FROM costs WHERE record_type = 'request' AND timestamp < ?",
                [work.end]).fetchall()[0][0]

        deadline = time.monotonic() + 60
        while in_lake() < sent and time.monotonic() < deadline:
            time.sleep(1)
        run.stop_all()  # the lake stands still: page and SQL read the same rows
        assert in_lake() == sent, run.logs()
        day = work.start.date().isoformat()
        _open(page, f"{dash.url}?tab=overview&from={day}", "overview")  # a filter: no cache
        shown = _kpis(page)
        assert shown == _expected(settings, f"\"date\" >= DATE '{day}'")
        assert int(shown["requests"].replace(",", "")) >= sent
    finally:
        watcher.close()
        run.stop_all()
        dash.close()
