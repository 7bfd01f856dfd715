"""Broker down for 30 s while an application keeps calling the SDK's `track` in a thread.

The instrumented application never blocks (every `track` block returns in well under a few
milliseconds, before, during and after the outage), and every event it recorded arrives once
the broker is back: the producer spools to disk during the outage and replays in order.

Own broker on ports 29098/29099 with state under tmp_path, so the session broker and other
engineers' tests are never touched (the simulator outage test uses 29096/29097).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from costpipe import broker
from costpipe.collectors import sdk
from costpipe.collectors.producer import BatchingProducer
from costpipe.core.settings import Settings
from tests.integration.collectors_core.helpers import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(300)]

OUTAGE_S = 30.0
CALLS_PER_S = 1_000


def test_sdk_keeps_running_and_loses_nothing_through_30s_outage(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "state_dir": tmp_path / "state",
        "kafka": {"local_port": 29098, "local_controller_port": 29099},
        "topics": {"partitions": 2},
    })
    broker.ensure_running(settings)
    producer = BatchingProducer(settings, settings.topics.requests, metrics=False,
                                delivery_timeout_s=3.0)
    sdk.configure(settings, producer, tags={"team": "reliability"})
    stop = threading.Event()
    latencies: list[float] = []
    during: list[int] = []

    def application() -> None:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            with sdk.track("chat", "openai", "gpt-4o-mini", feature="outage") as t:
                t.usage(input_tokens=100 + i % 7, output_tokens=20)
            latencies.append(time.perf_counter() - t0)
            i += 1
            if i % 100 == 0:
                time.sleep(100 / CALLS_PER_S)

    app = threading.Thread(target=application, daemon=True)
    try:
        app.start()
        time.sleep(4.0)
        broker.stop(settings)
        down_at = len(latencies)
        time.sleep(OUTAGE_S)
        during.append(len(latencies) - down_at)
        broker.ensure_running(settings)
        time.sleep(4.0)
        stop.set()
        app.join(10)
        emitted = len(latencies)
        producer.close(timeout=90.0)
        stats = producer.stats
        got = read_topic(settings, settings.topics.requests, emitted, timeout=90.0)
    finally:
        stop.set()
        sdk.configure()
        broker.stop(settings)
    ordered = sorted(latencies)
    p999, worst = ordered[int(len(ordered) * 0.999)], ordered[-1]
    distinct = pc.count_distinct(got.column("request_id")).as_py()
    print(f"\nSDK outage {OUTAGE_S:.0f} s: emitted {emitted} ({during[0]} while down), "
          f"spooled {stats['spooled']}, replayed {stats['replayed']}, arrived distinct "
          f"{distinct}, lost {emitted - distinct}, emit p99.9 {p999 * 1e3:.3f} ms, "
          f"max {worst * 1e3:.2f} ms")
    assert during[0] > OUTAGE_S * CALLS_PER_S * 0.5, "the application stalled during the outage"
    assert stats["spooled"] > 0 and stats["spool_pending"] == 0, stats
    assert distinct == emitted, f"lost {emitted - distinct} of {emitted}"
    assert pc.sum(got.column("output_tokens")).as_py() >= 20 * emitted
    assert worst < 0.25, f"a track() block took {worst * 1e3:.1f} ms"
    assert p999 < 0.01
