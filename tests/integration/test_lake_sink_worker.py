"""The Parquet sink inside a real `costpipe worker` against real Kafka.

Cost records are produced straight to the costs topic; the worker's lake sink must land every
row exactly once: after a SIGKILL, a restart that replays from offset 0 (a new consumer group,
other flush boundaries) must leave row counts and the cost total exactly right.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pytest
from confluent_kafka import Consumer, TopicPartition

from costpipe.analytics import sample
from costpipe.core.kafka_clients import confluent_consumer
from tests.streams_support.harness import StreamsRun

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _lake_totals(root: Path) -> tuple[int, object]:
    if not any((root / "costs").rglob("*.parquet")):
        return 0, None
    glob = f"{root}/costs/**/*.parquet"
    return duckdb.sql(f"SELECT count(*), sum(cost) FROM read_parquet('{glob}')").fetchall()[0]


def _wait_for(root: Path, rows: int, run: StreamsRun, timeout: float = 90) -> tuple[int, object]:
    deadline = time.monotonic() + timeout
    got: tuple[int, object] = (0, None)
    while time.monotonic() < deadline:
        got = _lake_totals(root)
        if got[0] >= rows:
            return got
        time.sleep(0.5)
    pytest.fail(f"lake has {got[0]} of {rows} rows after {timeout}s\n{run.logs()}")


def test_sink_lands_rows_once_across_kill_and_replay(kafka_bootstrap: str, tmp_path: Path):
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_ROWS="700",
                     COSTPIPE_LAKE__FLUSH_SECONDS="1")
    lake = tmp_path / "lake"
    costs = sample.costs(8_000, days=1)
    batches = [costs.slice(i * 250, 250).to_batches()[0] for i in range(32)]
    want_cost = pc.sum(costs["cost"]).as_py()
    try:
        run.send(run.settings.topics.costs, batches[:16], "cost_record")
        worker = run.start_worker()
        _wait_for(lake, 4_000, run)
        worker.send_signal(signal.SIGKILL)  # mid-stream: buffers and maybe a flush torn
        worker.wait(20)
        run.send(run.settings.topics.costs, batches[16:], "cost_record")
        # restart as a fresh group: a replay of both partitions from offset 0, with other
        # flush boundaries, over a lake that already holds (some of) those offsets
        run.env["COSTPIPE_SERVERS__WORKER_GROUP"] = f"costpipe-replay-{uuid.uuid4().hex[:8]}"
        run.env["COSTPIPE_LAKE__FLUSH_ROWS"] = "300"
        run.start_worker()
        _wait_committed(run, run.env["COSTPIPE_SERVERS__WORKER_GROUP"])
        assert _lake_totals(lake) == (8_000, want_cost), run.logs()
        assert not list((lake / "_staging").glob("*.part"))
    finally:
        run.stop_all()
    names = [p.name for p in (lake / "costs").rglob("*.parquet")]
    assert all(n.startswith(run.settings.topics.costs + "-p") for n in names)


def _wait_committed(run: StreamsRun, group: str, timeout: float = 90) -> None:
    """Until the group has committed the end of every costs partition (the replay is done)."""
    consumer = Consumer(confluent_consumer(run.settings, group))
    topic = run.settings.topics.costs
    parts = [TopicPartition(topic, p) for p in range(2)]
    ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
            if committed == ends:
                return
            time.sleep(0.5)
    finally:
        consumer.close()
    pytest.fail(f"replay group committed {committed}, end offsets {ends}\n{run.logs()}")
