"""End to end through a real `costpipe worker` subprocess and real Kafka.

Seeded workload -> Σ closed-window cost == Σ cost records == independent expectation, to the
pico-dollar; per GPU bucket allocated + idle == GPU cost; malformed input is dead-lettered
while every good event is counted; a SIGKILLed and restarted worker gives the same totals.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from costpipe.schemas.codec import encode_json
from costpipe.schemas.envelope import JSON, headers_for
from costpipe.schemas.records import (
    COST_RECORD,
    DEAD_LETTER,
    WINDOW_AGGREGATE,
)
from tests.streams_support.harness import StreamsRun, before, dedup, total
from tests.streams_support.workload import Workload, make_workload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _tick(run: StreamsRun, work: Workload) -> None:
    """Events 2 minutes later push every watermark past the workload's windows and buckets."""
    run.push_event_time(work.end + dt.timedelta(minutes=2))


def _collect(run: StreamsRun, work: Workload, expected: Decimal):
    windows = run.read(
        run.settings.topics.windows, WINDOW_AGGREGATE,
        lambda t: total(before(dedup(t, ["window_start", "operation", "provider", "model",
                                         "revision"]), "window_start", work.end)) == expected,
        timeout=120)
    windows = before(dedup(windows, ["window_start", "operation", "provider", "model",
                                     "revision"]), "window_start", work.end)
    costs = run.read(run.settings.topics.costs, COST_RECORD,
                     lambda t: total(before(dedup(t, ["record_id"]), "timestamp",
                                            work.end)) == expected, timeout=30)
    costs = before(dedup(costs, ["record_id"]), "timestamp", work.end)
    return windows, costs


def _check_totals(work: Workload, windows: pa.Table, costs: pa.Table, run: StreamsRun) -> None:
    expected = work.expected_external + work.expected_gpu
    assert total(costs) == expected, run.logs()
    assert total(windows) == expected, run.logs()
    requests = sum(b.num_rows for b in work.requests)
    assert pc.sum(windows.column("requests")).as_py() == requests
    status = costs.column("pricing_status")
    allocated = pc.sum(pc.equal(status, "gpu_allocated")).as_py()
    assert allocated > 0.9 * pc.sum(pc.equal(costs.column("provider_kind"), "internal")).as_py() \
        - 30, "own-model requests should get GPU cost, not only corrections"
    per_bucket = costs.filter(pc.equal(costs.column("provider_kind"), "internal")).group_by(
        ["gpu_uuid", "bucket_start"]).aggregate([("cost", "sum")])
    for gpu, bucket, cost in zip(per_bucket["gpu_uuid"].to_pylist(),
                                 per_bucket["bucket_start"].to_pylist(),
                                 per_bucket["cost_sum"].to_pylist(), strict=True):
        assert cost == work.gpu_buckets[(gpu, int(bucket.timestamp()) * 1_000_000)]


def test_seeded_run_reconciles_and_dead_letters(kafka_bootstrap: str, tmp_path: Path) -> None:
    run = StreamsRun(kafka_bootstrap, tmp_path)
    work = make_workload(run.settings, seconds=120, per_second=20)
    try:
        run.start_worker()
        t = run.settings.topics
        run.send_raw(t.requests, b"\x00not arrow at all", headers_for("arrow", "request_event"))
        bad = {"request_id": "bad-1", "timestamp": work.start.isoformat(), "operation": "chat",
               "provider": "openai", "model": "gpt-4o-mini", "input_tokens": -5,
               "output_tokens": 1}
        run.send_raw(t.requests, encode_json(bad), headers_for(JSON, "request_event"))
        run.send(t.requests, work.requests, "request_event")
        run.send(t.gpu, work.samples, "gpu_sample")
        time.sleep(3)
        _tick(run, work)
        windows, costs = _collect(run, work, work.expected_external + work.expected_gpu)
        _check_totals(work, windows, costs, run)
        letters = run.read(t.deadletter, DEAD_LETTER, lambda x: x.num_rows >= 2, timeout=20)
        reasons = letters.column("reason").to_pylist()
        assert any("truncated Arrow stream" in r for r in reasons), reasons
        assert any("input_tokens" in r for r in reasons), reasons
        assert json.loads(letters.filter(pc.equal(letters.column("field"), "input_tokens"))
                          .column("original")[0].as_py())["request_id"] == "bad-1"
    finally:
        run.stop_all()


def test_sigkill_and_restart_gives_same_totals(kafka_bootstrap: str, tmp_path: Path) -> None:
    # Horizon 0: merger state is evicted mid-run, so the restart recovers tombstones and the
    # closed_through/applied markers, and late partials take the evicted-window path.
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_WINDOWS__CORRECTION_HORIZON_SECONDS=0)
    work = make_workload(run.settings, seed=11, seconds=120, per_second=20, batch_size=200)
    t = run.settings.topics
    try:
        first = run.start_worker()
        half = len(work.requests) // 2
        run.send(t.requests, work.requests[:half], "request_event")
        run.send(t.gpu, work.samples[: len(work.samples) // 2], "gpu_sample")
        run.read(t.costs, COST_RECORD, lambda x: x.num_rows > 500, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        run.send(t.requests, work.requests[half:], "request_event")
        run.send(t.gpu, work.samples[len(work.samples) // 2:], "gpu_sample")
        run.start_worker()
        time.sleep(3)
        _tick(run, work)
        windows, costs = _collect(run, work, work.expected_external + work.expected_gpu)
        _check_totals(work, windows, costs, run)
    finally:
        run.stop_all()
