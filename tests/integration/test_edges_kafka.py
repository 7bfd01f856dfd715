"""Collector edges end to end on the real broker: proxy (real openai client), OTLP receiver
(real opentelemetry-sdk exporter) and GPU sampler (fake NVML library calls) -> Kafka."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from costpipe.collectors.gpu import GpuSampler, run
from costpipe.collectors.otlp import OtlpReceiver
from costpipe.collectors.producer import BatchingProducer
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.integration.collectors_core.helpers import read_topic
from tests.openai_stub import PROMPT_TOKENS, StubUpstream, start_site
from tests.proxy_harness import Servers

pytestmark = pytest.mark.integration


def _producer(settings: Settings, tmp_path: Path, kind: str = "requests") -> BatchingProducer:
    if kind == "gpu":
        return BatchingProducer(settings, settings.topics.gpu, GPU_SAMPLE, "gpu_sample",
                                spool_dir=tmp_path / "spool-gpu", metrics=False)
    return BatchingProducer(settings, settings.topics.requests, spool_dir=tmp_path / "spool",
                            metrics=False)


def test_proxy_calls_with_the_openai_client_arrive_on_kafka(
    settings_for_tests: Settings, tmp_path: Path
) -> None:
    producer = _producer(settings_for_tests, tmp_path)
    try:
        with Servers(StubUpstream(), producer, settings_for_tests, provider="openai") as proxy:
            client = proxy.client(**{"X-Costpipe-Operation": "code_completion"})
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            list(client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                stream=True))
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(
                    model="fail-429", messages=[{"role": "user", "content": "hi"}])
        producer.flush()
    finally:
        producer.close()
    rows = read_topic(settings_for_tests, settings_for_tests.topics.requests, 3).to_pylist()
    assert len(rows) == 3
    rows.sort(key=lambda r: r["timestamp"])
    plain, streamed, failed = rows
    assert (plain["input_tokens"], plain["output_tokens"]) == (PROMPT_TOKENS, 3)
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (PROMPT_TOKENS, 5)
    for row in (plain, streamed):
        assert row["operation"] == "code_completion" and row["source"] == "proxy"
        assert row["status"] == "ok" and 0 < row["ttft_ms"] <= row["latency_ms"]
    assert (failed["status"], failed["error_type"]) == ("error", "rate_limit_error")


def test_spans_from_the_opentelemetry_sdk_exporter_arrive_on_kafka(
    settings_for_tests: Settings, tmp_path: Path
) -> None:
    producer = _producer(settings_for_tests, tmp_path)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = OtlpReceiver(settings_for_tests, producer)
    runner, url = asyncio.run_coroutine_threadsafe(start_site(receiver.app()), loop).result(10)
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-bot"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=url + "/v1/traces", compression=Compression.Gzip)))
    tracer = provider.get_tracer("test")
    try:
        for i in range(2):
            with tracer.start_as_current_span("chat gpt-4o-mini") as span:
                span.set_attribute("gen_ai.provider.name", "openai")
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", "gpt-4o-mini")
                span.set_attribute("gen_ai.usage.input_tokens", 100 + i)
                span.set_attribute("gen_ai.usage.output_tokens", 20)
                with tracer.start_as_current_span("db query"):
                    pass
        assert provider.force_flush(10_000)
        producer.flush()
    finally:
        provider.shutdown()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        producer.close()
    rows = read_topic(settings_for_tests, settings_for_tests.topics.requests, 2).to_pylist()
    assert sorted(r["input_tokens"] for r in rows) == [100, 101]
    assert {(r["app"], r["model"], r["operation"], r["source"]) for r in rows} == {
        ("billing-bot", "gpt-4o-mini", "chat", "otlp")}
    assert all(r["latency_ms"] >= 0 and len(r["request_id"]) == 48 for r in rows)


def test_gpu_samples_arrive_on_kafka(
    settings_for_tests: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeNvml([FakeGpu(0), FakeGpu(1, util=90)]).install(monkeypatch)
    producer = _producer(settings_for_tests, tmp_path, "gpu")
    try:
        with GpuSampler(interval_s=0.05, host="gpu-node") as sampler:
            assert run(sampler, producer, ticks=3) == 6
        producer.flush()
    finally:
        producer.close()
    table = read_topic(settings_for_tests, settings_for_tests.topics.gpu, 6, GPU_SAMPLE)
    assert table.num_rows == 6
    assert sorted(set(table.column("utilization_pct").to_pylist())) == [50.0, 90.0]
    assert set(table.column("host").to_pylist()) == {"gpu-node"}
