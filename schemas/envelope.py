"""The envelope protocol: the Kafka headers every costpipe message carries, in one place.

A message is one envelope: an Arrow IPC stream of many rows (or, from third-party producers,
one JSON event). Headers say how to read it and where it came from:

- `costpipe-encoding`: `arrow` | `json`; `costpipe-record`: which record it holds (its schema).
- `costpipe-watermark`: event time (µs since the epoch) the sender has reached. A heartbeat is
  an empty envelope whose record kind is `heartbeat` and that carries only this header.
- Between the worker's own stages: `costpipe-source` (topic:partition[:offset] of the message
  that produced this one) and `costpipe-source-offset` make re-processing idempotent;
  `costpipe-part` (`i/n`) marks one of n parts of a source message's output (only the last part
  is final); `costpipe-caught-up` (`1`/`0`) says whether the source message was its partition's
  last one when it was processed (a partition with a backlog can never count as idle).

Size limits derive from one setting, `kafka.max_message_bytes` (`costpipe.core.limits`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ENCODING_HEADER: Final = "costpipe-encoding"
RECORD_HEADER: Final = "costpipe-record"
WATERMARK_HEADER: Final = "costpipe-watermark"
SOURCE_HEADER: Final = "costpipe-source"
OFFSET_HEADER: Final = "costpipe-source-offset"
PART_HEADER: Final = "costpipe-part"
CAUGHT_UP_HEADER: Final = "costpipe-caught-up"
REROUTED_FROM_HEADER: Final = "costpipe-rerouted-from"  # topic:partition:offset it came in at
REPLAY_OF_HEADER: Final = "costpipe-replay-of"  # topic:partition:offset of the dead letter's row

ARROW: Final = "arrow"
JSON: Final = "json"
ENCODINGS: Final = (ARROW, JSON)

HEARTBEAT_RECORD: Final = "heartbeat"

Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None


def headers_for(encoding: str, record: str) -> list[tuple[str, bytes]]:
    return [(ENCODING_HEADER, encoding.encode()), (RECORD_HEADER, record.encode())]


def header_value(headers: Headers, name: str) -> str | None:
    """Header lookup that accepts confluent-kafka lists and aiokafka/Faust tuples or dicts."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        key_text = key.decode() if isinstance(key, bytes) else key
        if key_text == name and value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def record_kind(headers: Headers) -> str | None:
    return header_value(headers, RECORD_HEADER)


def watermark(headers: Headers) -> int | None:
    """The `costpipe-watermark` header as µs, or None (absent or not a number)."""
    text = header_value(headers, WATERMARK_HEADER)
    return int(text) if text and text.lstrip("-").isdigit() else None


def heartbeat(headers: Headers) -> int | None:
    """Watermark of a heartbeat envelope, None for anything else."""
    if record_kind(headers) != HEARTBEAT_RECORD:
        return None
    return watermark(headers)


def heartbeat_headers(until_us: int) -> list[tuple[str, bytes]]:
    return [*headers_for(ARROW, HEARTBEAT_RECORD), (WATERMARK_HEADER, str(until_us).encode())]


def part_header(number: int, count: int) -> tuple[str, bytes]:
    return PART_HEADER, f"{number}/{count}".encode()


def part(headers: Headers) -> tuple[int, int]:
    """(number, count) of a message sent in parts; (1, 1) for a whole message."""
    text = header_value(headers, PART_HEADER) or "1/1"
    number, _, count = text.partition("/")
    return int(number), int(count)


# ---------------------------------------------------------------- routing: home partitions

_M = np.uint32(0x5BD1E995)
_SEED = np.uint32(0x9747B28C)


def murmur2(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Kafka's murmur2 of each UTF-8 string (the Java client's default partitioner hash),
    vectorised over the column: uint32 per row, nulls hash as the empty string."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    values = pc.fill_null(values.cast(pa.string()), "")
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1,
                            offset=values.offset * 4)
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8) if values.buffers()[2] \
        else np.zeros(0, np.uint8)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    width = int(lengths.max()) if n else 0
    width += (-width) % 4
    if width == 0:
        padded = np.zeros((n, 4), dtype=np.uint8)
    else:
        cols = np.arange(width)
        index = offsets[:-1, None].astype(np.int64) + cols[None, :]
        inside = cols[None, :] < lengths[:, None]
        padded = np.where(inside, data[np.minimum(index, max(len(data) - 1, 0))], 0).astype(
            np.uint8)
    words = padded.view("<u4").astype(np.uint32)  # little-endian 4-byte blocks
    with np.errstate(over="ignore"):
        h = _SEED ^ lengths.astype(np.uint32)
        for block in range(words.shape[1]):
            full = (block + 1) * 4 <= lengths
            k = words[:, block] * _M
            k ^= k >> np.uint32(24)
            k *= _M
            h = np.where(full, (h * _M) ^ k, h)
        tail = (lengths % 4).astype(np.int64)
        last = lengths - tail
        has_tail = tail > 0
        rows = np.arange(n)
        base = np.minimum(last, padded.shape[1] - 1)
        for step, shift in ((2, 16), (1, 8), (0, 0)):
            use = tail > step
            byte = padded[rows, np.minimum(base + step, padded.shape[1] - 1)].astype(np.uint32)
            h = np.where(use, h ^ (byte << np.uint32(shift)), h)
        h = np.where(has_tail, h * _M, h)
        h ^= h >> np.uint32(13)
        h *= _M
        h ^= h >> np.uint32(15)
    return h.astype(np.uint32)


def home_partitions(values: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """The partition each row belongs to: Kafka's default (murmur2) partition of the value as
    a key, so a Java or librdkafka producer (`partitioner=murmur2_random`) that keys single
    events by the same value lands in the same partition."""
    return ((murmur2(values) & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).astype(np.int32)


def replay_origin(headers: Headers, topic: str, partition: int) -> int | None:
    """The offset in `topic`[`partition`] of the row a dead-letter replay brings back, if it was
    refused in this very partition (elsewhere it never reached this partition's index)."""
    text = header_value(headers, REPLAY_OF_HEADER)
    if text is None:
        return None
    origin_topic, _, rest = text.rpartition(":")
    origin_topic, _, origin_partition = origin_topic.rpartition(":")
    if origin_topic != topic or not origin_partition.isdigit() or not rest.isdigit():
        return None
    return int(rest) if int(origin_partition) == partition else None
