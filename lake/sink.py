"""Buffering and exactly-once-into-the-lake bookkeeping for the Parquet sink.

The Faust wiring (`streams/lake_sink.py`) and any plain Kafka consumer use this same core, so
the guarantee is tested once: messages are buffered per (table, topic, partition), flushed by
row count or age, and their opaque tokens (Faust events, or offsets) are handed back only after
the file is durable; the caller acknowledges/commits them then, never before.

Replays: on first sight of a partition the sink rolls forward interrupted flushes and reads the
last durable offset from the lake's file names; messages at or below it are handed straight
back (already in the lake). A replay from offset 0, with any flush boundaries, adds no rows.
Rows an upstream worker re-emitted at new offsets are dropped by their key (`lake.dedup`).

"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from costpipe.core.metrics import STAGE
from costpipe.lake.dedup import UniqueIndex
from costpipe.lake.layout import Key, Lake, table
from costpipe.lake.writer import WrittenFile, durable_high_water, recover, write_range
from costpipe.schemas.codec import conform

_STAGE = STAGE["lake_sink"]


@dataclass
class _Buffer:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    tokens: list[Any] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    rows: int = 0
    opened_at: float = 0.0


@dataclass(frozen=True)
class Flushed:
    key: Key
    first_offset: int
    last_offset: int
    rows: int
    files: list[WrittenFile]
    tokens: list[Any]


class LakeSink:
    """Not thread-safe by design: one event loop / one consumer thread drives it, except that
    the caller may run `write` of buffers it took with `take_due` in one worker thread."""

    def __init__(
        self,
        lake: Lake,
        flush_rows: int,
        flush_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lake = lake
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._buffers: dict[Key, _Buffer] = {}
        self._high_water: dict[Key, int] = {}
        self._unique = UniqueIndex(lake)
        self.skipped_messages = 0

    def high_water(self, key: Key) -> int:
        """Last durable offset for the key, discovering it (and recovering) on first use."""
        if key not in self._high_water:
            table_name, topic, partition = key
            table(table_name)
            recover(self.lake, table_name, topic, partition)
            self._high_water[key] = durable_high_water(self.lake, table_name, topic, partition)
        return self._high_water[key]

    def add(self, key: Key, offset: int, batch: pa.RecordBatch, token: Any = None) -> list[Any]:
        """Buffer one message; returns tokens that are safe to acknowledge right away."""
        _STAGE.rows_in(batch.num_rows)
        if offset <= self.high_water(key):
            self.skipped_messages += 1
            return [token]
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _Buffer(first_offset=offset, opened_at=self._clock())
        buffer.batches.append(batch)
        buffer.tokens.append(token)
        buffer.last_offset = offset
        buffer.rows += batch.num_rows
        return []

    def due(self, now: float | None = None) -> list[Key]:
        now = self._clock() if now is None else now
        return [
            key
            for key, buf in self._buffers.items()
            if buf.rows >= self.flush_rows or now - buf.opened_at >= self.flush_seconds
        ]

    def flush(self, key: Key) -> Flushed | None:
        """Write the key's buffer durably; its tokens may be acknowledged afterwards."""
        buffer = self._buffers.pop(key, None)
        if buffer is None:
            return None
        return self.write(key, buffer)

    def take_due(self, now: float | None = None) -> list[tuple[Key, _Buffer]]:
        """Detach the buffers that are due, for `write` (maybe in another thread): messages
        that arrive meanwhile go to fresh buffers instead of waiting for the write."""
        return [(key, self._buffers.pop(key)) for key in self.due(now)]

    def write(self, key: Key, buffer: _Buffer) -> Flushed:
        """Write a detached buffer durably. One `write` at a time (it updates the dedup index);
        it may run in a worker thread while `add` goes on in the caller's."""
        table_name, topic, partition = key
        batches = [b for b in buffer.batches if b.num_rows]
        files: list[WrittenFile] = []
        if batches:
            schema = table(table_name).schema
            data = pa.concat_tables([conform(b, schema) for b in batches]).combine_chunks()
            data = self._unique.fresh(key, data)
            files = write_range(
                self.lake, table_name, data, topic, partition,
                buffer.first_offset, buffer.last_offset,
            )
            self._unique.record(key, data)
            _STAGE.rows_out(data.num_rows)
        self._high_water[key] = buffer.last_offset
        return Flushed(key, buffer.first_offset, buffer.last_offset, buffer.rows, files,
                       buffer.tokens)

    def flush_due(self, now: float | None = None) -> list[Flushed]:
        return [self.write(key, buffer) for key, buffer in self.take_due(now)]

    def flush_all(self) -> list[Flushed]:
        return [f for key in list(self._buffers) if (f := self.flush(key)) is not None]

    def forget(self, topic: str, partition: int) -> None:
        """Partition revoked: drop unacknowledged buffers; the new owner re-reads them."""
        for key in [k for k in self._buffers if k[1:] == (topic, partition)]:
            del self._buffers[key]
        for key in [k for k in self._high_water if k[1:] == (topic, partition)]:
            del self._high_water[key]
        self._unique.forget(topic, partition)

