"""The envelope codec: Arrow IPC record batches (many events per Kafka message) or single JSON
events (one per message), chosen by the `costpipe-encoding` header.

Decoding never raises: it returns the valid rows as one Arrow batch plus a list of `Rejection`s
that name the field, the value and the rule, so a stream loop can dead-letter the bad part and
keep going. Validation is vectorised over whole columns (no per-row Python on the Arrow path).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.money import MONEY_QUANTUM
from costpipe.core.settings import IngestSettings
from costpipe.schemas.envelope import ARROW, ENCODING_HEADER, JSON, Headers, header_value
from costpipe.schemas.records import (
    COUNT_UNITS,
    MAX_AUDIO_SECONDS,
    MAX_TOKENS,
    PROVIDER_KINDS,
    REQUEST_EVENT,
    SECONDS_UNITS,
    STATUSES,
)

TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
# A usage refinement is part of its parent: together they must not exceed it.
PARTS: Final[dict[str, tuple[str, ...]]] = {
    "input_tokens": ("input_audio_tokens", "input_image_tokens"),
    "output_tokens": ("output_audio_tokens", "output_image_tokens"),
    "cache_read_tokens": ("cache_audio_read_tokens", "cache_image_read_tokens"),
    "input_audio_tokens": ("cache_audio_read_tokens",),
    "input_image_tokens": ("cache_image_read_tokens",),
}
ARROW_EOS: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # end-of-stream marker of an IPC stream
JSON_DEFAULTS: Final[dict[str, Any]] = {
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
    "status": "ok",
}
# Which float fields hold what; every float must be finite (a NaN or an infinity in a latency
# or a GPU reading would poison sums, quantiles and allocations downstream).
NON_NEGATIVE: Final = ("latency_ms", "ttft_ms", "power_w", "memory_used_bytes",
                       "memory_total_bytes", "energy_mj")
PERCENT: Final = ("utilization_pct",)
FRACTION: Final = ("gpu_fraction",)
POSITIVE: Final = ("interval_s",)


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
        return f"field {self.field!r}: value {_short(self.value)} {self.reason}"


def _short(value: Any, limit: int = 80) -> str:
    """A value as shown in a reason or a log line: never the whole of a huge one."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
                     max_bytes: int) -> Iterator[tuple[bytes, int]]:
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




# ---------------------------------------------------------------- decoding


def decode(
    value: bytes | None,
    headers: Headers,
    schema: pa.Schema = REQUEST_EVENT,
    *,
    now: dt.datetime | None = None,
    trusted: bool = False,
    max_bytes: int | None = None,
    ingest: IngestSettings | None = None,
) -> Decoded:
    """Decode one Kafka message into valid rows plus rejections. Never raises.

    `max_bytes`: refuse a larger message (the worker passes `kafka.max_message_bytes`);
    `ingest`: the value rules' limits (string length, clock skew, age).

    `trusted`: the topic is written only by costpipe's own agents, which conform every batch
    to the schema before sending; an Arrow batch whose schema matches exactly then skips the
    value rules (a fifth of the lake sink's CPU). Anything else is still validated.
    """
    empty = [_empty(schema)]
    encoding = header_value(headers, ENCODING_HEADER) or _sniff(value)
    if value is None or len(value) == 0:
        return Decoded(empty[0], [Rejection("empty message")], encoding)
    if max_bytes is not None and len(value) > max_bytes:
        return Decoded(
            empty[0],
            [Rejection(f"message of {len(value)} bytes exceeds kafka.max_message_bytes "
                       f"({max_bytes})")],
            encoding,
        )
    pre_bad: pa.Array | None = None
    try:
        if encoding == ARROW:
            batch, problems, pre_bad = _decode_arrow(value, schema)
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
    if problems and pre_bad is None:
        return Decoded(empty[0], problems, encoding)
    if trusted and not problems and batch.schema.equals(schema):
        return Decoded(batch, [], encoding)
    valid, rejections = validate(batch, schema, now=now, ingest=ingest, pre_bad=pre_bad)
    return Decoded(valid, problems + rejections, encoding)


def _sniff(value: bytes | None) -> str:
    if value and value[:1] in (b"{", b"["):
        return JSON
    return ARROW


def _decode_arrow(value: bytes, schema: pa.Schema
                  ) -> tuple[pa.RecordBatch, list[Rejection], pa.Array | None]:
    """(rows, rejections, rows already refused while casting) of one Arrow envelope.

    A column of another type is cast row by row where that is exact: only the rows that cannot
    be represented (a float token count of 1e30, a string that is not a number) are refused,
    the rest of the envelope is kept.
    """
    if not value.endswith(ARROW_EOS):
        return _empty(schema), [Rejection("truncated Arrow stream: no end-of-stream marker")], None
    reader = pa.ipc.open_stream(pa.py_buffer(value))
    relaxed = _relaxed(schema)
    if reader.schema.equals(relaxed) or reader.schema.equals(schema):
        batches = list(reader)  # the common case: our own producer, nothing to reshape
        if len(batches) == 1:
            return batches[0], [], None
        table = pa.Table.from_batches(batches, schema=reader.schema)
    else:
        table = reader.read_all()
    columns = []
    problems: list[Rejection] = []
    bad = np.zeros(table.num_rows, dtype=bool)
    for target in schema:
        if target.name not in table.column_names:
            if not target.nullable:
                return table, [Rejection("is required but missing", target.name, None)], None
            columns.append(pa.nulls(table.num_rows, target.type))
            continue
        column = table.column(target.name)
        if not column.type.equals(target.type):
            column, refused = _cast_rows(column, target.type)
            for row in np.flatnonzero(refused).tolist():
                original = table.column(target.name)[row].as_py()
                problems.append(Rejection(f"cannot be represented as {target.type}",
                                          target.name, original, row))
            bad |= refused
        columns.append(column)
    combined = pa.Table.from_arrays(columns, schema=relaxed).combine_chunks()
    batches = combined.to_batches()
    batch = batches[0] if batches else _empty(relaxed)
    return batch, problems, (pa.array(bad) if bad.any() else None)


def _cast_rows(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """`column` as `target`; rows that cannot be cast exactly become null and are marked."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    try:
        return column.cast(target), np.zeros(len(column), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    if pa.types.is_integer(target) and (pa.types.is_floating(column.type)
                                        or pa.types.is_integer(column.type)):
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            exact = np.isfinite(values) & (values == np.floor(values)) \
                & (np.abs(values) < 2.0**63)
        refused = ~exact & np.asarray(column.is_valid(), dtype=bool)
        kept = pc.if_else(pa.array(exact), column, pa.scalar(None, column.type))
        return kept.cast(target, safe=False), refused
    out: list[Any] = []  # rare: any other pair of types, one row at a time (a bad envelope)
    refused = np.zeros(len(column), dtype=bool)
    for row in range(len(column)):
        try:
            out.append(column.slice(row, 1).cast(target)[0].as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            out.append(None)
            refused[row] = True
    return pa.array(out, type=target), refused


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
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value
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
    batch: pa.RecordBatch, schema: pa.Schema, *, now: dt.datetime | None = None,
    ingest: IngestSettings | None = None, pre_bad: pa.Array | None = None,
) -> tuple[pa.RecordBatch, list[Rejection]]:
    """Split a batch into valid rows and per-row rejections.

    A cheap whole-column scan (null counts, min/max, distinct values) clears a clean batch in
    a handful of Arrow calls; only a batch that fails it pays for the row-level pass.
    `pre_bad` marks rows already refused (and reported) while decoding.
    """
    rules = _rules(schema, now or dt.datetime.now(dt.UTC), ingest or IngestSettings())
    suspects = [rule for rule in rules if rule.may_fail(batch)]
    if not suspects and pre_bad is None:
        return batch.cast(schema), []
    bad = pre_bad if pre_bad is not None else pa.array(np.zeros(batch.num_rows, dtype=bool))
    rejections: list[Rejection] = []
    for rule in suspects:
        column = batch.column(rule.name)
        violates = pc.fill_null(rule.violates(batch), False)
        if pre_bad is not None:  # those rows were reported while decoding
            violates = pc.and_(violates, pc.invert(pre_bad))
        for index in pc.indices_nonzero(violates).to_pylist():
            rejections.append(Rejection(rule.text, rule.name, column[index].as_py(), index))
        bad = pc.or_(bad, violates)
    return batch.filter(pc.invert(bad)).cast(schema), rejections


@dataclass(frozen=True)
class _Rule:
    """One value rule: a cheap whole-batch test, then the rows that break it."""

    name: str  # the field reported
    text: str
    may_fail: Callable[[pa.RecordBatch], bool]
    violates: Callable[[pa.RecordBatch], pa.Array]


def _min_max(column: pa.Array) -> tuple[Any, Any]:
    result = pc.min_max(column)
    return result["min"].as_py(), result["max"].as_py()


def _column_rule(name: str, text: str, may_fail: Callable[[pa.Array], bool],
                 violates: Callable[[pa.Array], pa.Array]) -> _Rule:
    return _Rule(name, text, lambda b: may_fail(b.column(name)),
                 lambda b: violates(b.column(name)))


def _outside(low: float | None, high: float | None, *, strict_low: bool = False
             ) -> tuple[Callable[[pa.Array], bool], Callable[[pa.Array], pa.Array]]:
    """(cheap test, row mask) for a number outside [low, high] or not finite."""
    def row_mask(c: pa.Array) -> pa.Array:
        out = pc.invert(pc.is_finite(c)) if pa.types.is_floating(c.type) \
            else pa.array(np.zeros(len(c), dtype=bool))
        if low is not None:
            out = pc.or_(out, pc.less_equal(c, low) if strict_low else pc.less(c, low))
        if high is not None:
            out = pc.or_(out, pc.greater(c, high))
        return out

    def may_fail(c: pa.Array) -> bool:
        if c.null_count == len(c):
            return False
        if pa.types.is_floating(c.type) and not pc.all(
                pc.fill_null(pc.is_finite(c), True)).as_py():
            return True
        lo, hi = _min_max(c)
        return ((low is not None and lo is not None and (lo <= low if strict_low else lo < low))
                or (high is not None and hi is not None and hi > high))
    return may_fail, row_mask


def _cache_exceeds_input(batch: pa.RecordBatch) -> pa.Array:
    cached = pc.add(pc.fill_null(batch.column("cache_read_tokens"), 0),
                    pc.fill_null(batch.column("cache_write_tokens"), 0))
    return pc.greater(cached, pc.fill_null(batch.column("input_tokens"), 0))


def _parts_exceed(parent: str, parts: tuple[str, ...]) -> Callable[[pa.RecordBatch], pa.Array]:
    def mask(batch: pa.RecordBatch) -> pa.Array:
        total = pc.fill_null(batch.column(parts[0]), 0)
        for name in parts[1:]:
            total = pc.add(total, pc.fill_null(batch.column(name), 0))
        reported = pc.is_valid(batch.column(parts[0]))
        for name in parts[1:]:
            reported = pc.or_(reported, pc.is_valid(batch.column(name)))
        return pc.and_(reported, pc.greater(total, pc.fill_null(batch.column(parent), 0)))
    return mask


def _unit_rules(names: set[str]) -> list[_Rule]:
    rules = [_column_rule(n, f"must be between 0 and {MAX_TOKENS}", *_outside(0, MAX_TOKENS))
             for n in COUNT_UNITS if n in names]
    rules += [_column_rule(n, f"must be a finite number from 0 to {MAX_AUDIO_SECONDS:.0f}",
                           *_outside(0, MAX_AUDIO_SECONDS)) for n in SECONDS_UNITS if n in names]
    for parent, parts in PARTS.items():
        if {parent, *parts} <= names:
            mask = _parts_exceed(parent, parts)
            summed = f"; summed with {', '.join(parts[1:])}" if parts[1:] else ""
            rules.append(_Rule(parts[0], f"must not exceed {parent} (it is part of it{summed})",
                               lambda b, mask=mask: pc.any(mask(b)).as_py() is True, mask))
    return rules


def _rules(schema: pa.Schema, now: dt.datetime, ingest: IngestSettings) -> list[_Rule]:
    rules: list[_Rule] = []
    names = set(schema.names)
    record = (schema.metadata or {}).get(b"costpipe.record")
    external = record in (b"request_event", b"gpu_sample")  # what collectors and others send
    for target in schema:
        if not target.nullable:
            rules.append(_column_rule(target.name, "is required but missing",
                                      lambda c: c.null_count > 0, pc.is_null))
            if pa.types.is_string(target.type):
                rules.append(_column_rule(target.name, "must not be empty",
                                          lambda c: _min_max(c)[0] == "",
                                          lambda c: pc.equal(c, "")))
        if external and pa.types.is_string(target.type):
            limit = ingest.max_string_bytes
            rules.append(_column_rule(
                target.name, f"is longer than {limit} bytes",
                lambda c, limit=limit: (pc.max(pc.binary_length(c)).as_py() or 0) > limit,
                lambda c, limit=limit: pc.greater(pc.binary_length(c), limit)))
    for name in TOKEN_FIELDS:
        if name in names:
            rules.append(_column_rule(name, f"must be between 0 and {MAX_TOKENS}",
                                      *_outside(0, MAX_TOKENS)))
    if {"input_tokens", "cache_read_tokens", "cache_write_tokens"} <= names:
        rules.append(_Rule("cache_read_tokens",
                           "plus cache_write_tokens must not exceed input_tokens (input "
                           "counts the whole prompt, cached tokens included)",
                           lambda b: pc.any(_cache_exceeds_input(b)).as_py() is True,
                           _cache_exceeds_input))
    rules += _unit_rules(names)
    for name in (n for n in NON_NEGATIVE if n in names):
        rules.append(_column_rule(name, "must be a finite number >= 0", *_outside(0, None)))
    for name in (n for n in PERCENT if n in names):
        rules.append(_column_rule(name, "must be a finite number from 0 to 100",
                                  *_outside(0, 100)))
    for name in (n for n in FRACTION if n in names):
        rules.append(_column_rule(name, "must be a finite number from 0 to 1", *_outside(0, 1)))
    for name in (n for n in POSITIVE if n in names):
        rules.append(_column_rule(name, "must be a finite number > 0",
                                  *_outside(0, None, strict_low=True)))
    for target in schema:  # any other float must at least be finite
        covered = NON_NEGATIVE + PERCENT + FRACTION + POSITIVE + SECONDS_UNITS
        if pa.types.is_floating(target.type) and target.name not in covered:
            rules.append(_column_rule(target.name, "must be a finite number",
                                      *_outside(None, None)))
    for name, allowed in (("provider_kind", PROVIDER_KINDS), ("status", STATUSES)):
        if name in names:
            rules.append(_column_rule(
                name, f"must be one of {', '.join(allowed)}",
                lambda c, allowed=allowed: not set(pc.unique(c).drop_null().to_pylist())
                <= set(allowed),
                lambda c, allowed=allowed: _not_in(c, allowed),
            ))
    if "timestamp" in names and external:
        age = dt.timedelta(days=ingest.max_age_days)
        ahead = dt.timedelta(seconds=ingest.max_future_seconds)
        earliest, latest = now - age, now + ahead
        rules.append(_column_rule(
            "timestamp", f"is older than {ingest.max_age_days} days (ingest.max_age_days)",
            lambda c: c.null_count < len(c) and _min_max(c)[0] < earliest,
            lambda c: pc.less(c, pa.scalar(earliest, type=c.type)),
        ))
        rules.append(_column_rule(
            "timestamp",
            f"is more than {ingest.max_future_seconds} s ahead of the worker's clock (a "
            "skewed clock on the sending host? ingest.max_future_seconds)",
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
