"""Arrow schemas for every topic: the single source of truth that all stages import.

Field names follow the OpenTelemetry GenAI semantic conventions where one exists; the OTel
attribute name is kept in each field's metadata (`otel`) so the OTLP receiver and the JSON
Schema generator read it from here instead of keeping their own tables.

Money is `decimal128(38, 12)` (pico-dollar resolution): sums are exact, so every window
total reconciles with the per-request ledger to the nano-dollar.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from costpipe.core.money import MONEY

TIMESTAMP: Final = pa.timestamp("us", tz="UTC")

PROVIDER_KINDS: Final = ("internal", "external")
STATUSES: Final = ("ok", "error")
RECORD_TYPES: Final = ("request", "idle", "correction")
PRICING_STATUSES: Final = ("priced", "unpriced", "unpriced_unit", "gpu_allocated",
                            "gpu_unattributed", "idle")

MAX_TOKENS: Final = 100_000_000  # one request above this is a bug upstream, not a workload


def _field(
    name: str,
    type_: pa.DataType,
    *,
    nullable: bool = True,
    otel: str | None = None,
    doc: str = "",
) -> pa.Field:
    meta = {"doc": doc}
    if otel:
        meta["otel"] = otel
    return pa.field(name, type_, nullable=nullable, metadata=meta)


def _schema(name: str, version: int, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"costpipe.record": name, "costpipe.version": str(version)})


# Usage units that providers bill besides text tokens (v2 of the request event). Names are the
# price catalog's usage keys (genai-prices' unit registry), so pricing maps a catalog price to a
# column by name. Null = not reported; a refinement ("part of") counts as 0 when null.
BILLED_UNITS: Final[dict[str, tuple[pa.DataType, str]]] = {
    "input_audio_tokens": (pa.int64(), "Part of input_tokens that was audio"),
    "output_audio_tokens": (pa.int64(), "Part of output_tokens that was audio"),
    "cache_audio_read_tokens": (pa.int64(),
                                "Part of cache_read_tokens and input_audio_tokens"),
    "input_image_tokens": (pa.int64(), "Part of input_tokens that was images"),
    "output_image_tokens": (pa.int64(), "Part of output_tokens that was images"),
    "cache_image_read_tokens": (pa.int64(),
                                "Part of cache_read_tokens and input_image_tokens"),
    "input_characters": (pa.int64(), "Characters of text sent to be spoken (speech)"),
    "input_audio_seconds": (pa.float64(), "Seconds of audio sent (transcription)"),
    "output_audio_seconds": (pa.float64(), "Seconds of audio returned (speech)"),
}
COUNT_UNITS: Final = tuple(n for n, (t, _) in BILLED_UNITS.items() if pa.types.is_integer(t))
SECONDS_UNITS: Final = tuple(n for n, (t, _) in BILLED_UNITS.items() if pa.types.is_floating(t))
MAX_AUDIO_SECONDS: Final = 7 * 86_400.0  # one request above a week of audio is a bug upstream


def _billed_unit_fields() -> list[pa.Field]:
    return [_field(name, type_, doc=doc) for name, (type_, doc) in BILLED_UNITS.items()]


REQUEST_EVENT: Final = _schema(
    "request_event",
    2,
    [
        _field("request_id", pa.string(), nullable=False, doc="Unique id; dedup key"),
        _field("timestamp", TIMESTAMP, nullable=False, doc="When the request started (UTC)"),
        _field("operation", pa.string(), nullable=False, doc="Business workload class"),
        _field("gen_ai_operation", pa.string(), otel="gen_ai.operation.name",
               doc="chat, text_completion, embeddings, generate_content, ..."),
        _field("provider", pa.string(), nullable=False, otel="gen_ai.provider.name"),
        _field("provider_kind", pa.string(),
               doc="internal | external; filled from settings when absent"),
        _field("model", pa.string(), nullable=False, otel="gen_ai.request.model"),
        _field("response_model", pa.string(), otel="gen_ai.response.model"),
        _field("input_tokens", pa.int64(), nullable=False, otel="gen_ai.usage.input_tokens",
               doc="The whole prompt, cached tokens included"),
        _field("output_tokens", pa.int64(), nullable=False, otel="gen_ai.usage.output_tokens"),
        _field("cache_read_tokens", pa.int64(), nullable=False,
               otel="gen_ai.usage.cache_read.input_tokens",
               doc="Part of input_tokens (cache_read + cache_write <= input_tokens)"),
        _field("cache_write_tokens", pa.int64(), nullable=False,
               otel="gen_ai.usage.cache_creation.input_tokens",
               doc="Part of input_tokens (cache_read + cache_write <= input_tokens)"),
        *_billed_unit_fields(),
        _field("latency_ms", pa.float64(), doc="Wall time of the call"),
        _field("ttft_ms", pa.float64(), doc="Time to first token (streaming)"),
        _field("status", pa.string(), nullable=False, doc="ok | error"),
        _field("error_type", pa.string(), otel="error.type"),
        _field("team", pa.string()),
        _field("app", pa.string()),
        _field("feature", pa.string()),
        _field("host", pa.string(), otel="host.name", doc="Host that served an own-model call"),
        _field("gpu_uuid", pa.string(), doc="GPU that served an own-model call"),
        _field("source", pa.string(), doc="sdk | proxy | otlp | simulator | json"),
    ],
)

GPU_SAMPLE: Final = _schema(
    "gpu_sample",
    1,
    [
        _field("timestamp", TIMESTAMP, nullable=False),
        _field("host", pa.string(), nullable=False, otel="host.name"),
        _field("gpu_uuid", pa.string(), nullable=False, otel="hw.id"),
        _field("gpu_index", pa.int32(), nullable=False),
        _field("mig_instance", pa.string(), doc="MIG GPU instance id, when partitioned"),
        _field("gpu_name", pa.string(), otel="hw.model"),
        _field("utilization_pct", pa.float64(), otel="hw.gpu.utilization"),
        _field("memory_used_bytes", pa.int64(), otel="hw.gpu.memory.usage"),
        _field("memory_total_bytes", pa.int64(), otel="hw.gpu.memory.limit"),
        _field("power_w", pa.float64(), otel="hw.power"),
        _field("energy_mj", pa.int64(), otel="hw.energy",
               doc="Total energy counter since driver load, millijoules"),
        _field("temperature_c", pa.float64(), otel="hw.temperature"),
        _field("interval_s", pa.float64(), nullable=False, doc="Sampling interval"),
        _field("gpu_fraction", pa.float64(),
               doc="Share of a physical GPU this row stands for (MIG instance: its memory "
                   "share; the MIG parent: the unpartitioned rest); null = the whole GPU"),
    ],
)

COST_RECORD: Final = _schema(
    "cost_record",
    2,
    [
        _field("record_id", pa.string(), nullable=False,
               doc="request_id, or idle:<gpu>:<bucket> for idle cost"),
        _field("record_type", pa.string(), nullable=False, doc="request | idle | correction"),
        _field("timestamp", TIMESTAMP, nullable=False),
        _field("operation", pa.string(), nullable=False),
        _field("provider", pa.string(), nullable=False, otel="gen_ai.provider.name"),
        _field("provider_kind", pa.string(), nullable=False),
        _field("model", pa.string(), nullable=False, otel="gen_ai.request.model"),
        _field("team", pa.string()),
        _field("app", pa.string()),
        _field("feature", pa.string()),
        _field("input_tokens", pa.int64(), nullable=False),
        _field("output_tokens", pa.int64(), nullable=False),
        _field("cache_read_tokens", pa.int64(), nullable=False),
        _field("cache_write_tokens", pa.int64(), nullable=False),
        *_billed_unit_fields(),
        _field("cost", MONEY, nullable=False, doc="What we pay (USD)"),
        _field("list_cost", MONEY, doc="Catalog price before contract discounts"),
        _field("shadow_cost", MONEY, doc="What the reference external model would charge"),
        _field("pricing_status", pa.string(), nullable=False,
               doc="priced | unpriced (model not in the catalog) | unpriced_unit (its price is "
                   "in a unit the request did not report) | gpu_allocated | gpu_unattributed "
                   "| idle"),
        _field("latency_ms", pa.float64()),
        _field("ttft_ms", pa.float64()),
        _field("status", pa.string(), nullable=False),
        _field("gpu_uuid", pa.string()),
        _field("bucket_start", TIMESTAMP, doc="GPU cost bucket for own-model records"),
        _field("source_partition", pa.int32(), doc="Request topic partition (idempotence)"),
        _field("source_offset", pa.int64(), doc="Request topic offset (idempotence)"),
    ],
)

WINDOW_AGGREGATE: Final = _schema(
    "window_aggregate",
    1,
    [
        _field("window_start", TIMESTAMP, nullable=False),
        _field("window_end", TIMESTAMP, nullable=False),
        _field("operation", pa.string(), nullable=False),
        _field("provider_kind", pa.string(), nullable=False),
        _field("provider", pa.string(), nullable=False),
        _field("model", pa.string(), nullable=False),
        _field("requests", pa.int64(), nullable=False),
        _field("errors", pa.int64(), nullable=False),
        _field("input_tokens", pa.int64(), nullable=False),
        _field("output_tokens", pa.int64(), nullable=False),
        _field("cost", MONEY, nullable=False),
        _field("shadow_cost", MONEY, nullable=False),
        _field("latency_p50_ms", pa.float64()),
        _field("latency_p95_ms", pa.float64()),
        _field("latency_p99_ms", pa.float64()),
        _field("external_share_cost", pa.float64(),
               doc="Null since 2026-12-01: a window's keys are merged on several partitions; "
                   "its share over all keys is in the window_share view"),
        _field("external_share_requests", pa.float64(), doc="Null since 2026-12-01"),
        _field("revision", pa.int32(),
               doc="0 = on-time close; 1.. = late delta rows (sum all rows of a window)"),
    ],
)

ALERT: Final = _schema(
    "alert",
    1,
    [
        _field("alert_id", pa.string(), nullable=False, doc="Deterministic: rule + key + window"),
        _field("timestamp", TIMESTAMP, nullable=False,
               doc="When the alert fired, in event time: the end of the window that fired it "
                   "(the same for an alert re-emitted after a crash)"),
        _field("rule", pa.string(), nullable=False,
               doc="spike | budget_hour | budget_day | dependency_share | forecast_budget | "
                   "forecast_share"),
        _field("severity", pa.string(), nullable=False, doc="warning | critical"),
        _field("key", pa.string(), nullable=False, doc="operation/provider/model or scope"),
        _field("window_start", TIMESTAMP),
        _field("observed", pa.float64(), nullable=False),
        _field("threshold", pa.float64(), nullable=False),
        _field("message", pa.string(), nullable=False),
    ],
)

DEAD_LETTER: Final = _schema(
    "dead_letter",
    1,
    [
        _field("timestamp", TIMESTAMP, nullable=False),
        _field("source_topic", pa.string(), nullable=False),
        _field("source_partition", pa.int32(), nullable=False),
        _field("source_offset", pa.int64(), nullable=False),
        _field("reason", pa.string(), nullable=False),
        _field("field", pa.string()),
        _field("encoding", pa.string()),
        _field("original", pa.binary(), nullable=False),
    ],
)

ALL_SCHEMAS: Final[dict[str, pa.Schema]] = {
    "request_event": REQUEST_EVENT,
    "gpu_sample": GPU_SAMPLE,
    "cost_record": COST_RECORD,
    "window_aggregate": WINDOW_AGGREGATE,
    "alert": ALERT,
    "dead_letter": DEAD_LETTER,
}


def otel_attribute_map(schema: pa.Schema) -> dict[str, str]:
    """OTel attribute name -> our field name, from the field metadata."""
    out: dict[str, str] = {}
    for field in schema:
        meta = field.metadata or {}
        if b"otel" in meta:
            out[meta[b"otel"].decode()] = field.name
    return out
