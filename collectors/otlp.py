"""OTLP/HTTP trace receiver: OpenTelemetry GenAI spans in, request events out.

Why: many teams already instrument model calls with OpenTelemetry (GenAI semantic
conventions); pointing their OTLP exporter here gives cost telemetry without code changes.

Accepts POST /v1/traces as protobuf (`application/x-protobuf`) or OTLP JSON
(`application/json`: camelCase keys, hex trace/span ids, 64-bit ints as strings), optionally
gzip/deflate-encoded (aiohttp inflates it). A span is a GenAI span when it has
`gen_ai.provider.name` (or the deprecated `gen_ai.system`); other spans are counted and
ignored. Attribute -> field names come from the
schema's own `otel` metadata (`otel_attribute_map`), plus `costpipe.<field>` attributes
(operation, team, app, feature, ...) and resource `service.name` -> app. The request id is
trace id + span id, so a re-exported span is the same event (dedup downstream).

Replies with ExportTraceServiceResponse in the request's encoding; spans that cannot become
valid events are reported in `partial_success` (count + first reasons), never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import logging
import re
import zlib
from typing import Any

import pyarrow as pa
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from costpipe.collectors.events import FIELDS, TOKEN_DEFAULTS, EventSink
from costpipe.core.metrics import OTLP_SPANS
from costpipe.core.settings import Settings
from costpipe.schemas.codec import validate
from costpipe.schemas.records import REQUEST_EVENT, otel_attribute_map

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Costpipe-Token"
PROTOBUF = "application/x-protobuf"
JSON_TYPE = "application/json"
MAX_BODY = 32 * 1024 * 1024
ATTRIBUTES = otel_attribute_map(REQUEST_EVENT)
# Deprecated OTel names -> current OTel names (the current name wins when both are present).
DEPRECATED = {
    "gen_ai.system": "gen_ai.provider.name",
    "gen_ai.usage.prompt_tokens": "gen_ai.usage.input_tokens",
    "gen_ai.usage.completion_tokens": "gen_ai.usage.output_tokens",
}
PROVIDER_KEYS = ("gen_ai.provider.name", "gen_ai.system")
INT_FIELDS = frozenset(name for name in FIELDS if REQUEST_EVENT.field(name).type == pa.int64())
FLOAT_FIELDS = frozenset(
    name for name in FIELDS if REQUEST_EVENT.field(name).type == pa.float64()
)
NUMERIC_FIELDS = INT_FIELDS | FLOAT_FIELDS
# attribute key -> (field, is a deprecated name), built from the schema metadata
_KEYS: dict[str, tuple[str, bool]] = {
    **{f"costpipe.{name}": (name, False) for name in FIELDS},
    **{otel: (name, False) for otel, name in ATTRIBUTES.items()},
    **{old: (ATTRIBUTES[new], True) for old, new in DEPRECATED.items()},
}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_RELAXED = pa.schema(
    [f.with_nullable(True) for f in REQUEST_EVENT], metadata=REQUEST_EVENT.metadata
)

SPANS = OTLP_SPANS


class BadPayload(ValueError):
    """The export request itself could not be read (answered with HTTP 400)."""


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items if isinstance(kv, KeyValue)}


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP JSON carries ids as hex; protobuf's JSON mapping expects base64 for bytes."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str) and _HEX.match(value):
                value = base64.b64encode(binascii.unhexlify(value)).decode()
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    try:
        if content_type == PROTOBUF:
            message.ParseFromString(body)
        else:
            json_format.ParseDict(_hex_ids_to_base64(json.loads(body)), message,
                                  ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, ValueError, binascii.Error) as exc:
        raise BadPayload(f"cannot parse OTLP {content_type} body: {exc}") from None
    return message


def _decompress(body: bytes) -> bytes:
    """aiohttp already inflates gzip/deflate request bodies (within `client_max_size`); this
    only catches a body that is still gzip (e.g. double-encoded by a middlebox)."""
    if body[:2] != b"\x1f\x8b":
        return body
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(body, MAX_BODY)
    except zlib.error as exc:
        raise BadPayload(f"bad gzip body: {exc}") from None
    if inflater.unconsumed_tail:
        raise BadPayload(f"decompressed body exceeds {MAX_BODY} bytes")
    return out


class SpanConverter:
    """ExportTraceServiceRequest -> (rows, rejection reasons, ignored count)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def convert(self, request: ExportTraceServiceRequest) -> tuple[list[dict[str, Any]],
                                                                   list[str], int, int]:
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        received = ignored = 0
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received += 1
                    attrs = _attributes(span.attributes)
                    if not any(key in attrs for key in PROVIDER_KEYS):
                        ignored += 1
                        continue
                    try:
                        rows.append(self._row(span, attrs, resource))
                    except ValueError as exc:
                        problems.append(f"span {span.span_id.hex()}: {exc}")
        return rows, problems, received, ignored

    def _row(self, span: Any, attrs: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        fallback: dict[str, Any] = {}  # from deprecated names: used only when no current name
        for source in (resource, attrs):  # span attributes override resource attributes
            for key, value in source.items():
                target = _KEYS.get(key)
                if target is None or value is None:
                    continue
                name, deprecated = target
                if name in NUMERIC_FIELDS or not isinstance(value, str):
                    value = _coerce(name, value)
                (fallback if deprecated else fields)[name] = value
        for name, value in fallback.items():
            fields.setdefault(name, value)
        if not fields.get("app") and resource.get("service.name"):
            fields["app"] = str(resource["service.name"])
        model = fields.get("model") or fields.get("response_model")
        if not model:
            raise ValueError("gen_ai.request.model (or gen_ai.response.model) is required")
        fields["model"] = model
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if not start:
            raise ValueError("start_time_unix_nano is required")
        failed = span.status.code == Status.STATUS_CODE_ERROR or bool(fields.get("error_type"))
        gen_ai_operation = fields.get("gen_ai_operation")
        row = dict.fromkeys(REQUEST_EVENT.names)
        row.update(TOKEN_DEFAULTS)
        row.update(fields)
        row.update({
            "request_id": span.trace_id.hex() + span.span_id.hex(),
            "timestamp": dt.datetime.fromtimestamp(start / 1e9, dt.UTC),
            "operation": fields.get("operation")
            or self.settings.servers.operation_map.get(model)
            or gen_ai_operation or "unknown",
            "latency_ms": fields.get("latency_ms",
                                     (end - start) / 1e6 if end >= start else None),
            "status": "error" if failed else "ok",
            "error_type": (fields.get("error_type") or "error") if failed else None,
            "source": "otlp",
        })
        if not row.get("provider_kind"):
            row["provider_kind"] = (
                "internal" if self.settings.is_internal(str(row["provider"])) else "external"
            )
        return row


def _coerce(name: str, value: Any) -> Any:
    try:
        if name in INT_FIELDS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            number = int(value)
            if not -(2**63) <= number < 2**63:
                raise ValueError(f"attribute for {name} must fit in 64 bits, got "
                                 f"{str(value)[:40]}")
            return number
        if name in FLOAT_FIELDS:
            return float(value)
    except OverflowError:  # int(inf)
        raise ValueError(f"attribute for {name} must be a finite number, got {value!r}") \
            from None
    except ValueError as exc:
        if "64 bits" in str(exc):
            raise
        raise ValueError(f"attribute for {name} must be a number, got {str(value)[:40]!r}") \
            from None
    except TypeError:
        raise ValueError(f"attribute for {name} must be a number, got {value!r}") from None
    return value if isinstance(value, str) else str(value)


def _buildable(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows Arrow can hold, and a reason for each one it cannot (one bad span must not
    cost the others: the export is answered with a partial success)."""
    try:
        pa.RecordBatch.from_pylist(rows, schema=_RELAXED)
        return rows, []
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        good, reasons = [], []
        for row in rows:
            try:
                pa.RecordBatch.from_pylist([row], schema=_RELAXED)
                good.append(row)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                reasons.append(f"span {row.get('request_id')}: {exc}")
        return good, reasons


class OtlpReceiver:
    """The aiohttp application serving POST /v1/traces."""

    def __init__(self, settings: Settings, sink: EventSink, *, auth_token: str | None = None):
        self.converter = SpanConverter(settings)
        self.sink = sink
        self.auth_token = auth_token

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/v1/traces", self.traces)
        return app

    async def traces(self, request: web.Request) -> web.Response:
        if self.auth_token and not hmac.compare_digest(
            request.headers.get(TOKEN_HEADER, "").encode(), self.auth_token.encode()
        ):
            return web.Response(status=401, text="missing or wrong X-Costpipe-Token header")
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON_TYPE):
            return web.Response(status=415, text=f"use {PROTOBUF} or {JSON_TYPE}")
        try:
            body = _decompress(await request.read())
            message = parse_request(body, content_type)
        except BadPayload as exc:
            return web.Response(status=400, text=str(exc))
        rejected, reasons = self.ingest(message)
        reply = ExportTraceServiceResponse()
        if rejected:
            reply.partial_success.rejected_spans = rejected
            reply.partial_success.error_message = "; ".join(reasons[:5])
        if content_type == PROTOBUF:
            return web.Response(body=reply.SerializeToString(), content_type=PROTOBUF)
        return web.Response(text=json_format.MessageToJson(reply, indent=None),
                            content_type=JSON_TYPE)

    def ingest(self, message: ExportTraceServiceRequest) -> tuple[int, list[str]]:
        """Convert, validate as a batch, hand valid rows to the sink; return rejections."""
        rows, reasons, received, ignored = self.converter.convert(message)
        rejected = len(reasons)
        rows, unbuildable = _buildable(rows)
        rejected += len(unbuildable)
        reasons += unbuildable
        if rows:
            batch = pa.RecordBatch.from_pylist(rows, schema=_RELAXED)
            valid, rejections = validate(batch, REQUEST_EVENT)
            bad_rows = {r.row for r in rejections}
            rejected += len(bad_rows)
            reasons += [str(r) for r in rejections]
            if valid.num_rows:
                self.sink.emit_batch(valid)
        SPANS.labels("received").inc(received)
        SPANS.labels("ignored").inc(ignored)
        SPANS.labels("genai").inc(received - ignored)
        SPANS.labels("rejected").inc(rejected)
        if rejected:
            log.warning("rejected %d GenAI span(s): %s", rejected, "; ".join(reasons[:3]))
        return rejected, reasons
