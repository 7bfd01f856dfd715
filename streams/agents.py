"""Faust agents wiring the pure stages together (one job each, all batch-at-a-time).

requests --costing--> costs (external rows) + partials + gpuwork (own-model rows)
gpu --gpu_forward--> gpuwork (samples, keyed by GPU)
gpuwork --allocator--> costs (allocated, idle, correction rows) + partials
partials --merger--> windows --alerting--> alerts --webhook--> the alert webhook
Anything undecodable, invalid, duplicated or failing a stage --> deadletter.

Every stage is keyed and runs once per partition of its input (docs/architecture.md): requests
by request_id, gpuwork by GPU, partials by window key, costs by record_id. Only alerting is one
instance: budgets and shares are over all keys, and its input is small (one row per window and
key).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import weakref
from collections.abc import Iterator
from typing import Any

import faust
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from faust.streams import _current_event

import costpipe.streams.health
import costpipe.streams.watchdog  # noqa: F401  (registers the progress watchdog)
from costpipe.core import limits
from costpipe.core.metrics import COST_RECORDS, DUPLICATE_REQUESTS, STAGE
from costpipe.core.settings import get_settings
from costpipe.lake.layout import open_lake
from costpipe.schemas import envelope
from costpipe.schemas.codec import conform, decode, encode_arrow, encode_envelopes
from costpipe.schemas.envelope import (
    ARROW,
    HEARTBEAT_RECORD,
    OFFSET_HEADER,
    REPLAY_OF_HEADER,
    REROUTED_FROM_HEADER,
    SOURCE_HEADER,
    WATERMARK_HEADER,
    header_value,
    headers_for,
    home_partitions,
)
from costpipe.schemas.records import COST_RECORD, GPU_SAMPLE, REQUEST_EVENT
from costpipe.streams import faust_workarounds
from costpipe.streams.alerts import AlertEngine, alerts_table, post_webhook
from costpipe.streams.allocation.allocator import GpuAllocator
from costpipe.streams.app import app, raw_topic
from costpipe.streams.costing import cost_records
from costpipe.streams.deadletter import (
    dead_letter_message,
    dead_letters,
    duplicate_letters,
    failure_letter,
    guarded,
)
from costpipe.streams.dedup import IndexJournal, RequestIdIndex, index_from_journal
from costpipe.streams.outputs import Outputs, split_by
from costpipe.streams.state import PartitionView, forget_local
from costpipe.streams.windows import WindowMerger

log = logging.getLogger("costpipe.streams")
settings = get_settings()
topics = settings.topics
P = topics.partitions
_counts = topics.partition_counts()

requests_topic = raw_topic(topics.requests, partitions=P)
gpu_topic = raw_topic(topics.gpu, partitions=P)
costs_topic = raw_topic(topics.costs, partitions=P)
partials_topic = raw_topic(topics.partials, partitions=_counts[topics.partials])
gpuwork_topic = raw_topic(topics.gpuwork, partitions=_counts[topics.gpuwork])
windows_topic = raw_topic(topics.windows, partitions=P)
alerts_topic = raw_topic(topics.alerts, partitions=P)
deadletter_topic = raw_topic(topics.deadletter, partitions=P)

# JSON both ways: Faust's changelog recovery decodes values as JSON whatever the schema says,
# so state values are JSON-native (dicts, strings), never raw bytes (faust_workarounds).
_STATE = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
allocator_table = app.Table("gpu-allocator", default=None, schema=_STATE,
                            partitions=_counts[topics.gpuwork])
merger_table = app.Table("window-merger", default=None, schema=_STATE,
                         partitions=_counts[topics.partials])
alerting_table = app.Table("alerting", default=None, schema=_STATE, partitions=P)

ENVELOPE_ROWS = settings.kafka.envelope_rows
ENVELOPE_BYTES = settings.kafka.envelope_bytes
MAX_MESSAGE_BYTES = limits.max_message_bytes(settings.kafka)
RETRIES = settings.ingest.poison_retries
ALERT_STATE_SECONDS = 2.0  # how often alerting saves its state (and acknowledges its input)
outputs = Outputs(costs=costs_topic, partials=partials_topic, gpuwork=gpuwork_topic,
                  windows_seconds=settings.windows.seconds, partitions=_counts,
                  envelope_rows=ENVELOPE_ROWS, envelope_bytes=ENVELOPE_BYTES)
_background: set[asyncio.Task[Any]] = set()


# ------------------------------------------------------------------ shared steps


def _raw_rows(value: bytes | None) -> pa.RecordBatch | None:
    try:
        return pa.ipc.open_stream(pa.py_buffer(value)).read_all().combine_chunks().to_batches()[0]
    except Exception:  # only used to render rejected rows readably
        return None


async def _send_letters(letters: pa.RecordBatch, topic: str) -> None:
    value, headers = dead_letter_message(letters)
    await deadletter_topic.send(key=topic.encode(), value=value, headers=headers)


async def _decode_or_dead_letter(event: Any, schema: pa.Schema) -> pa.RecordBatch | None:
    message = event.message
    decoded = decode(event.value, event.headers, schema, max_bytes=MAX_MESSAGE_BYTES,
                     ingest=settings.ingest)
    letters = dead_letters(decoded, event.value, _raw_rows(event.value)
                           if any(r.row is not None for r in decoded.rejections) else None,
                           message.topic, message.partition, message.offset)
    if letters is not None:
        await _send_letters(letters, message.topic)
        log.warning("dead-lettered %d problem(s) from %s[%d]@%d: %s", letters.num_rows,
                    message.topic, message.partition, message.offset, decoded.rejections[0])
    return decoded.batch if decoded.batch.num_rows else None


async def _process(stage: str, event: Any, work: Any) -> None:
    """Run one message's work, in offset order; a message that keeps failing goes to the dead
    letters."""
    message = event.message
    if faust_workarounds.held_back(app, message):
        return

    async def failed(error: BaseException, attempts: int) -> None:
        letter = failure_letter(stage, attempts, error, message.topic, message.partition,
                                message.offset, header_value(event.headers, "costpipe-encoding"),
                                event.value)
        await _send_letters(letter, message.topic)
        log.error("%s: %s[%d]@%d failed %d times; dead-lettered, moving on", stage,
                  message.topic, message.partition, message.offset, attempts)

    await guarded(stage, RETRIES, lambda: work(event), failed)


def _caught_up(msg: Any) -> bool:
    """Whether `msg` was its partition's last message at the latest fetch (no backlog)."""
    try:
        high = app.consumer.highwater(msg.tp)
    except Exception:  # no fetch position known yet: behave as before (may count as idle)
        return True
    return high is None or msg.offset + 1 >= high


def _count_costs(table: pa.Table) -> None:
    if table.num_rows:
        kinds = pc.value_counts(table.column("record_type")).to_pylist()
        for item in kinds:
            COST_RECORDS.labels(item["values"]).inc(item["counts"])


class _PerPartition:
    """One stage object per assigned partition, rebuilt after every rebalance."""

    def __init__(self, make: Any, table: Any = None) -> None:
        self.make, self.table = make, table
        self.items: dict[int, Any] = {}
        self.generation: int | None = None

    def get(self, message: Any) -> Any:
        if message.generation_id != self.generation:
            if self.generation is not None and self.table is not None:
                owned = {tp.partition for tp in app.consumer.assignment()
                         if tp.topic == message.topic}
                forget_local(self.table, set(self.items) - owned)
            self.items.clear()
            self.generation = message.generation_id
        item = self.items.get(message.partition)
        if item is None:
            item = self.items[message.partition] = self.make(message.partition)
        return item

    def forget(self, message: Any) -> None:
        """Drop the partition's object (the next message rebuilds it from the table)."""
        self.items.pop(message.partition, None)

    @contextlib.contextmanager
    def writes_held(self, message: Any, item: Any) -> Iterator[None]:
        """`item`'s table writes wait until the block is done (its output delivered, see
        `costpipe.streams.state`); on failure they are dropped, and so is `item`, whose
        caches saw them (the retry rebuilds it from the table)."""
        item.store.hold()
        try:
            yield
        except BaseException:
            item.store.discard()
            self.forget(message)
            raise
        item.store.release()


# ------------------------------------------------------------------ costing


class _Dedup:
    """The request-id index and journal of one requests partition (`costpipe.streams.dedup`)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.journal = IndexJournal(open_lake(settings.lake.location, settings.lake),
                                    topics.requests, partition)
        self.index: RequestIdIndex | None = None
        self.horizon_us = settings.ingest.dedup_horizon_seconds * 1_000_000

    async def ready(self, first_offset: int) -> RequestIdIndex:
        """Load the journal, then read the partition's messages it does not cover yet."""
        if self.index is None:
            rows, last = await asyncio.to_thread(self.journal.load, self.horizon_us)
            index = index_from_journal(rows, self.horizon_us)
            if last + 1 < first_offset:
                await asyncio.to_thread(_read_gap, index, self.partition, last + 1,
                                        first_offset)
            self.index = index
        return self.index

    async def flush(self, force: bool = False) -> None:
        if force or self.journal.due():
            taken = self.journal.take()
            if taken is not None:
                await asyncio.to_thread(self.journal.write, *taken)


def _read_gap(index: RequestIdIndex, partition: int, start: int, end: int) -> None:
    """Add the ids of requests[partition] offsets start..end-1 to `index` (their first copies
    were costed by an earlier owner after its journal's last segment)."""
    from confluent_kafka import Consumer, TopicPartition

    from costpipe.core.kafka_clients import confluent_consumer

    consumer = Consumer(confluent_consumer(settings, f"{settings.servers.worker_group}-dedup",
                                           **{"enable.auto.commit": False}))
    consumer.assign([TopicPartition(topics.requests, partition, start)])
    deadline = time.monotonic() + 120
    try:
        position = start
        while position < end and time.monotonic() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error() or message.offset() >= end:
                    position = max(position, message.offset() + 1)
                    continue
                position = message.offset() + 1
                batch = decode(message.value(), message.headers(), REQUEST_EVENT,
                               ingest=settings.ingest).batch
                if batch.num_rows:
                    homes = home_partitions(batch.column("request_id"), P)
                    batch = batch.filter(pa.array(homes == partition))
                    index.check(batch.column("request_id"),
                                batch.column("timestamp").cast(pa.int64()).to_numpy(),
                                message.offset(),
                                envelope.replay_origin(message.headers(), topics.requests,
                                                       partition))
    finally:
        consumer.close()


dedups = _PerPartition(_Dedup)


async def _reroute(batch: pa.RecordBatch, homes: np.ndarray, msg: Any, topic: Any,
                   record: str, key: str) -> pa.RecordBatch:
    """Send rows that arrived outside their home partition there (a third-party producer that
    keyed them otherwise); returns the rows that are at home. Each request id must meet its
    copies in one partition, and each GPU's samples must arrive in order."""
    if (homes == msg.partition).all():
        return batch
    table = pa.Table.from_batches([batch])
    headers = [*headers_for(ARROW, record),
               (REROUTED_FROM_HEADER, f"{msg.topic}:{msg.partition}:{msg.offset}".encode())]
    replay_of = header_value(msg.headers, REPLAY_OF_HEADER)
    if replay_of is not None:  # still a replay where it lands
        headers.append((REPLAY_OF_HEADER, replay_of.encode()))
    for partition, rows in enumerate(split_by(table, homes, P)):
        if rows.num_rows == 0 or partition == msg.partition:
            continue
        for payload, _ in encode_envelopes(rows, ENVELOPE_ROWS, ENVELOPE_BYTES):
            await topic.send(key=str(rows.column(key)[0].as_py()).encode(), value=payload,
                             partition=partition, headers=headers)
    return batch.filter(pa.array(homes == msg.partition))


async def _cost(event: Any) -> None:
    msg = event.message
    dedup = dedups.get(msg)
    index = await dedup.ready(msg.offset)
    heartbeat = envelope.heartbeat(event.headers)
    batch = await _decode_or_dead_letter(event, REQUEST_EVENT)
    if batch is None:
        if heartbeat is None:
            return
        batch = pa.RecordBatch.from_pylist([], schema=REQUEST_EVENT)
    ts = batch.column("timestamp").cast(pa.int64())
    watermark = heartbeat if heartbeat is not None else pc.max(ts).as_py()
    if batch.num_rows:
        batch = await _reroute(batch, home_partitions(batch.column("request_id"), P), msg,
                               requests_topic, "request_event", "request_id")
        STAGE["costing"].rows_in(batch.num_rows)  # duplicates included: they were read
        duplicate, first = index.check(batch.column("request_id"),
                                       batch.column("timestamp").cast(pa.int64()).to_numpy(),
                                       msg.offset,
                                       envelope.replay_origin(event.headers, msg.topic,
                                                              msg.partition))
        if duplicate.any():
            dupes = pa.Table.from_batches([batch]).filter(pa.array(duplicate))
            DUPLICATE_REQUESTS.inc(dupes.num_rows)
            await _send_letters(duplicate_letters(dupes, first[duplicate].tolist(), msg.topic,
                                                  msg.partition, msg.offset), msg.topic)
            batch = batch.filter(pa.array(~duplicate))
        dedup.journal.record(batch.column("request_id"), msg.offset,
                             batch.column("timestamp").cast(pa.int64()).to_numpy())
    else:
        dedup.journal.record(pa.array([], pa.string()), msg.offset, np.zeros(0, np.int64))
    source = f"{msg.topic}:{msg.partition}"
    external, pending = cost_records(batch, settings, msg.partition, msg.offset)
    STAGE["costing"].rows_out(external.num_rows + pending.num_rows)
    caught_up = _caught_up(msg)
    _count_costs(external)
    await outputs.cost_records(external)
    await outputs.window_partials(external, source, msg.offset, watermark, caught_up)
    # Always sent to every GPU partition (maybe with no rows): it carries this partition's
    # watermark, and whether more of it was already waiting (then it cannot be idle).
    await outputs.gpu_work(conform(pending, COST_RECORD), "pending_cost",
                           f"{source}:{msg.offset}", watermark, caught_up)
    await dedup.flush()


@app.agent(requests_topic, concurrency=1)
async def costing(stream: Any) -> None:
    async for event in stream.events():
        await _process("costing", event, _cost)


@app.timer(interval=5.0)
async def flush_dedup_journals() -> None:
    """Write what the request-id journals hold when traffic is quiet."""
    for dedup in list(dedups.items.values()):
        await dedup.flush()


# ------------------------------------------------------------------ GPU samples


async def _forward(event: Any) -> None:
    msg = event.message
    source = f"{msg.topic}:{msg.partition}:{msg.offset}"
    heartbeat = envelope.heartbeat(event.headers)
    if heartbeat is not None:
        for partition in range(_counts[topics.gpuwork]):
            await gpuwork_topic.send(
                key=b"heartbeat", value=encode_arrow(GPU_SAMPLE.empty_table()),
                partition=partition,
                headers=[*headers_for(ARROW, HEARTBEAT_RECORD), (SOURCE_HEADER, source.encode()),
                         (WATERMARK_HEADER, str(heartbeat).encode())])
        return
    batch = await _decode_or_dead_letter(event, GPU_SAMPLE)
    if batch is None:
        return
    batch = await _reroute(batch, home_partitions(batch.column("gpu_uuid"), P), msg,
                           gpu_topic, "gpu_sample", "gpu_uuid")
    if batch.num_rows == 0:
        return
    STAGE["gpu_forward"].rows_in(batch.num_rows)
    STAGE["gpu_forward"].rows_out(batch.num_rows)
    newest = pc.max(batch.column("timestamp").cast(pa.int64())).as_py()
    await outputs.gpu_work(pa.Table.from_batches([batch]), "gpu_sample", source, newest)


@app.agent(gpu_topic, concurrency=1)
async def gpu_forward(stream: Any) -> None:
    async for event in stream.events():
        await _process("gpu_forward", event, _forward)


# ------------------------------------------------------------------ GPU allocation

allocators = _PerPartition(
    lambda p: GpuAllocator(settings, PartitionView(allocator_table, p), _counts[topics.requests],
                           gpu_partitions=_counts[topics.gpu]), allocator_table)


async def _allocate(event: Any) -> None:
    msg = event.message
    gpu = allocators.get(msg)
    record = envelope.record_kind(event.headers)
    source = header_value(event.headers, SOURCE_HEADER) or f"gpuwork:{msg.offset}"
    number, count = envelope.part(event.headers)
    final = number == count
    if gpu.is_replay(source):
        return  # re-forwarded after an upstream restart: already buffered or closed
    with allocators.writes_held(msg, gpu):
        await _allocate_held(event, gpu, record, source, number, count)
    if final:
        gpu.mark_applied(source)


async def _allocate_held(event: Any, gpu: GpuAllocator, record: str | None, source: str,
                         number: int, count: int) -> None:
    """The allocator's work on one message; its state writes are held by the caller until the
    records they stand for are on the broker."""
    msg = event.message
    final = number == count
    stream = source.rsplit(":", 1)[0]
    chunk = source if count == 1 else f"{source}/{number}"
    watermark = envelope.watermark(event.headers)
    late = None
    if record == HEARTBEAT_RECORD:
        gpu.note_samples_until(watermark or 0, stream)
    else:
        table = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
        STAGE["allocator"].rows_in(table.num_rows)
        if record == "gpu_sample":
            gpu.add_samples(table, chunk, stream if final else None)
            if final:
                gpu.note_gpu_source(watermark, stream)
        else:
            late = gpu.add_requests(conform(table, COST_RECORD), chunk)
            if final:
                gpu.note_requests(watermark, stream,
                                  header_value(event.headers, "costpipe-caught-up") != "0")
    out = gpu.close_ready()
    if late is not None and late.num_rows:
        out = pa.concat_tables([conform(late, COST_RECORD), out])
    STAGE["allocator"].rows_out(out.num_rows)
    _count_costs(out)
    sent = await outputs.cost_records(out)
    sent += await outputs.window_partials(out, f"{msg.topic}:{msg.partition}", msg.offset,
                                          _allocator_mark(msg.partition, msg.offset, gpu))
    if out.num_rows:  # closed buckets: their records first, then the state that closed them
        await asyncio.gather(*sent)


_marks_sent: dict[int, tuple[int, float]] = {}  # gpuwork partition -> (mark, wall time)
_marks_held: dict[int, tuple[int, int]] = {}  # gpuwork partition -> (mark, its offset)
ALLOCATOR_MARK_SECONDS = 1.0


def _allocator_mark(partition: int, offset: int, gpu: GpuAllocator) -> int | None:
    """How far this allocator's costs are complete, for the mergers: at most once a second
    (it goes to every partials partition), and only when it moved. A mark held back here
    goes out with the next message or from `send_held_allocator_marks`."""
    mark = gpu.outgoing_watermark()
    last, at = _marks_sent.get(partition, (-(2**62), 0.0))
    now = time.monotonic()
    if mark is None or mark <= last:
        return None
    if now - at < ALLOCATOR_MARK_SECONDS:
        _marks_held[partition] = (mark, offset)
        return None
    _marks_sent[partition] = (mark, now)
    _marks_held.pop(partition, None)
    return mark


@app.timer(interval=ALLOCATOR_MARK_SECONDS)
async def send_held_allocator_marks() -> None:
    """When traffic stops right after a mark was held back, windows must not wait for the
    next message (or for the mergers' idle timeout) to learn it."""
    for partition in list(_marks_held):
        held = _marks_held.pop(partition, None)  # the allocator may have sent it meanwhile
        if held is None:
            continue
        mark, offset = held
        if mark > _marks_sent.get(partition, (-(2**62), 0.0))[0]:
            _marks_sent[partition] = (mark, time.monotonic())
            await outputs.window_partials(COST_RECORD.empty_table(),
                                          f"{topics.gpuwork}:{partition}", offset, mark)


@app.agent(gpuwork_topic, concurrency=1)
async def allocator(stream: Any) -> None:
    async for event in stream.events():
        await _process("allocator", event, _allocate)


# ------------------------------------------------------------------ windows

mergers = _PerPartition(
    lambda p: WindowMerger(settings, PartitionView(merger_table, p), P), merger_table)
_announced: dict[int, int] = {}  # merger partition -> closed-through last sent to alerting


async def _merge(event: Any) -> None:
    msg = event.message
    merge = mergers.get(msg)
    source = header_value(event.headers, SOURCE_HEADER) or "unknown"
    offset = int(header_value(event.headers, OFFSET_HEADER) or msg.offset)
    part = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
    number, count = envelope.part(event.headers)
    with mergers.writes_held(msg, merge):  # closed windows go out before the state
        # The partials message offset names late-delta revisions of evicted windows.
        closed = merge.apply(part, source, offset, envelope.watermark(event.headers),
                             position=msg.offset, final=number == count,
                             caught_up=header_value(event.headers, "costpipe-caught-up") != "0",
                             allocator=source.startswith(f"{topics.gpuwork}:"))
        await _send_windows(msg, merge, closed)
    STAGE["merger"].rows_in(part.num_rows)
    STAGE["merger"].rows_out(closed.num_rows)


async def _send_windows(msg: Any, merge: WindowMerger, closed: pa.Table) -> None:
    """Closed windows (or, when none closed, how far this merger is) to alerting; returns once
    the broker has them."""
    sent = []
    through = None if merge.watermark is None else merge.watermark - merge.lateness_us
    marker = [] if through is None else [(WATERMARK_HEADER, str(through).encode()),
                                         (SOURCE_HEADER, f"{msg.topic}:{msg.partition}".encode())]
    for payload, _ in encode_envelopes(closed, ENVELOPE_ROWS, ENVELOPE_BYTES):
        sent.append(await windows_topic.send(
            key=b"windows", value=payload,
            headers=[*headers_for(ARROW, "window_aggregate"), *marker]))
    window_us = merge.window_us
    if through is not None and (closed.num_rows or through // window_us
                                > _announced.get(msg.partition, -1) // window_us):
        if not closed.num_rows:  # nothing closed here, but alerting must know we are past it
            sent.append(await windows_topic.send(
                key=b"windows", value=encode_arrow(closed),
                headers=[*headers_for(ARROW, "window_aggregate"), *marker]))
        _announced[msg.partition] = through
    if sent:
        await asyncio.gather(*sent)


@app.agent(partials_topic, concurrency=1)
async def merger(stream: Any) -> None:
    async for event in stream.events():
        await _process("merger", event, _merge)


# ------------------------------------------------------------------ alerts


class _Alerting:
    """The one alert engine, its state saved in a changelogged table with the input it covers:
    messages are acknowledged only once the state that includes them is saved."""

    def __init__(self) -> None:
        self.engine: AlertEngine | None = None
        self.marks: dict[str, int] = {}
        self.generation: int | None = None
        self.pending: list[Any] = []
        self.saved_at = time.monotonic()
        self.stream: Any = None  # the agent's no-ack stream, for acknowledging from the timer
        self.lock = asyncio.Lock()  # one event's processing, or one save, at a time

    def load(self, generation: int) -> AlertEngine:
        if self.engine is None or generation != self.generation:
            saved = alerting_table.get("engine")
            self.engine = AlertEngine.from_state(settings, saved and saved.get("engine"))
            self.marks = dict((saved or {}).get("marks", {}))
            self.generation = generation
            self.pending.clear()
        return self.engine

    def complete_through(self) -> dt.datetime | None:
        if len(self.marks) < _counts[topics.partials]:
            return None
        through = min(self.marks.values())
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=through)

    async def save(self, stream: Any) -> None:
        """Inside the stream's iteration only (a table write needs the current event)."""
        if not self.pending or self.engine is None:
            return
        if time.monotonic() - self.saved_at < ALERT_STATE_SECONDS:
            return
        alerting_table["engine"] = {"engine": self.engine.to_state(), "marks": self.marks}
        self.saved_at = time.monotonic()
        pending, self.pending = self.pending, []
        for event in pending:
            await stream.ack(event)

    async def save_when_quiet(self) -> None:
        """No window came for a while (a quiet period, or the last ones before a stop): save
        and acknowledge now rather than at the next window, which may be far away (a stop or
        rebalance waited 10 s for them, then let them go to be read again)."""
        if not self.pending or self.stream is None or app.rebalancing \
                or app.tables.recovery.in_recovery:
            return
        last = self.pending[-1]
        if last.message.generation_id != app.consumer_generation_id or \
                last.message.tp not in app.consumer.assignment():
            return  # from before a rebalance: the partition's owner reads them again
        async with self.lock:
            token = _current_event.set(weakref.ref(last))  # a table write needs an event
            try:
                await self.save(self.stream)
            finally:
                _current_event.reset(token)


_alerting = _Alerting()


async def _alert(event: Any) -> None:
    engine = _alerting.load(event.message.generation_id)
    source = header_value(event.headers, SOURCE_HEADER)
    through = envelope.watermark(event.headers)
    if source is not None and through is not None:
        _alerting.marks[source] = max(through, _alerting.marks.get(source, through))
    windows = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
    fired = engine.on_windows(windows, _alerting.complete_through())
    STAGE["alerting"].rows_in(windows.num_rows)
    STAGE["alerting"].rows_out(len(fired))
    if fired:
        await alerts_topic.send(key=b"alerts", value=encode_arrow(alerts_table(fired)),
                                headers=headers_for(ARROW, "alert"))


@app.agent(windows_topic, concurrency=1)
async def alerting(stream: Any) -> None:
    noack = stream.noack()
    _alerting.stream = noack
    async for event in noack.events():
        async with _alerting.lock:
            await _process("alerting", event, _alert)
            _alerting.pending.append(event)
            await _alerting.save(noack)


@app.timer(interval=ALERT_STATE_SECONDS)
async def save_quiet_alert_state() -> None:
    await _alerting.save_when_quiet()


# ------------------------------------------------------------------ webhook

webhook_table = app.Table("alert-webhook", default=None, schema=_STATE, partitions=P)
POSTED_DAYS = 7  # how long a posted alert id is remembered
_pruned_at = [0.0]


async def _post(event: Any) -> None:
    if not settings.alerts.webhook_url:
        return
    alerts = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all().to_pylist()
    for alert in alerts:
        key = f"posted|{alert['alert_id']}"
        if webhook_table.get(key) is not None:
            continue  # posted before (a re-emitted alert after a crash): once only
        delay = 1.0
        while not await post_webhook(settings.alerts.webhook_url, alert):
            log.warning("webhook did not take alert %s; retrying in %.0f s", alert["alert_id"],
                        delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
        webhook_table[key] = dt.datetime.now(dt.UTC).isoformat()
    if time.monotonic() - _pruned_at[0] > 3600:  # ids older than POSTED_DAYS cannot return
        _pruned_at[0] = time.monotonic()
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=POSTED_DAYS)
        for key in [k for k in list(webhook_table.keys()) if str(k).startswith("posted|")]:
            value = webhook_table.get(key)
            if value is not None and dt.datetime.fromisoformat(value) < cutoff:
                del webhook_table[key]


@app.agent(alerts_topic, concurrency=1)
async def webhook(stream: Any) -> None:
    async for event in stream.events():
        await _process("webhook", event, _post)
