"""SIGKILL the worker at random points of a seeded simulated run; nothing lost, nothing twice.

The simulator (external traffic only, so the expected cost is the simulator's own exact list
cost from genai-prices) feeds the test's own topics from a thread while a seeded schedule
SIGKILLs `costpipe worker` again and again; after the last restart the lake's request count,
tokens and cost (to the pico-dollar) equal what was produced and no request id is there twice.

The same kills cover the sink crashing mid-write: a reader polls DuckDB over the lake the whole
time (the `costs` view and a raw read of every Parquet file) and must never fail on a partial
or temporary file nor see the raw row count shrink; after the run every visible file is a
complete Parquet file and staging leftovers never match `*.parquet`.

Scale: CI default is 60,000 events (2-core machine shared with Kafka and other suites: ~1M
takes many minutes through one worker). `COSTPIPE_TEST_RELIABILITY_EVENTS=1000000` runs the issue's
full size; `COSTPIPE_TEST_RELIABILITY_KILLS` raises the number of kills (default 3).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from costpipe import analytics
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.simulator import simulate
from costpipe.schemas.records import COST_RECORD
from tests.reliability.support import (
    lake_costs,
    lake_raw_duplicates,
    lake_raw_rows,
    scaled,
    wait_until,
)
from tests.streams_support.harness import StreamsRun

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(600)]

SEED = 20261125
RATE = 2_000  # events per simulated second; one Arrow envelope per second


@dataclass
class KilledRun:
    summary: Any
    rows_at_kill: list[int]
    reads: list[int]
    emitted: pa.Table


def _feed_and_kill(run: StreamsRun, lake: Path, events: int, kills: int, *,
                   internal_share: float = 0.0, gpus: int = 0,
                   seconds_per_kill: float = 8.0) -> KilledRun:
    """Feed the simulator from a thread while a seeded schedule SIGKILLs the worker; then run
    one last worker until every request id is in the lake. The feed lasts
    `seconds_per_kill` x kills, so that every kill lands mid-stream."""
    topics = run.settings.topics
    result: dict[str, object] = {}
    rows_at_kill: list[int] = []
    start = dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC)

    def produce() -> None:
        try:
            result["summary"] = simulate(
                run.settings, rate=RATE, duration_s=max(1, events // RATE), seed=SEED, gpus=gpus,
                internal_share=internal_share, as_fast_as_possible=True, start=start,
                request_sink=lambda t: (run.send(topics.requests, t.to_batches(1000),
                                                 "request_event"), time.sleep(pause)),
                gpu_sink=lambda t: run.send(topics.gpu, t.to_batches(), "gpu_sample"))
            if gpus:  # close the last GPU buckets: event time must pass them + lateness
                gpu = run.settings.gpu
                send_watermark(run.settings, start + dt.timedelta(
                    seconds=events // RATE + gpu.bucket_seconds + gpu.allowed_lateness_seconds + 1))
        except BaseException as exc:  # surfaced by the main thread
            result["error"] = exc

    reads: list[int] = []
    read_errors: list[str] = []
    reading = threading.Event()

    def reader() -> None:  # what any DuckDB user of the lake sees while the sink is killed
        while not reading.is_set():
            try:
                lake_costs(lake)
                rows = lake_raw_rows(lake)
                if reads and rows < reads[-1]:
                    read_errors.append(f"raw rows went from {reads[-1]} down to {rows}")
                reads.append(rows)
            except Exception as exc:  # any failure is a finding, collected and asserted
                read_errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.3)

    rng = random.Random(SEED)
    pause = kills * seconds_per_kill / max(1, events // RATE)  # traffic across every kill
    feeder = threading.Thread(target=produce, daemon=True)
    watcher = threading.Thread(target=reader, daemon=True)
    try:
        feeder.start()
        watcher.start()
        for _ in range(kills):
            before = lake_costs(lake).rows
            worker = run.start_worker()
            # a random point once this life has made progress (so the kill lands mid-stream)
            wait_until(lambda: worker.poll() is not None  # noqa: B023
                       or lake_costs(lake).rows > before, 90)  # noqa: B023
            time.sleep(rng.uniform(0.1, 3.0))
            rows_at_kill.append(lake_costs(lake).rows)
            assert worker.poll() is None, f"worker died on its own\n{run.logs()}"
            worker.send_signal(signal.SIGKILL)
            worker.wait(20)
        feeder.join(300)
        assert "error" not in result, result.get("error")
        reading.set()
        watcher.join(30)
        summary: Any = result["summary"]
        assert not summary.unpriced_models, summary.unpriced_models
        final = run.start_worker()
        wait_until(lambda: lake_costs(lake).distinct_ids >= summary.requests, 240, every=2.0)
        time.sleep(3)  # let any straggling duplicate land before judging
        assert final.poll() is None, run.logs()
        emitted = run.read(topics.costs, COST_RECORD,
                           lambda t: t.num_rows >= summary.requests, timeout=30)
    finally:
        reading.set()
        feeder.join(5)
        run.stop_all()
    assert not read_errors, read_errors[:5]
    assert lake_raw_duplicates(lake) == 0, "the sink wrote a re-emitted record twice"
    for path in (lake / "costs").rglob("*"):
        if path.is_file():
            assert path.suffix == ".parquet" and not path.name.startswith(".tmp-"), path
            pq.read_metadata(path)  # complete: footer present and valid
    assert not [p for p in lake.rglob("*.parquet") if "_staging" in p.parts]
    return KilledRun(summary, rows_at_kill, reads, emitted)


def _replayed(emitted: pa.Table) -> int:
    return emitted.num_rows - pc.count_distinct(emitted.column("record_id")).as_py()


def test_random_sigkills_lose_and_duplicate_nothing(kafka_bootstrap: str, tmp_path: Path):
    events = scaled("COSTPIPE_TEST_RELIABILITY_EVENTS", 60_000)
    kills = scaled("COSTPIPE_TEST_RELIABILITY_KILLS", 3)
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_ROWS="5000",
                     COSTPIPE_LAKE__FLUSH_SECONDS="1")
    lake = tmp_path / "lake"
    done = _feed_and_kill(run, lake, events, kills)
    summary, got = done.summary, lake_costs(lake)
    print(f"\nevents {summary.requests}, kills {kills} at lake rows {done.rows_at_kill}, "
          f"lake rows {got.rows}, distinct {got.distinct_ids}, cost {got.cost}, "
          f"duplicate cost records on the costs topic (re-emitted after kills) "
          f"{_replayed(done.emitted)}, raw lake rows {lake_raw_rows(lake)}, "
          f"concurrent DuckDB reads {len(done.reads)}")
    assert got.rows == summary.requests, (got, run.logs()[-3000:])
    assert got.distinct_ids == summary.requests, got
    assert got.input_tokens == summary.input_tokens
    assert got.output_tokens == summary.output_tokens
    assert got.cost == summary.expected_external_list_cost


def test_sigkills_keep_own_model_pending_state(kafka_bootstrap: str, tmp_path: Path):
    """The GPU allocator's pending rows live in memory and in its changelog only; after every
    SIGKILL each own-model request must still be allocated exactly once (none lost, none left
    unattributed, no correction), with one idle line per (GPU, bucket)."""
    events = scaled("COSTPIPE_TEST_RELIABILITY_OWN_EVENTS", 40_000)
    kills = scaled("COSTPIPE_TEST_RELIABILITY_KILLS", 3)
    # Short lateness: buckets close during the run too, not only at the end.
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_ROWS="5000",
                     COSTPIPE_LAKE__FLUSH_SECONDS="1", COSTPIPE_GPU__ALLOWED_LATENESS_SECONDS="2")
    lake = tmp_path / "lake"
    done = _feed_and_kill(run, lake, events, kills, internal_share=0.4, gpus=4,
                          seconds_per_kill=12.0)
    summary = done.summary
    con = analytics.connect(location=str(lake))
    kinds = dict(con.execute(
        "SELECT provider_kind || '/' || record_type || '/' || pricing_status, count(*) "
        "FROM costs GROUP BY ALL").fetchall())
    external_cost = con.execute("SELECT sum(cost) FROM costs WHERE provider_kind = 'external' "
                                "AND record_type = 'request'").fetchall()[0][0]
    idle = con.execute("SELECT count(*), count(DISTINCT (gpu_uuid, bucket_start)) FROM costs "
                       "WHERE record_type = 'idle'").fetchall()[0]
    con.close()
    print(f"\nevents {summary.requests} ({summary.internal_requests} own-model), kills {kills} "
          f"at lake rows {done.rows_at_kill}, lake {kinds}, idle lines {idle}, re-emitted "
          f"{_replayed(done.emitted)}")
    assert summary.internal_requests > 0.3 * summary.requests
    assert kinds.get("internal/request/gpu_allocated") == summary.internal_requests, kinds
    assert not [k for k in kinds if "correction" in k or "unattributed" in k], kinds
    assert lake_costs(lake).distinct_ids == summary.requests
    assert external_cost == summary.expected_external_list_cost
    assert idle[0] == idle[1] > 0  # one idle line per (GPU, bucket), none twice
