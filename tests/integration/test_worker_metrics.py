"""Every worker metric the README documents exists on a real `costpipe worker` and moves.

A seeded hybrid workload plus one of each thing a deployment meets (a duplicate request, a GPU
sample sent twice, an unknown model, an own-model request with no GPU samples, one that comes
after its bucket closed, a budget overrun, a bad message) goes in; /metrics is scraped until
every documented family has moved. The three families that only a failure moves (a stale ack
in a rebalance, a commit hole, a watchdog restart) are exported from the start and moved by the
tests named in FAILURE_ONLY. The README's tables are generated from the same catalogue, so a
new family without a test here fails.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families

from costpipe.core.metrics import CATALOGUE
from costpipe.schemas.envelope import headers_for
from costpipe.schemas.records import REQUEST_EVENT
from tests.streams_support.harness import StreamsRun, free_port
from tests.streams_support.workload import make_workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

WORKER_FAMILIES = {doc.name for doc in CATALOGUE if doc.process == "worker"}
FAILURE_ONLY = {
    "costpipe_stale_acks_refused_total": "tests/unit/test_faust_guards.py",
    "costpipe_unprocessed_rewinds_total": "tests/unit/test_faust_guards.py",
    "costpipe_worker_restarts_total": "tests/unit/test_watchdog.py",
}
GAUGES = {"costpipe_consumer_lag", "costpipe_worker_progress_age_seconds",
          "costpipe_lake_locations"}


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def family_total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def present(samples: Samples, name: str) -> bool:
    return any(n == name for n, _ in samples)


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


def _request(rid: str, when: dt.datetime, provider: str, model: str,
             gpu: str | None = None) -> pa.RecordBatch:
    kind = "internal" if gpu else "external"
    return pa.RecordBatch.from_pylist([{
        "request_id": rid, "timestamp": when, "operation": "chat", "provider": provider,
        "provider_kind": kind, "model": model, "input_tokens": 10, "output_tokens": 5,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "status": "ok", "gpu_uuid": gpu}],
        schema=REQUEST_EVENT)


def test_every_documented_worker_metric_moves(kafka_bootstrap: str, tmp_path: Path) -> None:
    assert set(FAILURE_ONLY) <= WORKER_FAMILIES
    for test_file in FAILURE_ONLY.values():
        assert Path(test_file).exists(), test_file
    port = free_port()
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_SERVERS__METRICS_PORT=port,
                     COSTPIPE_LAKE__FLUSH_SECONDS=1,
                     COSTPIPE_ALERTS__EXTERNAL_BUDGET_PER_HOUR="0.01")
    work = make_workload(run.settings, seconds=30, per_second=10, batch_size=100)
    requests = sum(b.num_rows for b in work.requests)
    samples_sent = sum(b.num_rows for b in work.samples)
    t = run.settings.topics
    stage = "costpipe_stage_events_total"
    try:
        run.start_worker()
        # first, so its bucket is still open: an own-model request on a GPU that has no
        # samples for that time
        before_samples = work.start - dt.timedelta(seconds=30)
        run.send(t.requests, [_request("no-samples", before_samples, "own-vllm", "llama-3.1-8b",
                                       gpu="GPU-a")], "request_event")
        run.send(t.requests, work.requests, "request_event")
        run.send(t.gpu, work.samples, "gpu_sample")
        run.send(t.requests, work.requests[:1], "request_event")  # a retried request
        run.send(t.gpu, work.samples[:1], "gpu_sample")  # a sampler that re-sent a batch
        run.send(t.requests, [_request("unknown-model", work.start, "openai", "no-such-model")],
                 "request_event")
        # speech billed per character, sent without characters: unpriced_unit, never $0
        run.send(t.requests, [_request("no-characters", work.start, "openai", "tts-1")],
                 "request_event")
        run.send_raw(t.requests, b"\x00not arrow", headers_for("arrow", "request_event"))
        time.sleep(2)
        run.push_event_time(work.end + dt.timedelta(minutes=2))

        def closed(s: Samples) -> bool:
            lake_gpu = value(s, "costpipe_lake_rows_total", table="gpu_samples") or 0
            return (family_total(s, "costpipe_alerts_total") > 0
                    and family_total(s, "costpipe_gpu_unattributed_requests_total") > 0
                    and lake_gpu >= samples_sent)

        wait_for(port, closed, 150, run.logs)
        # an own-model request for a bucket that has closed: a correction, counted as late
        run.send(t.requests, [_request("late", work.start, "own-vllm", "llama-3.1-8b",
                                       gpu="GPU-a")], "request_event")

        def moved(s: Samples) -> bool:
            lags = [v for (name, labels), v in s.items() if name == "costpipe_consumer_lag"
                    and dict(labels)["topic"] == t.requests]
            return (family_total(s, "costpipe_late_internal_requests_total") > 0
                    and len(lags) == 2 and not any(lags))

        s = wait_for(port, moved, 90, run.logs)
        for name in sorted(WORKER_FAMILIES):
            assert present(s, name), f"{name} is documented but not exported"
            if name in GAUGES or name in FAILURE_ONLY:
                continue
            assert family_total(s, name) > 0, f"{name} never moved"
        assert value(s, "costpipe_lake_locations") == 1
        assert value(s, "costpipe_worker_restarts_total", reason="stall") == 0
        assert value(s, "costpipe_duplicate_requests_total") == work.requests[0].num_rows
        assert value(s, "costpipe_lake_duplicate_rows_total", table="gpu_samples") \
            == work.samples[0].num_rows
        assert value(s, "costpipe_unpriced_requests_total", provider="openai",
                     model="no-such-model") == 1
        assert value(s, "costpipe_unpriced_unit_requests_total", provider="openai",
                     model="tts-1", unit="input_characters") == 1
        assert value(s, "costpipe_late_internal_requests_total") == 1
        assert value(s, "costpipe_alerts_total", rule="budget_hour") is not None
        # + the retried batch, the unknown model, the speech without characters, the request
        # with no samples, the late one and one event-time push per requests partition
        received = requests + work.requests[0].num_rows + 4 + t.partitions
        assert value(s, stage, stage="costing", direction="in") == received
        assert value(s, stage, stage="gpu_forward", direction="in") \
            == samples_sent + work.samples[0].num_rows + 2
        for name in ("allocator", "merger", "alerting", "lake_sink"):
            assert (value(s, stage, stage=name, direction="in") or 0) > 0, name
        assert value(s, "costpipe_lake_files_total", table="gpu_samples") >= 1
        assert value(s, "costpipe_lake_bytes_total", table="gpu_samples") > 1000
        lag_topics = {dict(labels)["topic"] for name, labels in s
                      if name == "costpipe_consumer_lag"}
        assert not any(name.endswith("-changelog") for name in lag_topics), lag_topics
        assert value(s, "costpipe_dead_letters_total", source_topic=t.requests,
                     field="<message>") == 1, [k for k in s if "dead" in k[0]]
    finally:
        run.stop_all()
