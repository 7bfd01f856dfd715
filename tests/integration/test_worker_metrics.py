"""A real `costpipe worker` serves its pipeline health metrics over HTTP with plausible values.

Seeded hybrid workload in, then scrape /metrics: the per-stage row counters match the rows sent,
the lake counts files/bytes/rows per table, consumer lag is reported per owned partition and
drains to 0, and a bad message shows up as a dead letter.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from costpipe.schemas.envelope import headers_for
from tests.streams_support.harness import StreamsRun, free_port
from tests.streams_support.workload import make_workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(port: int, check: Callable[[Samples], bool], timeout: float, logs: Callable[[], str]
             ) -> Samples:
    deadline = time.monotonic() + timeout
    samples: Samples = {}
    while time.monotonic() < deadline:
        try:
            samples = scrape(port)
        except OSError:
            samples = {}
        if samples and check(samples):
            return samples
        time.sleep(1)
    pytest.fail(f"metrics never satisfied the check; last scrape had {len(samples)} samples\n"
                + "\n".join(f"{k}={v}" for k, v in samples.items() if k[0].startswith("costpipe"))
                + "\n" + logs())


def test_worker_serves_pipeline_health(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_SERVERS__METRICS_PORT=port,
                     COSTPIPE_LAKE__FLUSH_SECONDS=1)
    work = make_workload(run.settings, seconds=30, per_second=10, batch_size=100)
    requests = sum(b.num_rows for b in work.requests)
    samples_sent = sum(b.num_rows for b in work.samples)
    t = run.settings.topics
    stage = "costpipe_stage_events_total"
    try:
        run.start_worker()
        run.send(t.requests, work.requests, "request_event")
        run.send(t.gpu, work.samples, "gpu_sample")
        run.send_raw(t.requests, b"\x00not arrow", headers_for("arrow", "request_event"))

        def done(s: Samples) -> bool:
            lake_gpu = value(s, "costpipe_lake_rows_total", table="gpu_samples") or 0
            lags = [v for (name, labels), v in s.items() if name == "costpipe_consumer_lag"
                    and dict(labels)["topic"] == t.requests]
            return (value(s, stage, stage="costing", direction="in") == requests
                    and lake_gpu == samples_sent and len(lags) == 2 and not any(lags))

        s = wait_for(port, done, 120, run.logs)
        assert value(s, stage, stage="costing", direction="out") == requests
        assert value(s, stage, stage="gpu_forward", direction="in") == samples_sent
        assert value(s, stage, stage="gpu_forward", direction="out") == samples_sent
        assert value(s, stage, stage="allocator", direction="in") >= samples_sent
        assert value(s, stage, stage="merger", direction="in") > 0
        for name in ("alerting", "lake_sink"):  # every stage is there from the start
            assert value(s, stage, stage=name, direction="in") is not None
        assert value(s, stage, stage="lake_sink", direction="out") >= samples_sent
        assert value(s, "costpipe_lake_files_total", table="gpu_samples") >= 1
        assert value(s, "costpipe_lake_bytes_total", table="gpu_samples") > 1000
        assert value(s, "costpipe_lake_rows_total", table="costs") > 0
        assert value(s, "costpipe_consumer_lag", topic=t.gpu, partition="0") is not None
        lag_topics = {dict(labels)["topic"] for name, labels in s
                      if name == "costpipe_consumer_lag"}
        assert not any(name.endswith("-changelog") for name in lag_topics), lag_topics
        assert value(s, "costpipe_dead_letters_total", source_topic=t.requests,
                     field="<message>") == 1, [k for k in s if "dead" in k[0]]
    finally:
        run.stop_all()
