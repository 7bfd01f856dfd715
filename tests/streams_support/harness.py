"""Run `costpipe worker` as a subprocess against real Kafka, feed it, and read its outputs."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from costpipe.core.kafka_clients import confluent_admin, confluent_consumer, confluent_producer
from costpipe.core.settings import Settings
from costpipe.schemas.codec import decode, encode_arrow
from costpipe.schemas.envelope import ARROW, headers_for, home_partitions
from costpipe.schemas.records import (
    COST_RECORD,
    DEAD_LETTER,
    GPU_SAMPLE,
    REQUEST_EVENT,
    WINDOW_AGGREGATE,
)

TOPIC_KEYS = ("requests", "gpu", "costs", "partials", "windows", "alerts", "deadletter",
              "gpuwork")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamsRun:
    """Unique topics and group for one test, plus the env a worker subprocess needs."""

    def __init__(self, bootstrap: str, tmp: Path, **overrides: object) -> None:
        uid = uuid.uuid4().hex[:10]
        self.env = dict(os.environ)
        values: dict[str, str] = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "COSTPIPE_STATE_DIR": str(tmp / "state"),
            "COSTPIPE_LAKE__LOCATION": str(tmp / "lake"),
            "COSTPIPE_SERVERS__WORKER_GROUP": f"costpipe-test-{uid}",
            "COSTPIPE_SERVERS__WORKER_WEB_PORT": str(free_port()),
            "COSTPIPE_SERVERS__METRICS_PORT": "0",
            "COSTPIPE_WINDOWS__SECONDS": "60",
            "COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS": "20",
            "COSTPIPE_GPU__BUCKET_SECONDS": "10",
            "COSTPIPE_GPU__ALLOWED_LATENESS_SECONDS": "5",
            "COSTPIPE_TOPICS__PARTITIONS": "2",
        }
        for key in TOPIC_KEYS:
            values[f"COSTPIPE_TOPICS__{key.upper()}"] = f"t{uid}.{key}.v1"
        values.update({k: str(v) for k, v in overrides.items()})
        self.env.update(values)
        self.settings = Settings.model_validate({
            "kafka": {"bootstrap_servers": bootstrap},
            "lake": {"location": values["COSTPIPE_LAKE__LOCATION"]},
            "topics": {**{k: values[f"COSTPIPE_TOPICS__{k.upper()}"] for k in TOPIC_KEYS},
                       "partitions": int(values["COSTPIPE_TOPICS__PARTITIONS"]),
                       "stage_partitions": values.get("COSTPIPE_TOPICS__STAGE_PARTITIONS")},
            "windows": {"seconds": 60, "allowed_lateness_seconds": 20},
            "gpu": {"bucket_seconds": 10, "allowed_lateness_seconds": 5},
        })
        self.tmp = tmp
        self.workers: list[subprocess.Popen[bytes]] = []
        self._create_topics()
        self.producer = Producer(confluent_producer(self.settings, **{"linger.ms": 50}))

    def _create_topics(self) -> None:
        admin = AdminClient(confluent_admin(self.settings))
        t = self.settings.topics
        counts = t.partition_counts()
        wanted = [NewTopic(getattr(t, k), counts[getattr(t, k)], 1) for k in TOPIC_KEYS]
        for future in admin.create_topics(wanted).values():
            future.result(30)

    # -- worker processes
    def start_worker(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115
        level = os.environ.get("STREAMS_TEST_LOGLEVEL", "warning")
        env = dict(self.env)
        if self.workers:  # every further worker its own web page port
            env["COSTPIPE_SERVERS__WORKER_WEB_PORT"] = str(free_port())
        proc = subprocess.Popen([sys.executable, "-m", "costpipe.cli", "worker", "--loglevel",
                                 level, "--workdir",
                                 str(self.tmp / f"worker{len(self.workers)}")], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.workers.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> str:
        return "\n".join((p.read_text(errors="replace")[-4000:])
                         for p in sorted(self.tmp.glob("worker*.log")))

    # -- input
    def send(self, topic: str, batches: Iterable[pa.RecordBatch], record: str,
             partition: int | None = None) -> None:
        """Send batches as the collectors do: each row to its home partition (by request_id
        or gpu_uuid), unless `partition` pins them all to one."""
        route = {"request_event": "request_id", "gpu_sample": "gpu_uuid"}.get(record)
        count = self.settings.topics.partitions
        for i, batch in enumerate(batches):
            if partition is not None or route is None or batch.num_rows == 0:
                extra = {} if partition is None else {"partition": partition}
                self.producer.produce(topic, key=str(i).encode(), value=encode_arrow(batch),
                                      headers=headers_for(ARROW, record), **extra)
                continue
            homes = home_partitions(batch.column(route), count)
            for home in sorted(set(homes.tolist())):
                rows = batch.filter(pa.array(homes == home))
                self.producer.produce(topic, key=str(i).encode(), value=encode_arrow(rows),
                                      partition=home, headers=headers_for(ARROW, record))
        self.producer.flush(30)

    def push_event_time(self, later: dt.datetime, gpus: Iterable[str] = ("GPU-a", "GPU-b")
                        ) -> None:
        """One request per requests partition and one sample per GPU at `later`, so every
        watermark passes what came before (keep `later` within 300 s of the data: a partition
        that looks idle for longer stops holding buckets back on its own)."""
        for partition in range(self.settings.topics.partitions):
            req = pa.RecordBatch.from_pylist([{
                "request_id": f"tick-{later.timestamp()}-{partition}", "timestamp": later,
                "operation": "chat", "provider": "openai", "provider_kind": "external",
                "model": "gpt-4o-mini", "input_tokens": 1, "output_tokens": 1,
                "cache_read_tokens": 0, "cache_write_tokens": 0, "status": "ok"}],
                schema=REQUEST_EVENT)
            self.send(self.settings.topics.requests, [req], "request_event",
                      partition=partition)
        smp = pa.RecordBatch.from_pylist([{
            "timestamp": later, "host": "h1", "gpu_uuid": g, "gpu_index": 0, "interval_s": 1.0,
            "power_w": 100.0} for g in gpus], schema=GPU_SAMPLE)
        self.send(self.settings.topics.gpu, [smp], "gpu_sample")

    def send_raw(self, topic: str, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self.producer.produce(topic, value=value, headers=headers)
        self.producer.flush(30)

    # -- output
    def read(self, topic: str, schema: pa.Schema, until, timeout: float = 90.0) -> pa.Table:
        """Read `topic` from the start until `until(table)` is true or timeout."""
        consumer = Consumer(confluent_consumer(self.settings, f"reader-{uuid.uuid4().hex}"))
        consumer.subscribe([topic])
        batches: list[pa.RecordBatch] = []
        deadline = time.monotonic() + timeout
        table = schema.empty_table()
        try:
            while time.monotonic() < deadline:
                for msg in consumer.consume(500, 0.5):
                    if msg.error():
                        continue
                    batch = decode(msg.value(), msg.headers(), schema).batch
                    if batch.num_rows:
                        batches.append(batch)
                if batches:
                    table = pa.Table.from_batches(batches)
                if until(table):
                    break
        finally:
            consumer.close()
        return table


def dedup(table: pa.Table, keys: list[str]) -> pa.Table:
    """First row per key (outputs are at-least-once with deterministic ids)."""
    if table.num_rows == 0:
        return table

    indexed = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    first = indexed.group_by(keys, use_threads=False).aggregate([("_i", "min")])
    return table.take(pa.array(sorted(first.column("_i_min").to_pylist()), pa.int64()))


def total(table: pa.Table, column: str = "cost") -> Decimal:
    import pyarrow.compute as pc

    return pc.sum(table.column(column)).as_py() or Decimal(0) if table.num_rows else Decimal(0)


def before(table: pa.Table, column: str, cutoff: dt.datetime) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.less(table.column(column), pa.scalar(cutoff, table.column(column).type)))


__all__ = ["COST_RECORD", "DEAD_LETTER", "WINDOW_AGGREGATE", "StreamsRun", "dedup", "total"]
