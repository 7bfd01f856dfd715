"""What the worker's stages send, keyed so each downstream stage scales with its partitions.

- cost records: to the costs partition of their record_id (where the lake de-duplicates them);
- partials: to the partials partition of their window key, one message per partition for every
  source message (rows or not): the watermark rides along, so each merger knows how far every
  requests partition has got (`costpipe.streams.windows`);
- own-model rows and GPU samples: to the gpuwork partition of their GPU, likewise one message
  per partition per source message (`costpipe.streams.allocation.allocator`).
Every message carries the envelope headers of `costpipe.schemas.envelope`; a source message's
output larger than an envelope goes in parts, only the last one final. Each send returns the
delivery futures of its messages, for a stage that must know its output is on the broker before
it writes the state that says so (`costpipe.streams.state`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from costpipe.schemas.codec import conform, encode_arrow, encode_envelopes
from costpipe.schemas.envelope import (
    ARROW,
    CAUGHT_UP_HEADER,
    OFFSET_HEADER,
    SOURCE_HEADER,
    WATERMARK_HEADER,
    home_partitions,
    part_header,
)
from costpipe.schemas.envelope import headers_for as _headers_for
from costpipe.schemas.records import COST_RECORD
from costpipe.streams.windows import partial_keys, partials

Sent = list[Any]  # delivery futures (await them: done once the broker has the message)


def split_by(table: pa.Table, homes: np.ndarray, partitions: int) -> list[pa.Table]:
    """The rows of each partition (empty tables included), in their original order."""
    if table.num_rows == 0:
        return [table] * partitions
    order = np.argsort(homes, kind="stable")
    ordered, sorted_homes = table.take(pa.array(order)), homes[order]
    bounds = np.searchsorted(sorted_homes, np.arange(partitions + 1))
    return [ordered.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p]))
            for p in range(partitions)]


class Outputs:
    """Sends for one worker: topics are Faust topics of raw bytes."""

    def __init__(self, *, costs: Any, partials: Any, gpuwork: Any, windows_seconds: int,
                 partitions: dict[str, int], envelope_rows: int, envelope_bytes: int) -> None:
        self.costs, self.partials, self.gpuwork = costs, partials, gpuwork
        self.windows_seconds = windows_seconds
        self.partitions = partitions  # topic name -> partition count
        self.rows, self.bytes = envelope_rows, envelope_bytes

    def _count(self, topic: Any) -> int:
        return self.partitions[topic.get_topic_name()]

    async def _send_parts(self, topic: Any, partition: int, key: bytes, table: pa.Table,
                          headers: list[tuple[str, bytes]], last: list[tuple[str, bytes]]
                          ) -> Sent:
        payloads = [p for p, _ in encode_envelopes(table, self.rows, self.bytes)] or \
            [encode_arrow(table)]  # no rows: still sent, for the headers
        sent: Sent = []
        for number, payload in enumerate(payloads, start=1):
            extra = [part_header(number, len(payloads))] if len(payloads) > 1 else []
            final = number == len(payloads)
            sent.append(await topic.send(key=key, value=payload, partition=partition,
                                         headers=[*headers, *extra, *(last if final else [])]))
        return sent

    async def cost_records(self, table: pa.Table) -> Sent:
        """Cost rows to the costs partition of their record_id."""
        sent: Sent = []
        if table.num_rows == 0:
            return sent
        table = conform(table, COST_RECORD)
        count = self._count(self.costs)
        homes = home_partitions(table.column("record_id"), count)
        for partition, rows in enumerate(split_by(table, homes, count)):
            for payload, _ in encode_envelopes(rows, self.rows, self.bytes):
                sent.append(await self.costs.send(
                    key=rows.column("record_id")[0].as_py().encode(), value=payload,
                    partition=partition, headers=_headers_for(ARROW, "cost_record")))
        return sent

    async def window_partials(self, table: pa.Table, source: str, offset: int,
                              watermark: int | None, caught_up: bool = True) -> Sent:
        """The partial sums of `table` (cost rows) to every partials partition."""
        summed = partials(conform(table, COST_RECORD), self.windows_seconds)
        count = self._count(self.partials)
        homes = home_partitions(partial_keys(summed), count) if summed.num_rows \
            else np.zeros(0, np.int32)
        headers = [*_headers_for(ARROW, "partial"), (SOURCE_HEADER, source.encode()),
                   (OFFSET_HEADER, str(offset).encode())]
        last = [] if watermark is None else [
            (WATERMARK_HEADER, str(watermark).encode()),
            (CAUGHT_UP_HEADER, b"1" if caught_up else b"0")]
        sent: Sent = []
        for partition, rows in enumerate(split_by(summed, homes, count)):
            if rows.num_rows == 0 and watermark is None:
                continue  # nothing to merge and no time to report
            sent += await self._send_parts(self.partials, partition, source.encode(), rows,
                                           headers, last)
        return sent

    async def gpu_work(self, table: pa.Table, record: str, source: str,
                       watermark: int | None, caught_up: bool = True) -> Sent:
        """Rows keyed by GPU (own-model costs or samples) to every gpuwork partition."""
        count = self._count(self.gpuwork)
        homes = home_partitions(table.column("gpu_uuid"), count) if table.num_rows \
            else np.zeros(0, np.int32)
        headers = [*_headers_for(ARROW, record), (SOURCE_HEADER, source.encode())]
        last = [] if watermark is None else [
            (WATERMARK_HEADER, str(watermark).encode()),
            (CAUGHT_UP_HEADER, b"1" if caught_up else b"0")]
        sent: Sent = []
        for partition, rows in enumerate(split_by(table, homes, count)):
            sent += await self._send_parts(self.gpuwork, partition, source.encode(), rows,
                                           headers, last)
        return sent

