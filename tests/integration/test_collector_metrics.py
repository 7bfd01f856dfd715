"""Every collector metric the README documents moves, read from a served /metrics endpoint.

Calls go through the metering proxy (real HTTP, the real `openai` SDK, a local OpenAI-wire
stub) into the shared producer while the broker is unreachable (spooled, pending, spool bytes;
one event it cannot encode is kept as failed), then a producer on the real broker replays the
spool and an OTLP export goes through the receiver. The README's collector table is generated
from the same catalogue, so a new family without a check here fails.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from costpipe.collectors.otlp import OtlpReceiver
from costpipe.collectors.producer import BatchingProducer
from costpipe.core.metrics import CATALOGUE, start_metrics_server
from tests.integration.collectors_core.helpers import read_topic, settings_for, unique_topic
from tests.openai_stub import StubUpstream, start_site
from tests.otlp_payloads import GENAI, export_request, span
from tests.proxy_harness import Servers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

COLLECTOR_FAMILIES = {doc.name for doc in CATALOGUE if doc.process == "collectors"}
GAUGES = {"costpipe_producer_queue_depth"}  # 0 whenever the sender has caught up

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post_otlp(settings, sink) -> int:
    body = export_request([span(GENAI)]).SerializeToString()

    async def go() -> int:
        runner, url = await start_site(OtlpReceiver(settings, sink).app())
        try:
            async with aiohttp.ClientSession() as session, session.post(
                    url + "/v1/traces", data=body,
                    headers={"Content-Type": "application/x-protobuf"}) as reply:
                return reply.status
        finally:
            await runner.cleanup()
    return asyncio.run(go())


def test_every_documented_collector_metric_moves(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique_topic()
    spool = tmp_path / "spool"
    down = settings_for(f"127.0.0.1:{_closed_port()}", tmp_path)
    port = start_metrics_server(down, 0)
    before = _scrape(port)

    producer = BatchingProducer(down, topic, spool_dir=spool, delivery_timeout_s=1.0,
                                linger_s=0.05)
    with Servers(StubUpstream(), producer, provider="openai") as running:
        client = running.client()
        for _ in range(3):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                max_tokens=2)
    producer.emit({"request_id": "bad", "input_tokens": "many"})  # cannot be encoded
    producer.close(timeout=3.0)
    while_down = _scrape(port)

    up = settings_for(kafka_bootstrap, tmp_path)
    replaying = BatchingProducer(up, topic, spool_dir=spool)
    assert _post_otlp(up, replaying) == 200
    replaying.close(timeout=20.0)
    after = _scrape(port)
    assert read_topic(up, topic, 4).num_rows == 4  # 3 proxied calls + 1 span, nothing lost

    def moved(samples: Samples, name: str, **labels: str) -> float:
        def total(s: Samples) -> float:
            return sum(v for (n, lab), v in s.items() if n == name
                       and all(dict(lab).get(k) == x for k, x in labels.items()))
        return total(samples) - total(before)

    for name in sorted(COLLECTOR_FAMILIES):
        assert any(n == name for n, _ in after), f"{name} is documented but not exported"
    assert moved(after, "costpipe_proxy_requests_total") == 3
    assert moved(after, "costpipe_otlp_spans_total", outcome="genai") == 1
    assert moved(while_down, "costpipe_producer_events_spooled_total", topic=topic) == 3
    assert moved(while_down, "costpipe_producer_events_failed_total", topic=topic) == 1
    assert moved(while_down, "costpipe_producer_spool_pending_events", topic=topic) == 3
    assert moved(while_down, "costpipe_producer_spool_pending_records", topic=topic) >= 1
    assert moved(while_down, "costpipe_producer_spool_bytes", topic=topic) > 0
    # new events queue behind the spool, so the span is replayed too
    assert moved(after, "costpipe_producer_events_replayed_total", topic=topic) == 4
    assert moved(after, "costpipe_producer_events_sent_total", topic=topic) == 4
    assert moved(after, "costpipe_producer_spool_pending_events", topic=topic) == 0
    assert any(n == "costpipe_producer_queue_depth" and dict(lab).get("topic") == topic
               for n, lab in after)
    checked = {"costpipe_proxy_requests_total", "costpipe_otlp_spans_total",
               "costpipe_producer_events_spooled_total", "costpipe_producer_events_failed_total",
               "costpipe_producer_spool_pending_events", "costpipe_producer_spool_pending_records",
               "costpipe_producer_spool_bytes", "costpipe_producer_events_replayed_total",
               "costpipe_producer_events_sent_total", *GAUGES}
    assert checked == COLLECTOR_FAMILIES, "a documented collector metric has no check here"
