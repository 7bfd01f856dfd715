"""Faust agents wiring the pure stages together (one job each, all batch-at-a-time).

requests --costing--> costs (external rows) + partials + gpuwork (own-model rows)
gpu --gpu_forward--> gpuwork (keeps samples and own-model requests in one order)
gpuwork --allocator--> costs (allocated, idle, correction rows) + partials
partials --merger--> windows --alerting--> alerts (+ log, webhook)
Anything undecodable or invalid --> deadletter.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
import pyarrow as pa
import pyarrow.compute as pc

import costpipe.streams.health  # noqa: F401  (registers the consumer lag timer)
from costpipe.core.metrics import STAGE
from costpipe.core.settings import get_settings
from costpipe.schemas.codec import (
    ARROW,
    HEARTBEAT_RECORD,
    WATERMARK_HEADER,
    conform,
    decode,
    encode_arrow,
    encode_envelopes,
    header_value,
    headers_for,
)
from costpipe.schemas.records import COST_RECORD, GPU_SAMPLE, REQUEST_EVENT
from costpipe.streams.alerts import AlertEngine, alerts_table, post_webhook
from costpipe.streams.allocation.allocator import GpuAllocator
from costpipe.streams.app import app, raw_topic
from costpipe.streams.costing import cost_records
from costpipe.streams.deadletter import dead_letter_message, dead_letters
from costpipe.streams.windows import WindowMerger, partials

log = logging.getLogger("costpipe.streams")
settings = get_settings()
topics = settings.topics

requests_topic = raw_topic(topics.requests)
gpu_topic = raw_topic(topics.gpu)
costs_topic = raw_topic(topics.costs)
_counts = topics.partition_counts()
partials_topic = raw_topic(topics.partials, partitions=_counts[topics.partials])
gpuwork_topic = raw_topic(topics.gpuwork, partitions=_counts[topics.gpuwork])
windows_topic = raw_topic(topics.windows)
alerts_topic = raw_topic(topics.alerts)
deadletter_topic = raw_topic(topics.deadletter)

# JSON both ways: Faust's changelog recovery decodes values as JSON whatever the schema says,
# so state values are JSON-native (dicts, strings), never raw bytes.
_STATE = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")
allocator_table = app.Table("gpu-allocator", default=None, schema=_STATE, partitions=1)
merger_table = app.Table("window-merger", default=None, schema=_STATE, partitions=1)

SOURCE_HEADER = "costpipe-source"
OFFSET_HEADER = "costpipe-source-offset"
PART_HEADER = "costpipe-part"  # "i/n": a partials message split in n (only the last is final)
_background: set[asyncio.Task[Any]] = set()


def _raw_rows(value: bytes | None) -> pa.RecordBatch | None:
    try:
        return pa.ipc.open_stream(pa.py_buffer(value)).read_all().combine_chunks().to_batches()[0]
    except Exception:  # only used to render rejected rows readably
        return None


async def _decode_or_dead_letter(event: Any, schema: pa.Schema) -> pa.RecordBatch | None:
    message = event.message
    decoded = decode(event.value, event.headers, schema)
    letters = dead_letters(decoded, event.value, _raw_rows(event.value)
                           if any(r.row is not None for r in decoded.rejections) else None,
                           message.topic, message.partition, message.offset)
    if letters is not None:
        value, headers = dead_letter_message(letters)
        await deadletter_topic.send(key=message.topic.encode(), value=value, headers=headers)
        log.warning("dead-lettered %d problem(s) from %s[%d]@%d: %s", letters.num_rows,
                    message.topic, message.partition, message.offset, decoded.rejections[0])
    return decoded.batch if decoded.batch.num_rows else None


# As the collectors' producer: the worker's cost is mostly per message, so big envelopes.
ENVELOPE_ROWS = settings.kafka.envelope_rows
ENVELOPE_BYTES = settings.kafka.envelope_bytes


CAUGHT_UP_HEADER = "costpipe-caught-up"


def _caught_up(msg: Any) -> bool:
    """Whether `msg` was its partition's last message at the latest fetch (no backlog)."""
    try:
        high = app.consumer.highwater(msg.tp)
    except Exception:  # no fetch position known yet: behave as before (may count as idle)
        return True
    return high is None or msg.offset + 1 >= high


def _heartbeat(event: Any) -> int | None:
    """Watermark of a heartbeat envelope (collectors.heartbeat), None for ordinary events."""
    if header_value(event.headers, "costpipe-record") != HEARTBEAT_RECORD:
        return None
    text = header_value(event.headers, WATERMARK_HEADER)
    return int(text) if text and text.isdigit() else None


async def _emit_costs(table: pa.Table, source: str, offset: int, watermark: int | None) -> None:
    if table.num_rows == 0 and watermark is None:
        return
    table = conform(table, COST_RECORD)
    # Envelopes of at most ENVELOPE_ROWS rows: a heartbeat that closes a large own-model
    # backlog must not become one message over the producer's max request size.
    for payload, _ in encode_envelopes(table, ENVELOPE_ROWS, ENVELOPE_BYTES):
        await costs_topic.send(key=source.encode(), value=payload,
                               headers=headers_for(ARROW, "cost_record"))
    # Partials of one source message may also exceed the request limit (100k keys at half
    # the maximum rate: 21 MB from the allocator). They go in parts; the merger marks the
    # source offset applied only with the last part, which alone carries the watermark.
    summed = partials(table, settings.windows.seconds)
    parts = [payload for payload, _ in encode_envelopes(summed, ENVELOPE_ROWS, ENVELOPE_BYTES)]
    parts = parts or [encode_arrow(summed)]  # no rows: still sent, for the watermark
    for number, payload in enumerate(parts, start=1):
        headers = [*headers_for(ARROW, "partial"), (SOURCE_HEADER, source.encode()),
                   (OFFSET_HEADER, str(offset).encode())]
        if len(parts) > 1:
            headers.append((PART_HEADER, f"{number}/{len(parts)}".encode()))
        if watermark is not None and number == len(parts):
            headers.append((WATERMARK_HEADER, str(watermark).encode()))
        await partials_topic.send(key=source.encode(), value=payload, headers=headers)


@app.agent(requests_topic, concurrency=1)
async def costing(stream: Any) -> None:
    async for event in stream.events():
        heartbeat = _heartbeat(event)
        batch = await _decode_or_dead_letter(event, REQUEST_EVENT)
        if batch is None:
            if heartbeat is None:
                continue
            batch = pa.RecordBatch.from_pylist([], schema=REQUEST_EVENT)
        msg = event.message
        source = f"{msg.topic}:{msg.partition}"
        external, pending = cost_records(batch, settings, msg.partition, msg.offset)
        STAGE["costing"].rows_in(batch.num_rows)
        STAGE["costing"].rows_out(external.num_rows + pending.num_rows)
        watermark = heartbeat if heartbeat is not None else \
            pc.max(batch.column("timestamp").cast(pa.int64())).as_py()
        await _emit_costs(external, source, msg.offset, watermark)
        # Always sent (maybe with no rows): it carries this partition's watermark, and whether
        # more of the partition was already waiting (then it cannot be idle, see note_requests).
        await gpuwork_topic.send(
            key=b"gpu", value=encode_arrow(conform(pending, COST_RECORD)),
            headers=[*headers_for(ARROW, "pending_cost"),
                     (SOURCE_HEADER, f"{source}:{msg.offset}".encode()),
                     (WATERMARK_HEADER, str(watermark).encode()),
                     (CAUGHT_UP_HEADER, b"1" if _caught_up(msg) else b"0")])


@app.agent(gpu_topic, concurrency=1)
async def gpu_forward(stream: Any) -> None:
    async for event in stream.events():
        msg = event.message
        heartbeat = _heartbeat(event)
        if heartbeat is not None:
            await gpuwork_topic.send(
                key=b"gpu", value=b"",
                headers=[*headers_for(ARROW, HEARTBEAT_RECORD),
                         (SOURCE_HEADER, f"{msg.topic}:{msg.partition}:{msg.offset}".encode()),
                         (WATERMARK_HEADER, str(heartbeat).encode())])
            continue
        batch = await _decode_or_dead_letter(event, GPU_SAMPLE)
        if batch is not None:
            STAGE["gpu_forward"].rows_in(batch.num_rows)
            STAGE["gpu_forward"].rows_out(batch.num_rows)
            await gpuwork_topic.send(
                key=b"gpu", value=encode_arrow(batch),
                headers=[*headers_for(ARROW, "gpu_sample"),
                         (SOURCE_HEADER, f"{msg.topic}:{msg.partition}:{msg.offset}".encode())])


@app.agent(gpuwork_topic, concurrency=1)
async def allocator(stream: Any) -> None:
    gpu = GpuAllocator(settings, allocator_table)
    generation = None
    async for event in stream.events():
        msg = event.message
        if msg.generation_id != generation:
            if generation is not None:
                gpu.reset()  # a rebalance: the table may have changed under the memory cache
            generation = msg.generation_id
        record = header_value(event.headers, "costpipe-record")
        chunk = header_value(event.headers, SOURCE_HEADER) or f"gpuwork:{msg.offset}"
        if gpu.is_replay(chunk):
            continue  # re-forwarded after an upstream restart: already buffered or closed
        if record == HEARTBEAT_RECORD:
            gpu.note_samples_until(int(header_value(event.headers, WATERMARK_HEADER) or 0))
            out = gpu.close_ready()
            STAGE["allocator"].rows_out(out.num_rows)
            await _emit_costs(out, f"{msg.topic}:{msg.partition}", msg.offset, None)
            gpu.mark_applied(chunk)
            continue
        table = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
        STAGE["allocator"].rows_in(table.num_rows)
        late = None
        if record == "gpu_sample":
            gpu.add_samples(table, chunk)
        else:
            late = gpu.add_requests(conform(table, COST_RECORD), chunk)
            wm = header_value(event.headers, WATERMARK_HEADER)
            gpu.note_requests(int(wm) if wm else None, chunk.rsplit(":", 1)[0],
                              header_value(event.headers, CAUGHT_UP_HEADER) != "0")
        out = gpu.close_ready()
        if late is not None and late.num_rows:
            out = pa.concat_tables([conform(late, COST_RECORD), out])
        STAGE["allocator"].rows_out(out.num_rows)
        await _emit_costs(out, f"{msg.topic}:{msg.partition}", msg.offset, None)
        gpu.mark_applied(chunk)


@app.agent(partials_topic, concurrency=1)
async def merger(stream: Any) -> None:
    merge = WindowMerger(settings, merger_table)
    async for event in stream.events():
        source = header_value(event.headers, SOURCE_HEADER) or "unknown"
        offset = int(header_value(event.headers, OFFSET_HEADER) or event.message.offset)
        wm_text = header_value(event.headers, WATERMARK_HEADER)
        part = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
        number, _, count = (header_value(event.headers, PART_HEADER) or "1/1").partition("/")
        # The partials message offset names late-delta revisions of evicted windows.
        closed = merge.apply(part, source, offset, int(wm_text) if wm_text else None,
                             position=event.message.offset, final=number == count)
        STAGE["merger"].rows_in(part.num_rows)
        STAGE["merger"].rows_out(closed.num_rows)
        # Envelopes of at most ENVELOPE_ROWS rows: a window with ~100k keys is one message over
        # the 10 MB request limit otherwise. Shares are computed over the whole window before
        # this split, and alerting evaluates chunks exactly as one message.
        for payload, _ in encode_envelopes(closed, ENVELOPE_ROWS, ENVELOPE_BYTES):
            await windows_topic.send(key=b"windows", value=payload,
                                     headers=headers_for(ARROW, "window_aggregate"))


@app.agent(windows_topic, concurrency=1)
async def alerting(stream: Any) -> None:
    engine = AlertEngine(settings)
    async for event in stream.events():
        windows = pa.ipc.open_stream(pa.py_buffer(event.value)).read_all()
        fired = engine.on_windows(windows)
        STAGE["alerting"].rows_in(windows.num_rows)
        STAGE["alerting"].rows_out(len(fired))
        if not fired:
            continue
        await alerts_topic.send(key=b"alerts", value=encode_arrow(alerts_table(fired)),
                                headers=headers_for(ARROW, "alert"))
        if settings.alerts.webhook_url:
            for alert in fired:
                task = asyncio.ensure_future(post_webhook(settings.alerts.webhook_url, alert))
                _background.add(task)
                task.add_done_callback(_background.discard)
