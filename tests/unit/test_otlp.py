"""OTLP receiver: protobuf, OTLP JSON and gzip payloads over real HTTP; the sink is a list."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import aiohttp
import pyarrow as pa
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from costpipe.collectors.otlp import SPANS, OtlpReceiver
from costpipe.core.settings import load_settings
from tests.openai_stub import start_site
from tests.otlp_payloads import GENAI, export_request, otlp_json, span

PROTO = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


class BatchSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def emit(self, event: Any) -> None:
        self.rows.append(dict(event))

    def emit_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.rows.extend(batch.to_pylist())


def post(body: bytes, headers: dict[str, str], *, token: str | None = None
         ) -> tuple[int, bytes, list[dict[str, Any]]]:
    sink = BatchSink()
    settings = load_settings(environ={"COSTPIPE_PROVIDERS__INTERNAL": '["own-vllm"]'})

    async def go() -> tuple[int, bytes]:
        runner, url = await start_site(OtlpReceiver(settings, sink, auth_token=token).app())
        try:
            async with aiohttp.ClientSession() as session, session.post(
                url + "/v1/traces", data=body, headers=headers
            ) as reply:
                return reply.status, await reply.read()
        finally:
            await runner.cleanup()

    status, payload = asyncio.run(go())
    return status, payload, sink.rows


def _counter(outcome: str) -> float:
    return SPANS.labels(outcome)._value.get()


def test_protobuf_genai_span_becomes_a_request_event() -> None:
    message = export_request([span(GENAI, duration_ms=250), span({"http.method": "GET"})])
    before = {k: _counter(k) for k in ("received", "genai", "ignored", "rejected")}
    status, payload, rows = post(message.SerializeToString(), PROTO)
    assert status == 200
    reply = ExportTraceServiceResponse.FromString(payload)
    assert not reply.HasField("partial_success")
    assert len(rows) == 1
    row = rows[0]
    assert (row["provider"], row["provider_kind"], row["model"]) == ("openai", "external",
                                                                    "gpt-4o")
    assert row["response_model"] == "gpt-4o-2024-08-06" and row["gen_ai_operation"] == "chat"
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (120, 30, 100)
    assert (row["operation"], row["team"], row["app"], row["host"]) == (
        "support_chat", "care", "checkout", "node-7")
    assert abs(row["latency_ms"] - 250) < 0.01 and row["status"] == "ok"
    first = message.resource_spans[0].scope_spans[0].spans[0]
    assert row["request_id"] == first.trace_id.hex() + first.span_id.hex()
    assert row["source"] == "otlp"
    after = {k: _counter(k) for k in before}
    assert {k: after[k] - before[k] for k in after} == {
        "received": 2, "genai": 1, "ignored": 1, "rejected": 0}


def test_otlp_json_with_deprecated_names_and_gzip() -> None:
    old = {"gen_ai.system": "own-vllm", "gen_ai.request.model": "llama-3-8b",
           "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 5,
           "gen_ai.operation.name": "text_completion"}
    message = export_request([span(old, error=True)], resource={"service.name": "ide"})
    body = gzip.compress(otlp_json(message))
    assert b'"intValue": "11"' in gzip.decompress(body)  # 64-bit ints as strings, per OTLP JSON
    status, payload, rows = post(body, {**JSON, "Content-Encoding": "gzip"})
    assert status == 200 and payload.strip() in (b"{}", b"{ }")
    (row,) = rows
    assert (row["provider"], row["provider_kind"]) == ("own-vllm", "internal")
    assert (row["input_tokens"], row["output_tokens"]) == (11, 5)
    assert row["operation"] == "text_completion" and row["app"] == "ide"
    assert (row["status"], row["error_type"]) == ("error", "error")
    first = message.resource_spans[0].scope_spans[0].spans[0]
    assert row["request_id"] == first.trace_id.hex() + first.span_id.hex()


def test_current_name_wins_over_deprecated() -> None:
    attrs = {**GENAI, "gen_ai.system": "legacy", "gen_ai.usage.prompt_tokens": 1}
    _, _, (row,) = post(export_request([span(attrs)]).SerializeToString(), PROTO)
    assert row["provider"] == "openai" and row["input_tokens"] == 120


def test_bad_spans_are_rejected_with_partial_success() -> None:
    no_model = {k: v for k, v in GENAI.items() if "model" not in k}
    negative = {**GENAI, "gen_ai.usage.output_tokens": -5}
    message = export_request([span(GENAI), span(no_model), span(negative)])
    status, payload, rows = post(message.SerializeToString(), PROTO)
    assert status == 200 and len(rows) == 1
    reply = ExportTraceServiceResponse.FromString(payload)
    assert reply.partial_success.rejected_spans == 2
    assert "gen_ai.request.model" in reply.partial_success.error_message
    assert "output_tokens" in reply.partial_success.error_message


def test_garbage_and_wrong_content_type_and_auth() -> None:
    assert post(b"\xff\x00garbage", PROTO)[0] == 400
    assert post(b"{not json", JSON)[0] == 400
    assert post(b"x", {"Content-Type": "text/plain"})[0] == 415
    body = export_request([span(GENAI)]).SerializeToString()
    assert post(body, PROTO, token="s3cret")[0] == 401
    status, _, rows = post(body, {**PROTO, "X-Costpipe-Token": "s3cret"}, token="s3cret")
    assert status == 200 and len(rows) == 1


def test_empty_export_is_fine() -> None:
    status, _, rows = post(ExportTraceServiceRequest().SerializeToString(), PROTO)
    assert status == 200 and rows == []


def test_one_bad_span_never_costs_the_others() -> None:
    """Token attributes beyond 64 bits, non-finite numbers and inconsistent counts are
    rejected span by span with an OTLP partial success; the good spans of the same export
    are kept (an exporter does not retry a 500)."""
    huge_double = {**GENAI, "gen_ai.usage.input_tokens": 1e300}
    huge_text = {**GENAI, "gen_ai.usage.output_tokens": "1" * 41}
    infinite = {**GENAI, "gen_ai.usage.input_tokens": float("inf")}
    cached = {**GENAI, "gen_ai.usage.cache_read.input_tokens": 10_000}
    long_model = {**GENAI, "gen_ai.request.model": "m" * 10_000}
    message = export_request([span(GENAI), span(huge_double), span(huge_text), span(infinite),
                              span(cached), span(long_model), span(GENAI)])
    for body, headers in ((message.SerializeToString(), PROTO), (otlp_json(message), JSON)):
        status, payload, rows = post(body, headers)
        assert status == 200 and len(rows) == 2
        reply = (ExportTraceServiceResponse.FromString(payload) if headers is PROTO else
                 json_format.Parse(payload, ExportTraceServiceResponse()))
        assert reply.partial_success.rejected_spans == 5


def test_voice_units_arrive_as_costpipe_attributes() -> None:
    """The GenAI conventions name no attribute for characters or audio seconds (semconv
    0.66b2); `costpipe.<field>` carries every billed unit of the request event."""
    attrs = {"gen_ai.provider.name": "openai", "gen_ai.request.model": "whisper-1",
             "gen_ai.operation.name": "transcription", "costpipe.input_audio_seconds": 12.5,
             "costpipe.input_audio_tokens": 300, "gen_ai.usage.input_tokens": 310}
    status, _, rows = post(export_request([span(attrs)]).SerializeToString(), PROTO)
    assert status == 200 and len(rows) == 1
    row = rows[0]
    assert (row["input_audio_seconds"], row["input_audio_tokens"], row["input_tokens"]) == (
        12.5, 300, 310)
    assert row["input_characters"] is None
