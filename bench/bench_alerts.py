"""Alert latency: from the first spiking event produced to the spike alert on the alerts topic.

A worker runs on fresh topics with short windows (`--window` s, lateness `--lateness` s, alert
cooldown 0); the simulator sends in real time (one tick of events per second, event time =
wall time) and, every `--every` seconds, multiplies one operation's traffic by `--factor` for
one window. Operations take turns, so each key's baseline settles between its spikes. Latency
per spike = time its alert arrived - time the first spiking tick was handed to the producer.
Target: p99 <= window + 2 s.

    .venv/bin/python -m bench.bench_alerts [--spikes 24]
Last line: JSON with p50/p99 latency and how many spikes alerted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time

import pyarrow as pa
from confluent_kafka import Consumer, TopicPartition

from bench.common import (
    create_topics,
    drop_run,
    emit,
    fresh_run,
    median,
    percentile,
    start_worker,
    stop,
    wait_until,
)
from costpipe.collectors.producer import producer_for
from costpipe.collectors.simulator import WORKLOADS, Spike, simulate
from costpipe.core.kafka_clients import confluent_consumer

OPERATIONS = [w.name for w in WORKLOADS]


class AlertWatcher(threading.Thread):
    """Reads the alerts topic; remembers when each (operation, window_start) spike arrived."""

    def __init__(self, run_settings: object, topic: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.consumer = Consumer(confluent_consumer(run_settings, group_id=f"bench-al-{topic}"))
        self.arrived: dict[tuple[str, int], float] = {}
        self.rules: dict[str, int] = {}
        self.running = True

    def run(self) -> None:
        meta = self.consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in meta.partitions])
        while self.running:
            msg = self.consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            now = time.time()
            table = pa.ipc.open_stream(pa.py_buffer(msg.value())).read_all()
            for row in table.to_pylist():
                self.rules[row["rule"]] = self.rules.get(row["rule"], 0) + 1
                if row["rule"] != "spike":
                    continue
                operation = str(row["key"]).split("/")[0]
                start = int(row["window_start"].timestamp())
                self.arrived.setdefault((operation, start), now)
        self.consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spikes", type=int, default=24)
    parser.add_argument("--window", type=int, default=2, help="window length, seconds")
    parser.add_argument("--lateness", type=int, default=0, help="allowed lateness, seconds")
    parser.add_argument("--every", type=int, default=6, help="seconds between spikes")
    parser.add_argument("--factor", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s at baseline")
    parser.add_argument("--warmup", type=int, default=20, help="seconds before the first spike")
    args = parser.parse_args()
    if args.every % args.window:
        parser.error("--every must be a multiple of --window (spikes start on a window)")

    run = fresh_run({
        "COSTPIPE_WINDOWS__SECONDS": str(args.window),
        "COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS": str(args.lateness),
        "COSTPIPE_ALERTS__COOLDOWN_SECONDS": "0",
        "COSTPIPE_ALERTS__SPIKE_MIN_DOLLARS": "0",
        "COSTPIPE_TARGET_INTERNAL_SHARE": "0",
        "COSTPIPE_LAKE__FLUSH_SECONDS": "1",
    })
    create_topics(run)
    watcher = AlertWatcher(run.settings, run.settings.topics.alerts)
    watcher.start()
    worker = start_worker(run)
    try:
        # Warm the worker up (partition assignment, first batches) before the clock matters.
        duration = args.warmup + args.spikes * args.every + 3 * args.window + 2
        now = time.time()
        start_s = (int(now) // args.window + 1) * args.window  # windows align with ticks
        time.sleep(max(0.0, start_s - time.time()))
        spikes = []
        for i in range(args.spikes):
            at = args.warmup + i * args.every
            spikes.append(Spike(OPERATIONS[i % len(OPERATIONS)], args.factor, at, args.window))
        handed: dict[int, float] = {}
        producer = producer_for(run.settings, "requests")

        def sink(table: pa.Table) -> None:
            second = int(table.column("timestamp")[0].as_py().timestamp()) - start_s
            handed.setdefault(second, time.time())
            producer.emit_batch(table)

        print(f"  run {run.suffix}: {duration} s real time, {args.spikes} spikes ...",
              file=sys.stderr, flush=True)
        simulate(run.settings, rate=args.rate, duration_s=duration, internal_share=0.0,
                 gpus=0, seed=3, spikes=spikes, request_sink=sink,
                 start=dt.datetime.fromtimestamp(start_s, dt.UTC))
        wait_until(lambda: len(watcher.arrived) >= args.spikes, timeout=3 * args.window + 10)
    finally:
        stop(worker)
        watcher.running = False
        watcher.join(10)
    latencies = []
    missed = 0
    for spike in spikes:
        window_start = start_s + int(spike.at_s)
        got = watcher.arrived.get((spike.operation, window_start))
        sent = handed.get(int(spike.at_s))
        if got is None or sent is None:
            missed += 1
            continue
        latencies.append(got - sent)
    result = {
        "window_s": args.window, "lateness_s": args.lateness, "spikes": args.spikes,
        "alerted": len(latencies), "missed": missed,
        "p50_s": median(latencies), "p99_s": percentile(latencies, 99),
        "target_p99_s": args.window + 2, "alerts_by_rule": watcher.rules,
    }
    print(f"alert latency p50 {result['p50_s']:.2f} s, p99 {result['p99_s']:.2f} s over "
          f"{len(latencies)}/{args.spikes} spikes (target p99 <= {args.window + 2} s)",
          file=sys.stderr)
    drop_run(run)
    emit(result)


if __name__ == "__main__":
    main()
