"""Workers that work together: two started the same way share the partitions; one SIGKILLed in
the middle of a run changes no total and fires no alert twice; windows close when traffic stops.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pytest
from aiohttp import web

from costpipe import analytics
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.producer import BatchingProducer
from costpipe.schemas.records import REQUEST_EVENT
from tests.openai_stub import start_site
from tests.reliability.support import lake_costs, wait_until
from tests.streams_support.harness import StreamsRun
from tests.streams_support.workload import make_workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]


class Webhook:
    """A local Slack-compatible webhook that records every post."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _post(self, request: web.Request) -> web.Response:
        self.posts.append(await request.json())
        return web.Response(text="ok")

    def __enter__(self) -> str:
        self.thread.start()
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self.runner, url = asyncio.run_coroutine_threadsafe(start_site(app), self.loop).result(10)
        return url + "/hook"

    def __exit__(self, *_: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_two_workers_from_the_same_folder_with_the_readme_command_both_run(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    run = StreamsRun(kafka_bootstrap, tmp_path)
    env = {k: v for k, v in run.env.items()
           if k not in ("COSTPIPE_SERVERS__WORKER_WEB_PORT", "COSTPIPE_SERVERS__METRICS_PORT")}
    workers = [subprocess.Popen([sys.executable, "-m", "costpipe.cli", "worker"], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for _ in range(2)]
    try:
        time.sleep(20)
        alive = [w.poll() is None for w in workers]
    finally:
        for worker in workers:
            worker.terminate()
        outputs = [w.communicate(timeout=30)[0].decode(errors="replace") for w in workers]
    assert alive == [True, True], outputs
    second = outputs[1] + outputs[0]  # whichever started second moved its port and folder
    assert re.search(r"web page on port \d+ \(port \d+ is in use or kept", second), outputs
    assert re.search(r"state/worker is used by another worker; using .*worker-2", second), \
        outputs


def test_sigkill_of_one_of_two_workers_changes_nothing(kafka_bootstrap: str,
                                                       tmp_path: Path) -> None:
    webhook = Webhook()
    with webhook as hook:
        run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1",
                         COSTPIPE_TOPICS__PARTITIONS="4",  # 4 requests partitions fan out
                         COSTPIPE_TOPICS__STAGE_PARTITIONS="2",  # to 2 stage partitions
                         COSTPIPE_ALERTS__WEBHOOK_URL=hook,
                         COSTPIPE_ALERTS__WARMUP_WINDOWS="2",
                         COSTPIPE_ALERTS__SPIKE_MIN_DOLLARS="0.01",
                         COSTPIPE_ALERTS__COOLDOWN_SECONDS="0",
                         COSTPIPE_WINDOWS__SECONDS="10",
                         COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS="20")
        work = make_workload(run.settings, seconds=180, per_second=20, batch_size=200,
                             spike=(100, 110, 8))
        t = run.settings.topics
        lake = tmp_path / "lake"
        try:
            first = run.start_worker()
            run.start_worker()
            time.sleep(8)
            half = len(work.requests) // 2
            run.send(t.requests, work.requests[:half], "request_event")
            run.send(t.gpu, work.samples, "gpu_sample")
            time.sleep(4)
            first.send_signal(signal.SIGKILL)  # mid-run, with work in flight
            first.wait(10)
            run.send(t.requests, work.requests[half:], "request_event")
            end = work.end + dt.timedelta(minutes=2)

            def drained() -> bool:
                send_watermark(run.settings, end)
                return lake_costs(lake).rows >= sum(b.num_rows for b in work.requests)

            assert wait_until(drained, 240, every=3.0), run.logs()
            expected = work.expected_external + work.expected_gpu
            wait_until(lambda: _windows_cost(lake) == expected, 60, every=2.0)
            time.sleep(5)  # the webhook and the alert sink
            posts = list(webhook.posts)
        finally:
            run.stop_all()
    costs = lake_costs(lake)
    idle = lake_costs(lake, "idle")
    requests = sum(b.num_rows for b in work.requests)
    assert (costs.rows, costs.distinct_ids) == (requests, requests)
    assert costs.input_tokens == sum(pc.sum(b.column("input_tokens")).as_py()
                                     for b in work.requests)
    assert costs.cost + idle.cost == expected
    assert _windows_cost(lake) == expected  # Σ windows = Σ costs
    per_bucket = dict(((g, int(b.timestamp()) * 1_000_000), c) for g, b, c in duckdb.sql(
        f"SELECT gpu_uuid, bucket_start, sum(cost) FROM read_parquet('{lake}/costs/**/*.parquet')"
        " WHERE provider_kind = 'internal' GROUP BY ALL").fetchall())
    assert per_bucket == work.gpu_buckets  # allocated + idle = GPU cost, every bucket
    ids = [r[0] for r in duckdb.sql(
        f"SELECT alert_id FROM read_parquet('{lake}/alerts/**/*.parquet')").fetchall()]
    assert ids, "the spike should have fired"
    assert max(Counter(ids).values()) == 1, "an alert id twice in the lake"
    texts = Counter(p["text"] for p in posts)
    assert texts and max(texts.values()) == 1, f"an alert posted twice: {texts}"


def _windows_cost(lake: Path) -> Any:
    con = analytics.connect(location=str(lake))
    try:
        return con.execute("SELECT coalesce(sum(cost), 0) FROM windows").fetchall()[0][0]
    finally:
        con.close()


def test_the_last_window_closes_when_traffic_stops(kafka_bootstrap: str, tmp_path: Path) -> None:
    """No heartbeat by hand: the collector's producer sends them while idle."""
    window, lateness = 5, 5
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="2",
                     COSTPIPE_WINDOWS__SECONDS=str(window),
                     COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS=str(lateness),
                     COSTPIPE_GPU__BUCKET_SECONDS="5", COSTPIPE_GPU__ALLOWED_LATENESS_SECONDS="0")
    settings = run.settings.model_copy(deep=True)
    settings.collectors.heartbeat_seconds = 1.0
    producer = BatchingProducer(settings, settings.topics.requests, REQUEST_EVENT,
                                "request_event", metrics=False, spool_dir=tmp_path / "spool")
    lake = tmp_path / "lake"
    try:
        run.start_worker()
        time.sleep(10)
        last = None
        for i in range(30):
            last = dt.datetime.now(dt.UTC)
            producer.emit({"request_id": f"quiet-{i}", "timestamp": last, "operation": "chat",
                           "provider": "openai", "provider_kind": "external",
                           "model": "gpt-4o-mini", "input_tokens": 10, "output_tokens": 2,
                           "cache_read_tokens": 0, "cache_write_tokens": 0, "status": "ok"})
            time.sleep(0.1)
        stopped = time.monotonic()
        last_window = (int(last.timestamp()) // window) * window

        def closed() -> bool:
            con = analytics.connect(location=str(lake))
            try:
                return con.execute("SELECT count(*) FROM windows WHERE epoch(window_start) = ?",
                                   [last_window]).fetchall()[0][0] > 0
            finally:
                con.close()

        assert wait_until(closed, 60, every=0.5), run.logs()
        took = time.monotonic() - stopped
    finally:
        producer.close(timeout=5.0)
        run.stop_all()
    print(f"last window in the lake {took:.1f} s after the traffic stopped")
    assert took <= window + lateness + 10, took

