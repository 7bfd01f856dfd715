"""The one Kafka producer every collector uses: Arrow envelopes, never blocks, never loses.

Why this shape (docs/decisions/2026-11-25-arrow-envelopes.md): workers run ~100x faster on
Arrow IPC batches than on one event per message, so callers hand events to an in-memory queue
(a deque append, about a microsecond) and a background thread groups them into envelopes of at
most `max_rows` rows / `max_bytes` bytes or `linger_s` seconds, whichever comes first.

No loss: an envelope Kafka refuses (broker unreachable, delivery timeout, local queue full,
shutdown with messages still in flight) is journaled to a local spool (see `spool.py`); while
the spool holds anything, new envelopes are journaled behind it so order is kept, and a replay
loop sends the spool in order once the broker answers again, including the spool left by an
earlier run of the collector. If the in-memory queue itself is full (sender thread starved),
the caller spills the queue to the spool instead of dropping. Only a hard kill loses what is
still in memory (at most `linger_s` worth of events).

Routing: every row goes to its home partition, Kafka's murmur2 partition of its routing value
(`request_id` for requests, `gpu_uuid` for GPU samples; `costpipe.schemas.envelope`), so a
request id sent twice (a retry through another collector, a replay) always meets its first copy
in one partition, where the worker de-duplicates it. Rows are grouped per partition into
envelopes; each envelope's key is its first row's routing value, so the murmur2 partitioner puts
it, and its replay from the spool, in that partition.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, Producer

from costpipe.collectors.spool import Spool, SpoolBusyError, SpoolRecord
from costpipe.core import metrics
from costpipe.core.kafka_clients import (
    confluent_producer,
    denied_hint,
    is_security_problem,
    security_hint,
)
from costpipe.core.settings import Settings
from costpipe.schemas.codec import conform, encode_arrow, encode_envelopes
from costpipe.schemas.envelope import headers_for, heartbeat_headers, home_partitions
from costpipe.schemas.records import GPU_SAMPLE, REQUEST_EVENT

log = logging.getLogger(__name__)
_CLIENT_LOG = logging.getLogger("costpipe.kafka.producer")
_CLIENT_LOG.addFilter(lambda record: not is_security_problem(record.getMessage()))

REPLAY_CHUNK = 256
ROUTE_BY = {"request_event": "request_id", "gpu_sample": "gpu_uuid"}  # the home of a row
MAX_BACKOFF_S = 5.0
SECURITY_WARN_EVERY_S = 60.0  # a refused password or a denied topic: one line a minute
RECREATE_EVERY_S = 5.0
SECURITY_BLOCK_S = 30.0  # a flush stops waiting while the last refusal is this recent
_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
           KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}


@dataclass
class _FlushRequest:
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _ReplayChunk:
    records: list[SpoolRecord]
    outcome: list[bool | None]

    def finished(self) -> bool:
        return all(o is not None for o in self.outcome)


class BatchingProducer:
    """Queue → Arrow envelopes → idempotent, compressed Kafka producer, with a disk spool."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        schema: pa.Schema = REQUEST_EVENT,
        record: str = "request_event",
        *,
        spool_dir: Path | None = None,
        metrics: bool = True,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        linger_s: float = 0.2,
        max_queue: int = 200_000,
        delivery_timeout_s: float = 15.0,
        route_by: str | None = "auto",
        heartbeat: bool | None = None,
    ) -> None:
        self.topic = topic
        self.schema = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
        self._headers = headers_for("arrow", record)
        self._max_rows = max_rows or settings.kafka.envelope_rows
        self._max_bytes = max_bytes or settings.kafka.envelope_bytes
        self._linger_s, self._max_queue = linger_s, max_queue
        self._key_prefix = f"{socket.gethostname()}/".encode()
        self._route_by = ROUTE_BY.get(record) if route_by == "auto" else route_by
        # Idle heartbeats from request producers only: a GPU sampler reports all the time,
        # and one host's heartbeat cannot speak for other hosts' GPUs.
        wanted = record == "request_event" if heartbeat is None else heartbeat
        self._heartbeat_s = settings.collectors.heartbeat_seconds if wanted else 0.0
        self._heartbeat_lag_us = int(settings.collectors.heartbeat_lag_seconds * 1_000_000)
        self._last_emit = self._last_heartbeat = time.monotonic()
        self._hold_back: Callable[[], dt.datetime | None] | None = None
        self._empty = encode_arrow(self.schema.empty_table())
        self._partitions = settings.topics.partitions  # refreshed from the topic's metadata
        self._partitions_at = float("-inf")
        self._metrics = metrics
        self._labels = (topic,)
        self._bytes_at = float("-inf")
        self._config = confluent_producer(
            settings,
            **{
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                "queue.buffering.max.messages": 100_000,
                "reconnect.backoff.max.ms": 1000,
                "partitioner": "murmur2_random",  # Java's default: key -> home partition
                "logger": _CLIENT_LOG,  # security failures: our one line, not librdkafka's
                "error_cb": self._client_error,
            },
        )
        self._settings = settings
        self._warned_at: dict[str, float] = {}
        self._recreated_at = float("-inf")
        self._blocked_at: float | None = None
        self._in_flight = 0
        self._producer = Producer(self._config)
        folder = spool_dir or Path(settings.state_dir) / "spool" / topic
        try:
            self._spool = Spool(folder)
        except SpoolBusyError:
            # Another collector on this host owns the folder: keep a private one beside it.
            self._spool = Spool(Path(folder) / f"pid-{os.getpid()}-{id(self):x}")
        self._queue: deque[Mapping[str, Any] | pa.RecordBatch | pa.Table] = deque()
        self._queued_rows = 0  # batch rows since the last drain (a wake-up hint, not exact)
        self._wake = threading.Event()
        self._flushes: deque[_FlushRequest] = deque()
        self._spill_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._replay: _ReplayChunk | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self._stats = {"sent": 0, "spooled": 0, "replayed": 0, "failed": 0}
        self._thread = threading.Thread(
            target=self._run, name=f"costpipe-producer-{topic}", daemon=True
        )
        self._thread.start()
        ref = weakref.ref(self)
        atexit.register(lambda: (p := ref()) is not None and p.close())

    # ------------------------------------------------------------------ caller side

    def emit(self, event: Mapping[str, Any]) -> None:
        """Queue one event; returns at once (the sender thread does the work)."""
        self._last_emit = time.monotonic()
        queue = self._queue
        queue.append(event)
        queued = len(queue)
        if queued >= self._max_queue:
            self._spill()
        if queued >= self._max_rows:
            self._wake.set()

    def emit_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Queue a whole Arrow batch (columns missing from it are sent as nulls)."""
        if batch.num_rows == 0:
            return
        self._last_emit = time.monotonic()
        self._queue.append(batch)
        self._queued_rows += batch.num_rows
        if self._queued_rows >= self._max_rows:  # else the linger bound sends it
            self._wake.set()
        if len(self._queue) >= self._max_queue:
            self._spill()

    def hold_back(self, oldest_in_flight: Callable[[], dt.datetime | None]) -> None:
        """Heartbeats never claim event time past what this returns (the start of the oldest
        call still in flight, whose event will be stamped with it)."""
        self._hold_back = oldest_in_flight

    def flush(self, timeout: float = 30.0) -> None:
        """Send everything queued; try to replay the spool; what is left stays spooled."""
        if self._closed or not self._thread.is_alive():
            return
        request = _FlushRequest(time.monotonic() + timeout)
        self._flushes.append(request)
        self._wake.set()
        request.done.wait(timeout + 1.0)

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then journal whatever Kafka still holds, and stop the sender thread."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 5.0)
        self._spool.close()

    @property
    def stats(self) -> dict[str, int]:
        try:
            queued = sum(_rows(item) for item in list(self._queue))
        except RuntimeError:  # the sender thread changed the deque mid-copy
            queued = len(self._queue)
        return {
            **self._stats,
            "queued": queued,
            "in_flight": self._in_flight,  # handed to the Kafka client, not yet delivered
            "spool_pending": self._spool.pending_rows,
        }

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        while True:
            replaying = self._replay is not None or not self._spool.empty
            woken = self._wake.wait(0.02 if replaying else self._linger_s)
            self._wake.clear()
            try:
                # Woken by a full envelope's worth of rows: the remainder waits for more rows
                # or for the linger bound. A timeout, flush or stop sends everything.
                self._refresh_partitions()
                self._drain(keep_tail=woken and not replaying and not self._flushes
                            and not self._stop.is_set())
                self._producer.poll(0)
                self._replay_step()
                self._maybe_heartbeat()
                if self._flushes:
                    self._serve_flushes()
                if self._metrics:
                    self._update_gauges()
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.fatal():
                    self._warn_if_denied(error)  # e.g. no idempotent-write right at all
                    self._recreate_producer()
                else:
                    log.exception("producer for %s hit an error; continuing", self.topic)
            except Exception:  # keep sending; the error is logged, data stays queued/spooled
                log.exception("producer for %s hit an error; continuing", self.topic)
            if self._stop.is_set():
                self._shutdown()
                return

    def _maybe_heartbeat(self) -> None:
        """Idle for heartbeat_seconds with nothing queued, spooled or in flight: tell every
        partition that event time has reached now - heartbeat_lag (sent after all data, in
        order; an envelope still in flight could fail into the spool and come after it)."""
        now = time.monotonic()
        if (self._heartbeat_s <= 0 or now - self._last_emit < self._heartbeat_s
                or now - self._last_heartbeat < self._heartbeat_s or self._queue
                or self._in_flight or not self._spool.empty or self._replay is not None):
            return
        self._last_heartbeat = now
        until = int(time.time() * 1_000_000) - self._heartbeat_lag_us
        oldest = self._hold_back() if self._hold_back is not None else None
        if oldest is not None:
            until = min(until, int(oldest.timestamp() * 1_000_000))
        try:
            for partition in range(self._partitions):
                self._producer.produce(self.topic, value=self._empty, partition=partition,
                                       headers=heartbeat_headers(until))
        except (BufferError, KafkaException):
            pass  # heartbeats are not data: the next one will do

    def _update_gauges(self) -> None:
        metrics.QUEUE_DEPTH.labels(*self._labels).set(len(self._queue))
        metrics.SPOOL_PENDING.labels(*self._labels).set(self._spool.pending_rows)
        metrics.SPOOL_RECORDS.labels(*self._labels).set(self._spool.pending_records)
        now = time.monotonic()
        if now - self._bytes_at >= 1.0:  # stat()s the segments: at most once a second
            self._bytes_at = now
            metrics.SPOOL_BYTES.labels(*self._labels).set(self._spool.pending_bytes())

    def _drain(self, keep_tail: bool = False) -> None:
        """Turn queued items into envelopes of up to max_rows rows, in queue order.

        Consecutive items are coalesced (events and batches alike) and grouped per home
        partition: the worker's cost is mostly per message, so a caller that hands over many
        small batches still gets full envelopes. With `keep_tail`, a partition's rows short of
        a full envelope stay queued (first in line for the next drain). Items are popped one at
        a time (the caller may spill the same deque concurrently), and whatever was popped is
        dispatched even if a later step fails.
        """
        queue = self._queue
        self._queued_rows = 0
        events: list[Mapping[str, Any]] = []
        pending: dict[int, list[pa.Table]] = {}
        counts: dict[int, int] = {}

        def take(table: pa.Table | None) -> None:
            if table is None or table.num_rows == 0:
                return
            for partition, part in self._by_partition(table):
                pending.setdefault(partition, []).append(part)
                counts[partition] = counts.get(partition, 0) + part.num_rows
                if counts[partition] >= self._max_rows:
                    ship(partition, keep_tail=True)

        def ship(partition: int, keep_tail: bool) -> None:
            tables = pending.pop(partition, [])
            counts.pop(partition, None)
            if not tables:
                return
            whole = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            full = whole.num_rows - whole.num_rows % self._max_rows if keep_tail \
                else whole.num_rows
            self._dispatch(whole.slice(0, full))
            if full < whole.num_rows:
                pending[partition] = [whole.slice(full)]
                counts[partition] = whole.num_rows - full

        try:
            while True:
                try:
                    item = queue.popleft()
                except IndexError:
                    break
                if isinstance(item, Mapping):
                    events.append(item)
                    if len(events) >= self._max_rows:
                        batch, events = events, []
                        take(self._to_batch(batch))
                    continue
                if events:
                    batch, events = events, []
                    take(self._to_batch(batch))
                try:
                    take(self._conform(item))
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    for row in item.to_pylist():  # rare: a batch that does not fit the schema
                        self._reject(row, str(exc))
        finally:
            if events:
                take(self._to_batch(events))
            for partition in list(pending):
                ship(partition, keep_tail=keep_tail)
            for tables in pending.values():  # short of an envelope, kept back for next drain
                queue.appendleft(tables[0] if len(tables) == 1 else pa.concat_tables(tables))
                self._queued_rows += sum(t.num_rows for t in tables)

    def _by_partition(self, table: pa.Table) -> list[tuple[int, pa.Table]]:
        """(home partition, its rows) for a conformed table; one group when not routed."""
        if self._route_by is None or self._partitions <= 1:
            return [(0, table)]
        homes = home_partitions(table.column(self._route_by), self._partitions)
        if (homes == homes[0]).all():
            return [(int(homes[0]), table)]
        order = np.argsort(homes, kind="stable")
        table, homes = table.take(pa.array(order)), homes[order]
        starts = np.flatnonzero(np.r_[True, homes[1:] != homes[:-1]])
        ends = np.r_[starts[1:], len(homes)]
        return [(int(homes[a]), table.slice(int(a), int(b - a)))
                for a, b in zip(starts, ends, strict=True)]

    def _refresh_partitions(self) -> None:
        """The topic's real partition count (it may differ from settings on an existing
        cluster); checked at most once a minute, kept when the broker does not answer."""
        now = time.monotonic()
        if self._route_by is None or now - self._partitions_at < 60.0:
            return
        self._partitions_at = now
        try:
            topic = self._producer.list_topics(self.topic, timeout=0.5).topics.get(self.topic)
        except KafkaException:
            return
        if topic is not None and topic.partitions and topic.error is None:
            self._partitions = len(topic.partitions)

    def _to_batch(self, events: list[Mapping[str, Any]]) -> pa.Table | None:
        try:
            return pa.Table.from_pylist(events, schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            good: list[Mapping[str, Any]] = []
            for event in events:  # rare path: find the bad ones, keep them on disk
                try:
                    pa.Table.from_pylist([event], schema=self.schema)
                    good.append(event)
                except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                    self._reject(event, str(exc))
            return pa.Table.from_pylist(good, schema=self.schema) if good else None

    def _conform(self, data: pa.RecordBatch | pa.Table) -> pa.Table:
        return conform(data, self.schema)

    def _reject(self, event: Mapping[str, Any], reason: str) -> None:
        line = json.dumps({"reason": reason, "event": event}, default=str)
        with open(self._spool.folder / "rejected.jsonl", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self._count("failed", 1)
        log.warning("event for %s could not be encoded (%s); kept in rejected.jsonl",
                    self.topic, reason)

    def _dispatch(self, table: pa.Table | None) -> None:
        """Send one partition's rows as envelopes keyed by their first row's routing value."""
        if table is None or table.num_rows == 0:
            return
        start = 0
        for payload, rows in encode_envelopes(table, self._max_rows, self._max_bytes):
            key = self._routing_key(table, start)
            start += rows
            try:
                self._send_envelope(key, payload, rows)
            except Exception:  # never drop what left the queue: the replay sends it later
                log.exception("sending to %s failed; spooling %d events", self.topic, rows)
                self._to_spool([(key, payload, rows)])

    def _routing_key(self, table: pa.Table, row: int) -> bytes:
        if self._route_by is None:
            return self._key_prefix
        value = table.column(self._route_by)[row].as_py()
        return b"" if value is None else str(value).encode()

    def _send_envelope(self, key: bytes, payload: bytes, rows: int) -> None:
        if not self._spool.empty or self._replay is not None:
            self._to_spool([(key, payload, rows)])  # keep order behind what is spooled
            return
        self._produce(key, payload, rows)

    def _produce(self, key: bytes, payload: bytes, rows: int) -> None:
        try:
            self._producer.produce(
                self.topic, payload, key, headers=self._headers,
                on_delivery=lambda err, msg, rows=rows: self._delivered(err, msg, rows),
            )
            self._in_flight += rows
        except BufferError:
            self._to_spool([(key, payload, rows)])
        except KafkaException as exc:
            log.warning("produce to %s failed (%s); spooling", self.topic, exc)
            self._to_spool([(key, payload, rows)])

    def _delivered(self, err: KafkaError | None, msg: Any, rows: int) -> None:
        self._in_flight -= rows
        if err is None:
            self._blocked_at = None
            self._count("sent", rows)
            return
        self._warn_if_denied(err)
        if err.fatal():
            self._recreate_producer()
        self._to_spool([(msg.key() or b"", msg.value(), rows)])

    def _client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback: credentials or TLS trust problems in one line."""
        hint = security_hint(self._settings, error.str())
        if hint is not None:
            self._warn_security("security", hint + "; events are kept in the spool meanwhile")

    def _warn_if_denied(self, error: KafkaError) -> None:
        if error.code() in _DENIED:
            self._warn_security("denied", denied_hint(
                self._settings, f"topic {self.topic}", "WRITE") + "; events are kept in the "
                "spool and sent once it does")

    def _blocked(self) -> bool:
        """The cluster refused this client's credentials or ACLs lately (nothing delivered
        since)."""
        return self._blocked_at is not None and \
            time.monotonic() - self._blocked_at < SECURITY_BLOCK_S

    def _warn_security(self, kind: str, text: str) -> None:
        now = time.monotonic()
        self._blocked_at = now
        if now - self._warned_at.get(kind, float("-inf")) >= SECURITY_WARN_EVERY_S:
            self._warned_at[kind] = now
            log.warning("%s", text)

    def _to_spool(self, records: list[tuple[bytes, bytes, int]]) -> None:
        rows = self._spool.append(records)
        self._count("spooled", rows)

    # ------------------------------------------------------------------ replay

    def _replay_step(self) -> None:
        """Send the next spooled chunk; advance the cursor only past delivered records."""
        chunk = self._replay
        if chunk is not None:
            self._producer.poll(0)
            if not chunk.finished():
                return
            self._finish_chunk(chunk)
        if self._spool.empty or time.monotonic() < self._retry_at:
            return
        records = self._spool.read(REPLAY_CHUNK)
        if not records:
            return
        chunk = _ReplayChunk(records, [None] * len(records))
        self._replay = chunk
        for index, rec in enumerate(records):
            try:
                self._producer.produce(
                    self.topic, rec.value, rec.key, headers=self._headers,
                    on_delivery=lambda err, _msg, i=index, c=chunk: self._replayed(c, i, err),
                )
            except (BufferError, KafkaException):
                for rest in range(index, len(records)):
                    chunk.outcome[rest] = False
                break

    def _replayed(self, chunk: _ReplayChunk, index: int, err: KafkaError | None) -> None:
        chunk.outcome[index] = err is None
        if err is not None:
            self._warn_if_denied(err)

    def _finish_chunk(self, chunk: _ReplayChunk) -> None:
        self._replay = None
        delivered = 0
        for ok in chunk.outcome:
            if not ok:
                break
            delivered += 1
        if delivered:
            self._blocked_at = None
            done = chunk.records[:delivered]
            rows = sum(r.rows for r in done)
            self._spool.commit(done[-1], rows, delivered)
            self._count("replayed", rows)
            self._count("sent", rows)
        if delivered < len(chunk.records):
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        else:
            self._backoff = 0.5

    def _serve_flushes(self) -> None:
        """Wait for delivery until the earliest flush deadline, or until the cluster refuses
        the credentials or the ACLs (waiting would not help: the data stays spooled)."""
        deadline = min(r.deadline for r in self._flushes)
        self._drain()
        while len(self._producer) and time.monotonic() < deadline and not self._blocked():
            self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
        while not self._spool.empty or self._replay is not None:
            if time.monotonic() >= deadline or self._blocked():
                break
            if self._replay is not None:
                self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
                if not self._replay.finished():
                    continue
            if self._retry_at > time.monotonic() and self._replay is None:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            self._replay_step()
        while self._flushes:
            self._flushes.popleft().done.set()

    def _shutdown(self) -> None:
        """Last words: anything Kafka still holds is purged and spooled (callbacks do it)."""
        self._drain()
        self._producer.flush(1.0)
        self._producer.purge(in_queue=True, in_flight=True)
        self._producer.poll(0)
        self._producer.flush(0)
        chunk = self._replay
        if chunk is not None:  # unfinished replay: those records are still in the spool
            for i, outcome in enumerate(chunk.outcome):
                if outcome is None:
                    chunk.outcome[i] = False
            self._finish_chunk(chunk)
        while self._flushes:
            self._flushes.popleft().done.set()

    def _spill(self) -> None:
        """Caller side, queue full: journal the queue now rather than drop or block."""
        with self._spill_lock:
            if len(self._queue) < self._max_queue:
                return
            taken: list[Any] = []
            while self._queue and len(taken) < self._max_queue:
                taken.append(self._queue.popleft())
            records: list[tuple[bytes, bytes, int]] = []
            events = [e for e in taken if isinstance(e, Mapping)]
            tables = [self._conform(t) for t in taken if not isinstance(t, Mapping)]
            batch = self._to_batch(events) if events else None
            for table in [*(t for t in [batch] if t is not None), *tables]:
                for _partition, part in self._by_partition(table):
                    start = 0
                    for payload, rows in encode_envelopes(part, self._max_rows,
                                                          self._max_bytes):
                        records.append((self._routing_key(part, start), payload, rows))
                        start += rows
            self._to_spool(records)
            log.warning("producer queue for %s full: %d events spilled to the spool",
                        self.topic, sum(r[2] for r in records))

    def _recreate_producer(self) -> None:
        """A new client after a fatal error; at most one per RECREATE_EVERY_S (a fatal error
        that persists, such as a missing ACL, would otherwise spin)."""
        wait = self._recreated_at + RECREATE_EVERY_S - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)
        self._recreated_at = time.monotonic()
        log.info("producer for %s hit a fatal error; starting a new one", self.topic)
        self._producer = Producer(self._config)

    def _count(self, name: str, rows: int) -> None:
        self._stats[name] += rows
        if self._metrics:
            counter = {
                "sent": metrics.EVENTS_SENT,
                "spooled": metrics.EVENTS_SPOOLED,
                "replayed": metrics.EVENTS_REPLAYED,
                "failed": metrics.EVENTS_FAILED,
            }[name]
            counter.labels(*self._labels).inc(rows)


def _rows(item: Any) -> int:
    return 1 if isinstance(item, Mapping) else int(item.num_rows)


_shared: dict[str, BatchingProducer] = {}
_shared_lock = threading.Lock()


def producer_for(settings: Settings, kind: Literal["requests", "gpu"]) -> BatchingProducer:
    """The process-wide producer for a topic kind (one per topic, created on first use)."""
    topic = settings.topics.requests if kind == "requests" else settings.topics.gpu
    with _shared_lock:
        producer = _shared.get(topic)
        if producer is None or producer._closed:
            if kind == "requests":
                producer = BatchingProducer(settings, topic, REQUEST_EVENT, "request_event")
            else:
                producer = BatchingProducer(settings, topic, GPU_SAMPLE, "gpu_sample")
            _shared[topic] = producer
        return producer


def close_shared(timeout: float = 30.0) -> None:
    """Flush and close every shared producer (before the broker they talk to goes away)."""
    with _shared_lock:
        producers = list(_shared.values())
        _shared.clear()
    for producer in producers:
        producer.close(timeout)
