"""Faust agents that sink cost records, GPU samples, windows and alerts into the Parquet lake.

Commit discipline (why manual acks): each agent reads with `stream.noack()`, so Faust never
marks a message done on its own; `LakeSink` hands an event back only after the file holding its
rows is fsynced and renamed, and only then does the agent `await stream.ack(event)`. Faust
commits the highest *contiguous* acknowledged offset per partition, so a crash before a flush
re-delivers everything not yet durable. Agents keep concurrency=1 (faust-streaming #606).
A background timer flushes buffers that reached `lake.flush_seconds` while their topic is
quiet. Revoked partitions drop their buffers (the new owner re-reads them) and the sink
re-discovers its durable high-water mark from the lake's file names on the next assignment.
A leader-only crontab (`lake.export_cron`, UTC) runs the nightly export of yesterday.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import pyarrow as pa

from costpipe.core.settings import get_settings
from costpipe.lake.export import export_day
from costpipe.lake.layout import open_lake
from costpipe.lake.maintenance import maintain
from costpipe.lake.sink import Flushed, LakeSink
from costpipe.schemas.codec import decode
from costpipe.schemas.records import ALERT, COST_RECORD, GPU_SAMPLE, WINDOW_AGGREGATE
from costpipe.streams.app import app

log = logging.getLogger(__name__)
settings = get_settings()
sink = LakeSink(
    open_lake(settings.lake.location, settings.lake), settings.lake.flush_rows,
    settings.lake.flush_seconds,
)
_streams: dict[str, Any] = {}  # table -> the agent's stream, for acks from the timer
# LakeSink is single-caller by design: every call on its buffers goes through `_sink_lock`,
# held only for in-memory steps. A flush detaches the due buffers under it, then writes them in
# a thread under `_flush_lock` alone: Parquet encoding, sorting and zstd release the GIL, so a
# flush uses the second core while costing and allocation go on in the event loop, and the sink
# agents keep buffering meanwhile (holding the one lock through the write stalled them for the
# whole write: 4-8 s of lag on the costs topic in a 2M-event run). One write at a time.
_sink_lock = asyncio.Lock()
_flush_lock = asyncio.Lock()

SINKS: dict[str, tuple[str, pa.Schema]] = {
    "costs": (settings.topics.costs, COST_RECORD),
    "gpu_samples": (settings.topics.gpu, GPU_SAMPLE),
    "windows": (settings.topics.windows, WINDOW_AGGREGATE),
    "alerts": (settings.topics.alerts, ALERT),
}
# Written only by the worker's own agents (conformed before sending); gpu comes from collectors.
TRUSTED = frozenset({"costs", "windows", "alerts"})


async def _ack(table_name: str, tokens: list[Any]) -> None:
    stream = _streams[table_name]
    for event in tokens:
        if event is not None:
            await stream.ack(event)


async def _flush_due() -> None:
    if _flush_lock.locked():
        return  # a write is running; what is due now is taken when it is done or next call
    async with _flush_lock:
        async with _sink_lock:
            taken = sink.take_due()
        if not taken:
            return
        flushed = await asyncio.to_thread(
            lambda: [sink.write(key, buffer) for key, buffer in taken])
    await _acknowledge(flushed)


async def _acknowledge(flushed: list[Flushed]) -> None:
    for item in flushed:
        log.debug("lake: %s offsets %d..%d, %d rows -> %d file(s)", item.key,
                  item.first_offset, item.last_offset, item.rows, len(item.files))
        await _ack(item.key[0], item.tokens)


def _make_agent(table_name: str, topic_name: str, schema: pa.Schema) -> Any:
    trusted = table_name in TRUSTED
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, value_serializer="raw",
                      key_serializer="raw")

    async def lake_sink(stream: Any) -> None:
        noack = stream.noack()
        _streams[table_name] = noack
        async for event in noack.events():
            message = event.message
            decoded = decode(event.value, message.headers, schema, trusted=trusted)
            if decoded.rejections:  # our own agents produce these topics: a bug upstream
                log.warning("lake: %s p%d@%d: %d rejection(s), first: %s", message.topic,
                            message.partition, message.offset, len(decoded.rejections),
                            decoded.rejections[0])
            async with _sink_lock:
                ready = sink.add((table_name, message.topic, message.partition),
                                 message.offset, decoded.batch, token=event)
            await _ack(table_name, ready)
            await _flush_due()

    lake_sink.__name__ = f"lake_sink_{table_name}"
    return app.agent(topic, name=f"costpipe.lake_sink.{table_name}", concurrency=1)(lake_sink)


AGENTS = {name: _make_agent(name, topic, schema) for name, (topic, schema) in SINKS.items()}


@app.timer(interval=max(0.5, settings.lake.flush_seconds / 2))
async def flush_quiet_buffers() -> None:
    """Flush buffers that aged past flush_seconds while no new message arrived."""
    await _flush_due()


@app.on_partitions_revoked.connect
async def _on_revoked(app_: Any, revoked: set[Any], **_: Any) -> None:
    async with _flush_lock:  # let a running write finish first (it updates the dedup index)
        for tp in revoked:
            async with _sink_lock:
                sink.forget(tp.topic, tp.partition)


async def _maintain_lake() -> None:
    """Leader only: compact closed hours and build their rollups (lake/maintenance.py).

    In a thread, so the event loop keeps consuming. Safe beside other workers' sinks and even
    beside a second maintainer: merged files supersede what they cover and are written whole.
    """
    try:
        result = await asyncio.to_thread(maintain, sink.lake, settings.lake)
    except Exception:  # a bad file or a storage hiccup must not crash the leader (a Faust
        # timer that raises stops the worker); the next run tries again
        log.exception("lake: maintenance failed, will retry in %s s",
                      settings.lake.maintenance_seconds)
        return
    merged = sum(s.merged_streams for s in result.compaction.values())
    if merged or result.rollups.hours_built or result.rollups.days_built:
        log.info("lake: compacted %d stream-hour(s), rolled up %d hour(s) and %d day(s) "
                 "closed before %s", merged, result.rollups.hours_built,
                 result.rollups.days_built, result.closed_before.isoformat())


if settings.lake.maintenance_seconds > 0:
    app.timer(interval=settings.lake.maintenance_seconds, on_leader=True)(_maintain_lake)


@app.crontab(settings.lake.export_cron, timezone=dt.UTC, on_leader=True)
async def nightly_export() -> None:
    """Leader only: compact yesterday (UTC) into sorted Parquet and FOCUS exports.

    Runs in a thread so the event loop keeps consuming; export is idempotent, so a re-run
    after a leader change or crash rewrites the same files and manifest. The export lands in
    the lake itself (<lake>/_exports/), local folder or object storage alike.
    """
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    await _maintain_lake()  # the day's hours compacted first: the export reads fewer files
    for fmt in ("parquet", "focus"):
        result = await asyncio.to_thread(export_day, sink.lake, day, fmt)
        log.info("lake: exported %s as %s to %s", day, fmt, result.out_dir)
