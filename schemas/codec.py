"""The envelope codec: Arrow IPC record batches (many events per Kafka message) or single JSON
events (one per message), chosen by the `costpipe-encoding` header.

Decoding never raises: it returns the valid rows as one Arrow batch plus a list of `Rejection`s
that name the field, the value and the rule, so a stream loop can dead-letter the bad part and
keep going. Validation is vectorised over whole columns (no per-row Python on the Arrow path).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from costpipe.schemas.records import (
    MAX_TOKENS,
    MONEY_QUANTUM,
    PROVIDER_KINDS,
    REQUEST_EVENT,
    STATUSES,
)

ENCODING_HEADER: Final = "costpipe-encoding"
RECORD_HEADER: Final = "costpipe-record"
# Heartbeats: empty envelopes whose watermark header says "event time has reached this (µs)".
WATERMARK_HEADER: Final = "costpipe-watermark"
HEARTBEAT_RECORD: Final = "heartbeat"
ARROW: Final = "arrow"
JSON: Final = "json"
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024

TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
JSON_DEFAULTS: Final[dict[str, Any]] = {
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "status": "ok",
}
MAX_EVENT_AGE: Final = dt.timedelta(days=400)
MAX_EVENT_FUTURE: Final = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Rejection:
    """Why (part of) a message was refused; `row` is None when the whole message is bad."""

    reason: str
    field: str | None = None
    value: Any = None
    row: int | None = None

    def __str__(self) -> str:
        if self.field is None:
            return self.reason
        return f"field {self.field!r}: value {self.value!r} {self.reason}"


@dataclass
class Decoded:
    batch: pa.RecordBatch
    rejections: list[Rejection] = field(default_factory=list)
    encoding: str = ARROW

    @property
    def ok(self) -> bool:
        return not self.rejections


# ---------------------------------------------------------------- encoding


def encode_arrow(data: pa.RecordBatch | pa.Table, compression: str | None = None) -> bytes:
    """Arrow IPC stream bytes; one Kafka message carries the whole batch.

    `compression` ("zstd", "lz4") compresses the buffers inside the IPC stream, for bytes that
    go on through pure-Python encoding (base64, JSON) where Kafka's own compression comes too
    late; readers decompress transparently.
    """
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression) if compression else None
    with pa.ipc.new_stream(sink, data.schema, options=options) as writer:
        writer.write(data)
    return sink.getvalue().to_pybytes()


def conform(data: pa.RecordBatch | pa.Table, schema: pa.Schema) -> pa.Table:
    """`data` as a table of exactly `schema`: its columns in order, cast where the type
    differs, missing ones as nulls. No value rules (that is `validate`)."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    if table.schema.equals(schema):
        return table  # the usual case: nothing to reshape
    columns = []
    for target in schema:
        if target.name in table.column_names:
            column = table.column(target.name)
            columns.append(column if column.type.equals(target.type) else column.cast(target.type))
        else:
            columns.append(pa.nulls(table.num_rows, target.type))
    return pa.Table.from_arrays(columns, schema=schema)


def encode_envelopes(data: pa.RecordBatch | pa.Table, max_rows: int,
                     max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[tuple[bytes, int]]:
    """(payload, rows) per envelope: at most max_rows rows, and halved until under max_bytes.

    Why both bounds: rows keep per-message work predictable, bytes keep every message under
    the broker's limit whatever the row width (a window with long keys, a wide cost row).
    """
    for start in range(0, data.num_rows, max_rows):
        yield from _within_bytes(data.slice(start, max_rows), max_bytes)


def _within_bytes(data: pa.RecordBatch | pa.Table,
                  max_bytes: int) -> Iterator[tuple[bytes, int]]:
    payload = encode_arrow(data)
    if len(payload) > max_bytes and data.num_rows > 1:
        half = data.num_rows // 2
        yield from _within_bytes(data.slice(0, half), max_bytes)
        yield from _within_bytes(data.slice(half), max_bytes)
        return
    yield payload, data.num_rows


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation: "0.000000000000", never "0E-12"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def encode_json(event: Mapping[str, Any]) -> bytes:
    """One event as compact JSON (money as decimal strings, timestamps as ISO 8601)."""
    return json.dumps(event, default=_json_default, separators=(",", ":")).encode()


def headers_for(encoding: str, record: str) -> list[tuple[str, bytes]]:
    return [(ENCODING_HEADER, encoding.encode()), (RECORD_HEADER, record.encode())]


def header_value(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None,
                 name: str) -> str | None:
    """Header lookup that accepts confluent-kafka lists and aiokafka/Faust tuples or dicts."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        key_text = key.decode() if isinstance(key, bytes) else key
        if key_text == name and value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


# ---------------------------------------------------------------- decoding


def decode(
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | Mapping[str, Any] | None,
    schema: pa.Schema = REQUEST_EVENT,
    *,
    now: dt.datetime | None = None,
    trusted: bool = False,
) -> Decoded:
    """Decode one Kafka message into valid rows plus rejections. Never raises.

    `trusted`: the topic is written only by costpipe's own agents, which conform every batch
    to the schema before sending; an Arrow batch whose schema matches exactly then skips the
    value rules (a fifth of the lake sink's CPU). Anything else is still validated.
    """
    empty = [_empty(schema)]
    encoding = header_value(headers, ENCODING_HEADER) or _sniff(value)
    if value is None or len(value) == 0:
        return Decoded(empty[0], [Rejection("empty message")], encoding)
    if len(value) > MAX_MESSAGE_BYTES:
        return Decoded(
            empty[0],
            [Rejection(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES} bytes")],
            encoding,
        )
    try:
        if encoding == ARROW:
            batch, problems = _decode_arrow(value, schema)
        elif encoding == JSON:
            batch, problems = _decode_json(value, schema)
        else:
            return Decoded(
                empty[0],
                [Rejection(f"header {ENCODING_HEADER!r} must be 'arrow' or 'json'",
                           ENCODING_HEADER, encoding)],
                str(encoding),
            )
    except Exception as exc:  # a decoder must never take the stream loop down
        return Decoded(empty[0], [Rejection(f"undecodable {encoding} message: {exc}")], encoding)
    if problems:
        return Decoded(empty[0], problems, encoding)
    if trusted and batch.schema.equals(schema):
        return Decoded(batch, [], encoding)
    valid, rejections = validate(batch, schema, now=now)
    return Decoded(valid, rejections, encoding)


def _sniff(value: bytes | None) -> str:
    if value and value[:1] in (b"{", b"["):
        return JSON
    return ARROW


def _decode_arrow(value: bytes, schema: pa.Schema) -> tuple[pa.RecordBatch, list[Rejection]]:
    reader = pa.ipc.open_stream(pa.py_buffer(value))
    relaxed = _relaxed(schema)
    if reader.schema.equals(relaxed) or reader.schema.equals(schema):
        batches = list(reader)  # the common case: our own producer, nothing to reshape
        if len(batches) == 1:
            return batches[0], []
        table = pa.Table.from_batches(batches, schema=reader.schema)
    else:
        table = reader.read_all()
    columns = []
    for target in schema:
        if target.name not in table.column_names:
            if not target.nullable:
                return table, [Rejection("is required but missing", target.name, None)]
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name)
        if not column.type.equals(target.type):
            try:
                column = column.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return table, [
                    Rejection(f"has type {column.type}, expected {target.type}", target.name,
                              str(column.type))
                ]
        columns.append(column)
    combined = pa.Table.from_arrays(columns, schema=relaxed).combine_chunks()
    batches = combined.to_batches()
    return (batches[0] if batches else _empty(relaxed)), []


@lru_cache(maxsize=64)
def _relaxed(schema: pa.Schema) -> pa.Schema:
    """Same fields, all nullable: nulls are reported by `validate`, not by Arrow."""
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


@lru_cache(maxsize=64)
def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _decode_json(value: bytes, schema: pa.Schema) -> tuple[pa.RecordBatch, list[Rejection]]:
    try:
        event = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return pa.RecordBatch.from_pylist([]), [Rejection(f"is not valid JSON: {exc}")]
    if not isinstance(event, dict):
        return pa.RecordBatch.from_pylist([]), [
            Rejection(f"JSON event must be an object, got {type(event).__name__}")
        ]
    row: dict[str, Any] = {}
    problems: list[Rejection] = []
    for target in schema:
        raw = event.get(target.name, JSON_DEFAULTS.get(target.name))
        if raw is None:
            if not target.nullable:
                problems.append(Rejection("is required but missing", target.name, None))
            row[target.name] = None
            continue
        try:
            row[target.name] = _coerce_json(raw, target.type)
        except (TypeError, ValueError, InvalidOperation, OverflowError) as exc:
            problems.append(Rejection(f"must be {exc}", target.name, raw))
    if problems:
        return pa.RecordBatch.from_pylist([]), problems
    return pa.RecordBatch.from_pylist([row], schema=_relaxed(schema)), []


def _coerce_json(raw: Any, type_: pa.DataType) -> Any:
    if pa.types.is_string(type_):
        if not isinstance(raw, str):
            raise TypeError("a string")
        return raw
    if pa.types.is_integer(type_):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError("an integer")
        if not -(2**63) <= raw < 2**63:
            raise OverflowError("an integer within 64 bits")
        return raw
    if pa.types.is_floating(type_):
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError("a number")
        return float(raw)
    if pa.types.is_decimal(type_):
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise TypeError("a decimal string such as \"0.0012\"")
        amount = Decimal(raw)
        if not amount.is_finite():
            raise ValueError("a finite decimal")
        return amount.quantize(MONEY_QUANTUM)
    if pa.types.is_timestamp(type_):
        return _parse_timestamp(raw)
    if pa.types.is_binary(type_):
        if not isinstance(raw, str):
            raise TypeError("a hex string")
        return bytes.fromhex(raw)
    raise TypeError(f"of type {type_}")


def _parse_timestamp(raw: Any) -> dt.datetime:
    if isinstance(raw, bool):
        raise TypeError("an ISO 8601 string or epoch seconds")
    if isinstance(raw, int | float):
        return dt.datetime.fromtimestamp(float(raw), tz=dt.UTC)
    if isinstance(raw, str):
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC)
    raise TypeError("an ISO 8601 string or epoch seconds")


# ---------------------------------------------------------------- validation


def validate(
    batch: pa.RecordBatch, schema: pa.Schema, *, now: dt.datetime | None = None
) -> tuple[pa.RecordBatch, list[Rejection]]:
    """Split a batch into valid rows and per-row rejections.

    A cheap whole-column scan (null counts, min/max, distinct values) clears a clean batch in
    a handful of Arrow calls; only a batch that fails it pays for the row-level pass.
    """
    rules = _rules(batch, schema, now or dt.datetime.now(dt.UTC))
    suspects = [rule for rule in rules if rule.may_fail(batch.column(rule.name))]
    if not suspects:
        return batch.cast(schema), []
    bad = pa.array([False] * batch.num_rows)
    rejections: list[Rejection] = []
    for rule in suspects:
        column = batch.column(rule.name)
        violates = pc.fill_null(rule.violates(column), False)
        for index in pc.indices_nonzero(violates).to_pylist():
            rejections.append(Rejection(rule.text, rule.name, column[index].as_py(), index))
        bad = pc.or_(bad, violates)
    return batch.filter(pc.invert(bad)).cast(schema), rejections


@dataclass(frozen=True)
class _Rule:
    name: str
    text: str
    may_fail: Callable[[pa.Array], bool]
    violates: Callable[[pa.Array], pa.Array]


def _min_max(column: pa.Array) -> tuple[Any, Any]:
    result = pc.min_max(column)
    return result["min"].as_py(), result["max"].as_py()


def _outside_token_range(column: pa.Array) -> bool:
    low, high = _min_max(column)
    return (low or 0) < 0 or (high or 0) > MAX_TOKENS


def _rules(batch: pa.RecordBatch, schema: pa.Schema, now: dt.datetime) -> list[_Rule]:
    rules: list[_Rule] = []
    names = set(schema.names)
    for target in schema:
        if not target.nullable:
            rules.append(_Rule(target.name, "is required but missing",
                               lambda c: c.null_count > 0, pc.is_null))
            if pa.types.is_string(target.type):
                rules.append(_Rule(target.name, "must not be empty",
                                   lambda c: _min_max(c)[0] == "",
                                   lambda c: pc.equal(c, "")))
    for name in TOKEN_FIELDS:
        if name in names:
            rules.append(_Rule(name, f"must be between 0 and {MAX_TOKENS}",
                               _outside_token_range,
                               lambda c: pc.or_(pc.less(c, 0), pc.greater(c, MAX_TOKENS))))
    for name in ("latency_ms", "ttft_ms"):
        if name in names:
            rules.append(_Rule(
                name, "must be a number >= 0",
                lambda c: c.null_count < len(c)
                and (pc.any(pc.is_nan(c)).as_py() or (_min_max(c)[0] or 0) < 0),
                lambda c: pc.or_(pc.less(c, 0), pc.is_nan(c)),
            ))
    for name, allowed in (("provider_kind", PROVIDER_KINDS), ("status", STATUSES)):
        if name in names:
            rules.append(_Rule(
                name, f"must be one of {', '.join(allowed)}",
                lambda c, allowed=allowed: not set(pc.unique(c).drop_null().to_pylist())
                <= set(allowed),
                lambda c, allowed=allowed: _not_in(c, allowed),
            ))
    record = (schema.metadata or {}).get(b"costpipe.record")
    if "timestamp" in names and record in (b"request_event", b"gpu_sample"):
        earliest, latest = now - MAX_EVENT_AGE, now + MAX_EVENT_FUTURE
        rules.append(_Rule(
            "timestamp", f"is older than {MAX_EVENT_AGE.days} days",
            lambda c: c.null_count < len(c) and _min_max(c)[0] < earliest,
            lambda c: pc.less(c, pa.scalar(earliest, type=c.type)),
        ))
        rules.append(_Rule(
            "timestamp",
            f"is more than {int(MAX_EVENT_FUTURE.total_seconds() // 3600)} h in the future",
            lambda c: c.null_count < len(c) and _min_max(c)[1] > latest,
            lambda c: pc.greater(c, pa.scalar(latest, type=c.type)),
        ))
    return rules


def _not_in(column: pa.Array, allowed: Sequence[str]) -> pa.Array:
    """True where a present value is outside `allowed` (nulls are checked separately)."""
    return pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, pa.array(allowed))))


def rows_as_json(batch: pa.RecordBatch, rows: Sequence[int]) -> list[bytes]:
    """Render rejected Arrow rows as JSON so a dead letter can carry them readably."""
    if not rows:
        return []
    taken = batch.take(pa.array(sorted(set(rows)), type=pa.int64())).to_pylist()
    return [encode_json(row) for row in taken]
