"""Input that used to stop or skew the pipeline, against a running worker on the real broker.

- a GPU sample with a NaN reading (the allocator raised and the worker restarted forever);
- a GPU host whose clock runs 4 min ahead (it closed every GPU bucket early), and one 10 min
  ahead (refused);
- garbage in the worker's internal topics (a stage fails on it: retried, then dead-lettered);
- request ids sent again: into another partition, later into the same one, with a timestamp
  2 h earlier, the same envelope again (a spool replay), and after a worker SIGKILL.
Each must leave every other number exact and the worker running.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from costpipe.collectors.heartbeat import send_watermark
from costpipe.schemas.codec import encode_arrow, encode_json
from costpipe.schemas.envelope import (
    ARROW,
    JSON,
    OFFSET_HEADER,
    SOURCE_HEADER,
    WATERMARK_HEADER,
    headers_for,
    home_partitions,
)
from costpipe.schemas.records import COST_RECORD, DEAD_LETTER, GPU_SAMPLE, REQUEST_EVENT
from tests.reliability.support import lake_costs, wait_until
from tests.streams_support.harness import StreamsRun, free_port
from tests.streams_support.workload import make_workload

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(420)]


def _sample(gpu: str, when: dt.datetime, **values: Any) -> pa.RecordBatch:
    row = {"timestamp": when, "host": "skewed-host", "gpu_uuid": gpu, "gpu_index": 0,
           "gpu_name": "H100", "utilization_pct": 50.0, "power_w": 300.0, "interval_s": 1.0,
           **values}
    return pa.RecordBatch.from_pylist([row], schema=GPU_SAMPLE)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_poison_skew_and_nan_leave_everything_else_exact(kafka_bootstrap: str,
                                                          tmp_path: Path) -> None:
    metrics = free_port()
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1",
                     COSTPIPE_SERVERS__METRICS_PORT=metrics)
    work = make_workload(run.settings, seconds=120, per_second=20)
    t = run.settings.topics
    now = dt.datetime.now(dt.UTC)
    try:
        worker = run.start_worker()
        run.send(t.gpu, [_sample("GPU-a", work.start + dt.timedelta(seconds=5),
                                 utilization_pct=float("nan"))], "gpu_sample")
        run.send(t.gpu, [_sample("GPU-skew", now + dt.timedelta(minutes=4))], "gpu_sample")
        run.send(t.gpu, [_sample("GPU-far", now + dt.timedelta(minutes=10))], "gpu_sample")
        for topic, record in ((t.gpuwork, "pending_cost"), (t.partials, "partial")):
            run.send_raw(topic, b"\x00poison: not an Arrow stream",
                         [*headers_for(ARROW, record), (SOURCE_HEADER, b"x.v1:0:7"),
                          (OFFSET_HEADER, b"7"), (WATERMARK_HEADER, b"1")])
        run.send(t.requests, work.requests, "request_event")
        run.send(t.gpu, work.samples, "gpu_sample")
        time.sleep(3)
        end_us = int((work.end + dt.timedelta(minutes=5)).timestamp() * 1e6)
        expected = work.expected_external + work.expected_gpu

        def done() -> bool:
            send_watermark(run.settings, dt.datetime.fromtimestamp(end_us / 1e6, dt.UTC))
            return lake_costs(tmp_path / "lake").rows >= sum(b.num_rows for b in work.requests)

        assert wait_until(done, 150, every=3.0), run.logs()
        internal = sum(pc.sum(pc.equal(b.column("provider_kind"), "internal")).as_py()
                       for b in work.requests)
        costs = run.read(t.costs, COST_RECORD,
                         lambda c: pc.sum(pc.equal(c.column("pricing_status"),
                                                   "gpu_allocated")).as_py() == internal,
                         timeout=60)
        letters = run.read(t.deadletter, DEAD_LETTER, lambda x: x.num_rows >= 4, timeout=30)
        text = _scrape(metrics)
        alive = worker.poll() is None
    finally:
        run.stop_all()
    assert alive, run.logs()
    status = costs.column("pricing_status")
    # every own-model request got its GPU cost: the skewed host closed nothing early
    assert pc.sum(pc.equal(status, "gpu_allocated")).as_py() == internal
    assert pc.sum(pc.equal(status, "gpu_unattributed")).as_py() == 0
    assert lake_costs(tmp_path / "lake").cost + lake_costs(tmp_path / "lake", "idle").cost \
        == expected
    reasons = letters.column("reason").to_pylist()
    fields = letters.column("field").to_pylist()
    assert any("finite" in r for r in reasons), reasons  # the NaN reading
    assert any("ahead of the worker's clock" in r for r in reasons), reasons  # 10 min ahead
    assert fields.count("<processing>") == 2, reasons  # each internal topic's poison
    assert _metric(text, "costpipe_dead_letters_total") >= 4
    assert "costpipe_worker_restarts_total" in text


def _request(rid: str, when: dt.datetime) -> dict[str, Any]:
    return {"request_id": rid, "timestamp": when, "operation": "chat", "provider": "openai",
            "provider_kind": "external", "model": "gpt-4o-mini", "input_tokens": 100,
            "output_tokens": 10, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "status": "ok"}


def test_a_request_id_is_costed_once_wherever_and_whenever_it_comes_again(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    metrics = free_port()
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1",
                     COSTPIPE_SERVERS__METRICS_PORT=metrics)
    t = run.settings.topics
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
    rows = [_request(f"dup-{i}", base + dt.timedelta(seconds=i)) for i in range(40)]
    first = pa.RecordBatch.from_pylist(rows, schema=REQUEST_EVENT)
    count = run.settings.topics.partitions

    def elsewhere(rid: str) -> int:  # a partition that is not the id's home
        return (int(home_partitions(pa.array([rid]), count)[0]) + 1) % count

    try:
        run.start_worker()
        run.send(t.requests, [first], "request_event")
        # 1. another partition (a retry through a collector that keys differently)
        run.producer.produce(t.requests, value=encode_arrow(first.slice(0, 5)),
                             partition=elsewhere("dup-0"), headers=headers_for(ARROW,
                                                                                "request_event"))
        # 2. later, into the home partition, as a third party's single JSON event
        for row in rows[5:10]:
            run.send_raw(t.requests, encode_json(row), headers_for(JSON, "request_event"))
        # 3. the same ids stamped 2 h earlier
        earlier = [{**r, "timestamp": r["timestamp"] - dt.timedelta(hours=2)}
                   for r in rows[10:15]]
        run.send(t.requests, [pa.RecordBatch.from_pylist(earlier, schema=REQUEST_EVENT)],
                 "request_event")
        # 4. the very same envelope again (a spool replay after an ambiguous ack)
        run.send(t.requests, [first], "request_event")
        run.producer.flush(30)
        assert wait_until(lambda: lake_costs(tmp_path / "lake").rows >= 40, 90), run.logs()
        time.sleep(3)
        before_kill = _metric(_scrape(metrics), "costpipe_duplicate_requests_total")
        # 5. after a SIGKILL, a new worker still knows every id (journal + the gap it re-reads)
        run.workers[0].send_signal(signal.SIGKILL)
        run.workers[0].wait(10)
        run.start_worker()
        run.send(t.requests, [first.slice(20, 5)], "request_event")
        late = pa.RecordBatch.from_pylist([_request("fresh-1", base)], schema=REQUEST_EVENT)
        run.send(t.requests, [late], "request_event")
        assert wait_until(lambda: lake_costs(tmp_path / "lake").rows >= 41, 90), run.logs()
        letters = run.read(t.deadletter, DEAD_LETTER,
                           lambda x: (pc.sum(pc.equal(x.column("field"), "request_id")).as_py()
                                      or 0) >= 5 + 5 + 5 + 40 + 5, timeout=150)
        costed = run.read(t.costs, COST_RECORD, lambda x: False, timeout=5)
    finally:
        run.stop_all()
    lake = lake_costs(tmp_path / "lake")
    assert (lake.rows, lake.distinct_ids) == (41, 41)  # 40 ids + fresh-1, each once
    duplicates = letters.filter(pc.equal(letters.column("field"), "request_id"))
    # Dead letters are at-least-once too: a message re-read after the SIGKILL is refused again
    # (same partition, offset and row), and one of the rows sent to another partition, re-read
    # there before its offset was committed, is forwarded home again at a new offset.
    distinct = set(zip(*(duplicates.column(c).to_pylist() for c in
                         ("source_partition", "source_offset", "original")), strict=True))
    assert len(distinct) >= 5 + 5 + 5 + 40 + 5, (
        f"costs topic rows {costed.num_rows}, distinct "
        f"{len(set(costed.column('record_id').to_pylist()))}\n{run.logs()[-3000:]}")
    assert {json.loads(o)["request_id"] for _, _, o in distinct} == {r["request_id"]
                                                                     for r in rows}
    assert all("duplicate request_id" in r for r in duplicates.column("reason").to_pylist())
    assert before_kill == 55
    assert Decimal(lake.cost) > 0
