"""OTLP export requests built with the opentelemetry-proto classes, for tests and benchmarks."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def span(attrs: dict[str, Any], *, duration_ms: float = 120.0, error: bool = False,
         name: str = "chat gpt-4o") -> Span:
    end = time.time_ns()
    return Span(
        trace_id=os.urandom(16), span_id=os.urandom(8), name=name, kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=end - int(duration_ms * 1e6), end_time_unix_nano=end,
        attributes=[kv(k, v) for k, v in attrs.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK),
    )


def export_request(spans: list[Span], resource: dict[str, Any] | None = None
                   ) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    resource_spans = message.resource_spans.add()
    resource_spans.resource.attributes.extend(
        kv(k, v) for k, v in (resource or {"service.name": "checkout", "host.name": "node-7"}
                              ).items())
    resource_spans.scope_spans.add().spans.extend(spans)
    return message


def otlp_json(message: ExportTraceServiceRequest) -> bytes:
    """The OTLP JSON encoding: camelCase, hex ids, 64-bit ints as strings."""
    doc = json_format.MessageToDict(message)

    def hexify(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (bytes.fromhex(_b64_to_hex(v)).hex()
                        if k in ("traceId", "spanId") else hexify(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [hexify(item) for item in node]
        return node

    return json.dumps(hexify(doc)).encode()


def _b64_to_hex(value: str) -> str:
    import base64

    return base64.b64decode(value).hex()


GENAI = {
    "gen_ai.provider.name": "openai",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 120,
    "gen_ai.usage.output_tokens": 30,
    "gen_ai.usage.cache_read.input_tokens": 100,
    "costpipe.operation": "support_chat",
    "costpipe.team": "care",
}
