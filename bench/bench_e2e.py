"""End-to-end throughput: simulator -> Kafka -> costing -> aggregation -> Parquet, one worker.

One run, on fresh topics: the simulator fills the requests/GPU topics (Arrow envelopes) and the
same request events go, one JSON message each keyed `operation|provider|model`, to a second
topic. Then, one after another on that data:
- costpipe: one `costpipe worker`; time from the first cost record it produces (its Kafka
  timestamp, i.e. right after the first consumed batch) until the lake holds a request cost
  record for every simulated request (external ones at once, own-model ones when their GPU
  bucket closes; a sparse tail, one message per second and partition, closes the last);
- limit: raw confluent-kafka consume of the requests topic;
- Quix Streams per-event JSON tumbling-window sum (bench/.venv-quix);
- plain per-event Faust agent doing the same.
Per-event peers read a prefix of the JSON topic (`--quix-events`, `--faust-events`) so a run
finishes in minutes; their rates are per event, so the ratio is fair.

    .venv/bin/python -m bench.bench_e2e [--requests N]
Last line: JSON with events_per_s for costpipe, limit, quix, faust and the ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time

import polars as pl
import pyarrow as pa
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import (
    PY,
    ROOT,
    LakeCounter,
    Run,
    create_topics,
    drop_run,
    emit,
    free_port,
    fresh_run,
    process_cpu_s,
    run_json,
    start_worker,
    stop,
)
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.producer import BatchingProducer, producer_for
from costpipe.collectors.simulator import simulate
from costpipe.core.kafka_clients import confluent_consumer, confluent_producer
from costpipe.schemas.codec import encode_arrow
from costpipe.schemas.envelope import ARROW, headers_for
from costpipe.schemas.records import REQUEST_EVENT

QUIX_PY = ROOT / "bench" / ".venv-quix" / "bin" / "python"
JSON_LIMIT_EVENTS = 500_000  # JSON events mirrored at least (the JSON raw-consume figure)


def fill(run: Run, rate: int, duration_s: int, json_topic: str,
         envelope_rows: int | None = None,
         json_rows: int | None = None) -> tuple[int, int, int]:
    """Simulate into Kafka; mirror requests as per-event JSON. Returns (requests, end_us, msgs).

    `envelope_rows` overrides the collectors' envelope size (rows per Arrow message).
    `json_rows`: mirror only the first rows (the per-event peers read a prefix; a long run
    would otherwise spend minutes and GBs on JSON nobody reads).
    """
    tables: list[pa.Table] = []
    requests = producer_for(run.settings, "requests") if envelope_rows is None else \
        BatchingProducer(run.settings, run.settings.topics.requests, REQUEST_EVENT,
                         "request_event", metrics=False, max_rows=envelope_rows,
                         max_bytes=64 * envelope_rows * 1024)

    def sink(table: pa.Table) -> None:
        tables.append(table)
        requests.emit_batch(table)

    # Event times end before now: the worker dead-letters events more than
    # ingest.max_future_seconds ahead of its clock, and a long run simulated from now would be.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=duration_s + 120)
    summary = simulate(run.settings, rate=rate, duration_s=duration_s, seed=1, gpus=16,
                       as_fast_as_possible=True, request_sink=sink, flush_timeout_s=300,
                       start=start)
    requests.flush(300)
    stats = requests.stats
    if envelope_rows is not None:
        requests.close()
    if stats["sent"] != summary.requests:  # the run would wait for rows that never left
        raise RuntimeError(f"the requests producer sent {stats['sent']:,} of "
                           f"{summary.requests:,} simulated requests: {stats}")
    end_us = int(summary.end.timestamp() * 1_000_000)
    gpu = run.settings.gpu
    tail_ticks(run, summary.end, gpu.bucket_seconds + gpu.allowed_lateness_seconds + 15)
    mirrored = pa.concat_tables(tables)
    if json_rows is not None:
        mirrored = mirrored.slice(0, json_rows)
    frame = pl.from_arrow(mirrored).with_columns(
        pl.col(pl.Datetime).dt.epoch("us"),
        pl.col("input_tokens").fill_null(0), pl.col("output_tokens").fill_null(0))
    keys = frame.select(pl.concat_str(["operation", "provider", "model"], separator="|")
                        .fill_null("")).to_series().to_list()
    lines = frame.write_ndjson().encode().splitlines()
    producer = Producer(confluent_producer(run.settings, **{"linger.ms": 50,
                                                           "queue.buffering.max.messages":
                                                           1_000_000}))
    for key, line in zip(keys, lines, strict=True):
        while True:
            try:
                producer.produce(json_topic, line, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    messages = count_messages(run, run.settings.topics.requests)
    return summary.requests, end_us, messages


def tail_ticks(run: Run, after: dt.datetime, seconds: int) -> None:
    """A sparse tail after the run's end, one message per simulated second and partition.

    Advances event time on every requests partition and on the GPU stream one second per
    message, so the worker closes GPU buckets one at a time (closing every open bucket at once
    can make one cost message above the 10 MB request limit). Also sends the watermark
    heartbeat, for agents that honour it.
    """
    producer = Producer(confluent_producer(run.settings))
    topics = run.settings.topics

    def request_sink(table: pa.Table) -> None:
        payload = encode_arrow(table)
        for partition in range(topics.partitions):
            producer.produce(topics.requests, payload, partition=partition,
                             headers=headers_for(ARROW, "request_event"))

    def gpu_sink(table: pa.Table) -> None:
        producer.produce(topics.gpu, encode_arrow(table), b"tail",
                         headers=headers_for(ARROW, "gpu_sample"))

    simulate(run.settings, rate=2, duration_s=seconds, seed=2, gpus=16, start=after,
             as_fast_as_possible=True, request_sink=request_sink, gpu_sink=gpu_sink)
    producer.flush(60)
    send_watermark(run.settings, after + dt.timedelta(seconds=seconds))


def count_messages(run: Run, topic: str) -> int:
    consumer = Consumer(confluent_consumer(run.settings, group_id=f"bench-count-{run.suffix}"))
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        total = 0
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            total += high - low
        return total
    finally:
        consumer.close()


def first_timestamp_s(run: Run, topic: str) -> float:
    """Earliest Kafka timestamp (s) on a topic: when the worker produced its first record."""
    consumer = Consumer(confluent_consumer(run.settings, group_id=f"bench-first-{run.suffix}"))
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        first: list[float] = []
        deadline = time.monotonic() + 20
        wanted = len(meta.partitions)
        seen: set[int] = set()
        while time.monotonic() < deadline and len(seen) < wanted:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if msg is None and first:
                    break
                continue
            if msg.partition() not in seen:
                seen.add(msg.partition())
                first.append(msg.timestamp()[1] / 1000)
        return min(first)
    finally:
        consumer.close()


def run_costpipe(run: Run, expected: int, end_us: int, timeout: float) -> dict[str, float]:
    counter = LakeCounter(run.lake, before_us=end_us)
    worker = start_worker(run)
    try:
        deadline = time.monotonic() + timeout
        done_at = None
        cpu_first = cpu_done = 0.0  # worker CPU when the lake first had rows, and at the end
        rows_first = 0
        progress: list[tuple[float, int]] = []  # (wall time, request cost records in the lake)
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                log = (run.folder / "worker.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"worker exited rc={worker.returncode}: {log}")
            count = counter.count()
            progress.append((time.time(), count))
            if count >= expected:
                done_at = time.time()
                cpu_done = process_cpu_s(worker.pid)
                break
            if count and not cpu_first:
                cpu_first, rows_first = process_cpu_s(worker.pid), count
            time.sleep(0.1)
        if done_at is None:
            raise RuntimeError(f"lake holds {counter.count():,}/{expected:,} request cost "
                               f"records after {timeout:.0f} s (see {run.folder}/worker.log)")
    finally:
        stop(worker)
    started = first_timestamp_s(run, run.settings.topics.costs)
    seconds = done_at - started
    # Where the time goes: external rows land at once, own-model rows when their bucket closes.
    marks = {share: next(t for t, n in progress if n >= share * expected) - started
             for share in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)}
    print("  lake reached " + ", ".join(f"{share:.0%} at {t:.1f} s" for share, t in
                                        marks.items()) + f", 100% at {seconds:.1f} s",
          file=sys.stderr, flush=True)
    # CPU per event between the first lake rows and the end: steadier than the wall rate on
    # a shared machine (what a change saved, even when the neighbours are noisy).
    cpu_us = (cpu_done - cpu_first) / max(1, expected - rows_first) * 1e6 if cpu_first else 0.0
    return {"events": expected, "seconds": seconds, "events_per_s": expected / seconds,
            "worker_cpu_us_per_event": cpu_us}


def one_run(rate: int, duration_s: int, quix_events: int, faust_events: int,
            timeout: float, envelope_rows: int | None = None,
            only_costpipe: bool = False) -> dict[str, float]:
    run = fresh_run({"COSTPIPE_LAKE__FLUSH_SECONDS": "1",
                     })
    json_topic = f"bench.json.{run.suffix}.v1"
    create_topics(run, {json_topic: run.settings.topics.partitions})
    print(f"  run {run.suffix}: filling topics ...", file=sys.stderr, flush=True)
    json_rows = 0 if only_costpipe else max(quix_events, faust_events, JSON_LIMIT_EVENTS)
    requests, end_us, messages = fill(run, rate, duration_s, json_topic, envelope_rows,
                                      json_rows)
    boot = run.settings.bootstrap_servers
    print(f"  {requests:,} requests in {messages:,} Arrow messages; costpipe worker ...",
          file=sys.stderr, flush=True)
    cp = run_costpipe(run, requests, end_us, timeout)
    print(f"  costpipe {cp['events_per_s']:,.0f} events/s; limit ...", file=sys.stderr,
          flush=True)
    if only_costpipe:
        # BENCH_KEEP_RUN keeps the lake and log to look into
        drop_run(run, keep_folder=bool(os.environ.get("BENCH_KEEP_RUN")))
        return {"requests": requests, "arrow_messages": messages,
                "costpipe_events_per_s": cp["events_per_s"], "costpipe_seconds": cp["seconds"],
                "worker_cpu_us_per_event": cp["worker_cpu_us_per_event"]}
    raw = run_json([PY, "bench/peers/raw_consume.py", boot, run.settings.topics.requests,
                    str(messages)])
    limit = requests / raw["seconds"]
    json_events = count_messages(run, json_topic)
    raw_json = run_json([PY, "bench/peers/raw_consume.py", boot, json_topic, str(json_events)])
    print("  quix peer ...", file=sys.stderr, flush=True)
    quix_n = min(json_events, quix_events)
    quix = run_json([str(QUIX_PY), "bench/peers/quix_window_sum.py", boot, json_topic,
                     str(quix_n)])
    print("  faust peer ...", file=sys.stderr, flush=True)
    faust_n = min(json_events, faust_events)
    env = {**os.environ, "BENCH_PARTITIONS": str(run.settings.topics.partitions),
           "BENCH_RUN_SUFFIX": run.suffix}  # names the peer's topics, so drop_run finds them
    faust = run_json([PY, "bench/peers/faust_per_event.py", boot, json_topic, str(faust_n),
                      "worker", "-l", "warn",
                      "--web-port", str(free_port())], env=env)
    out = {
        "requests": requests, "arrow_messages": messages,
        "costpipe_events_per_s": cp["events_per_s"], "costpipe_seconds": cp["seconds"],
        "worker_cpu_us_per_event": cp["worker_cpu_us_per_event"],
        "limit_events_per_s": limit, "limit_json_events_per_s": raw_json["messages_per_s"],
        "quix_events_per_s": quix["events_per_s"],
        "faust_events_per_s": faust["events_per_s"],
        "costpipe_over_limit": cp["events_per_s"] / limit,
        "costpipe_over_quix": cp["events_per_s"] / quix["events_per_s"],
        "costpipe_over_faust": cp["events_per_s"] / faust["events_per_s"],
        "quix_events": quix_n, "faust_events": faust_n,
    }
    drop_run(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5_000,
                        help="simulated requests per event-time second (sent as fast as "
                             "possible)")
    parser.add_argument("--duration", type=int, default=400,
                        help="simulated seconds (default: 2M requests, ~20 s of worker time: "
                             "a 500k run is over in 6-8 s, a third of it pipeline fill)")
    parser.add_argument("--quix-events", type=int, default=200_000)
    parser.add_argument("--faust-events", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--envelope-rows", type=int, default=None,
                        help="rows per Arrow envelope from the collectors (default: the "
                             "producer's)")
    parser.add_argument("--only-costpipe", action="store_true",
                        help="skip the limit and the peers (quick before/after of a change)")
    args = parser.parse_args()
    result = one_run(args.rate, args.duration, args.quix_events, args.faust_events,
                     args.timeout, args.envelope_rows, args.only_costpipe)
    if args.only_costpipe:
        print(f"costpipe {result['costpipe_events_per_s']:,.0f} ev/s, worker "
              f"{result['worker_cpu_us_per_event']:.1f} us CPU/event "
              f"({result['arrow_messages']:,} Arrow messages)", file=sys.stderr)
        emit(result)
        return
    print(f"costpipe {result['costpipe_events_per_s']:,.0f} ev/s | limit "
          f"{result['limit_events_per_s']:,.0f} | quix {result['quix_events_per_s']:,.0f} | "
          f"faust {result['faust_events_per_s']:,.0f}", file=sys.stderr)
    emit(result)


if __name__ == "__main__":
    main()
