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
full size; `COSTPIPE_TEST_RELIABILITY_KILLS` raises the number of kills (default 5).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collectors.simulator import simulate
from schemas.records import COST_RECORD
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


def test_random_sigkills_lose_and_duplicate_nothing(kafka_bootstrap: str, tmp_path: Path):
    events = scaled("COSTPIPE_TEST_RELIABILITY_EVENTS", 60_000)
    kills = scaled("COSTPIPE_TEST_RELIABILITY_KILLS", 5)
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_ROWS="5000",
                     COSTPIPE_LAKE__FLUSH_SECONDS="1")
    lake = tmp_path / "lake"
    topic = run.settings.topics.requests
    result: dict[str, object] = {}
    rows_at_kill: list[int] = []

    def produce() -> None:
        try:
            result["summary"] = simulate(
                run.settings, rate=RATE, duration_s=max(1, events // RATE), seed=SEED, gpus=0,
                internal_share=0.0, as_fast_as_possible=True,
                start=dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC),
                request_sink=lambda t: (run.send(topic, t.to_batches(1000), "request_event"),
                                        time.sleep(pause)))
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
    pause = kills * 8.0 / max(1, events // RATE)  # keep traffic flowing across every kill
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
        summary = result["summary"]
        assert not summary.unpriced_models, summary.unpriced_models
        final = run.start_worker()
        wait_until(lambda: lake_costs(lake).distinct_ids >= summary.requests, 240, every=2.0)
        time.sleep(3)  # let any straggling duplicate land before judging
        got = lake_costs(lake)
        raw_rows = lake_raw_rows(lake)
        raw_duplicates = lake_raw_duplicates(lake)
        assert final.poll() is None, run.logs()
        emitted = run.read(run.settings.topics.costs, COST_RECORD,
                           lambda t: t.num_rows >= summary.requests, timeout=30)
    finally:
        reading.set()
        feeder.join(5)
        run.stop_all()
    replayed = emitted.num_rows - pc.count_distinct(emitted.column("record_id")).as_py()
    print(f"\nevents {summary.requests}, kills {kills} at lake rows {rows_at_kill}, "
          f"lake rows {got.rows}, distinct {got.distinct_ids}, cost {got.cost}, "
          f"duplicate cost records on the costs topic (re-emitted after kills) {replayed}, "
          f"raw lake rows {raw_rows} (duplicate keys {raw_duplicates}), "
          f"concurrent DuckDB reads {len(reads)} "
          f"(errors {len(read_errors)})")
    assert not read_errors, read_errors[:5]
    assert raw_duplicates == 0, "the sink wrote a re-emitted record twice"
    assert got.rows == summary.requests, (got, run.logs()[-3000:])
    assert got.distinct_ids == summary.requests, got
    assert got.input_tokens == summary.input_tokens
    assert got.output_tokens == summary.output_tokens
    assert got.cost == summary.expected_external_list_cost
    for path in (lake / "costs").rglob("*"):
        if path.is_file():
            assert path.suffix == ".parquet" and not path.name.startswith(".tmp-"), path
            pq.read_metadata(path)  # complete: footer present and valid
    assert not [p for p in lake.rglob("*.parquet") if "_staging" in p.parts]
