"""Collector edges end to end on the real broker: proxy (real openai client), OTLP receiver
(real opentelemetry-sdk exporter), GPU sampler (fake NVML library calls) and the SDK's OpenAI
wrapper -> Kafka; each on the plain listener and on the SASL_SSL one as a collector principal
that may only write the requests and GPU topics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from costpipe.broker import secure
from costpipe.collectors import sdk
from costpipe.collectors.gpu import GpuSampler, run
from costpipe.collectors.openai_wrapper import wrap_openai
from costpipe.collectors.otlp import OtlpReceiver
from costpipe.collectors.producer import BatchingProducer, producer_for
from costpipe.core.kafka_clients import confluent_admin
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.integration.collectors_core.helpers import read_topic
from tests.openai_stub import PROMPT_TOKENS, StubUpstream, start_site
from tests.proxy_harness import Servers
from tests.secure_kafka import SecureCluster

pytestmark = pytest.mark.integration


@pytest.fixture(params=["plaintext", "sasl_ssl"])
def edge(request: pytest.FixtureRequest, settings_for_tests: Settings
         ) -> Iterator[tuple[Settings, Settings]]:
    """(settings the collector runs with, settings the test reads back with)."""
    if request.param == "plaintext":
        yield settings_for_tests, settings_for_tests
        return
    cluster: SecureCluster = request.getfixturevalue("secure_cluster")
    t = settings_for_tests.topics
    admin = AdminClient(confluent_admin(settings_for_tests))
    for future in admin.create_topics([NewTopic(name, t.partitions, 1)
                                       for name in (t.requests, t.gpu)]).values():
        future.result(30)
    user = cluster.user("collector")
    cluster.grant(secure.collector_grants(user[0], [t.requests, t.gpu]))
    yield Settings.model_validate({**settings_for_tests.model_dump(),
                                   "kafka": cluster.kafka_settings(*user)}), settings_for_tests


def _producer(settings: Settings, tmp_path: Path, kind: str = "requests") -> BatchingProducer:
    if kind == "gpu":
        return BatchingProducer(settings, settings.topics.gpu, GPU_SAMPLE, "gpu_sample",
                                spool_dir=tmp_path / "spool-gpu", metrics=False)
    return BatchingProducer(settings, settings.topics.requests, spool_dir=tmp_path / "spool",
                            metrics=False)


def test_proxy_calls_with_the_openai_client_arrive_on_kafka(
    edge: tuple[Settings, Settings], tmp_path: Path
) -> None:
    settings_for_tests, reader = edge
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
    rows = read_topic(reader, reader.topics.requests, 3).to_pylist()
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
    edge: tuple[Settings, Settings], tmp_path: Path
) -> None:
    settings_for_tests, reader = edge
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
    rows = read_topic(reader, reader.topics.requests, 2).to_pylist()
    assert sorted(r["input_tokens"] for r in rows) == [100, 101]
    assert {(r["app"], r["model"], r["operation"], r["source"]) for r in rows} == {
        ("billing-bot", "gpt-4o-mini", "chat", "otlp")}
    assert all(r["latency_ms"] >= 0 and len(r["request_id"]) == 48 for r in rows)


def test_gpu_samples_arrive_on_kafka(
    edge: tuple[Settings, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_for_tests, reader = edge
    FakeNvml([FakeGpu(0), FakeGpu(1, util=90)]).install(monkeypatch)
    producer = _producer(settings_for_tests, tmp_path, "gpu")
    try:
        with GpuSampler(interval_s=0.05, host="gpu-node") as sampler:
            assert run(sampler, producer, ticks=3) == 6
        producer.flush()
    finally:
        producer.close()
    table = read_topic(reader, reader.topics.gpu, 6, GPU_SAMPLE)
    assert table.num_rows == 6
    assert sorted(set(table.column("utilization_pct").to_pylist())) == [50.0, 90.0]
    assert set(table.column("host").to_pylist()) == {"gpu-node"}


def test_sdk_wrapped_openai_calls_arrive_on_kafka(
    edge: tuple[Settings, Settings], tmp_path: Path
) -> None:
    """The SDK with settings only: its shared producer is built from them."""
    settings, reader = edge
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner, url = asyncio.run_coroutine_threadsafe(start_site(StubUpstream().app()),
                                                   loop).result(10)
    settings = Settings.model_validate({**settings.model_dump(), "state_dir": tmp_path / "sdk"})
    try:
        sdk.configure(settings)
        client = wrap_openai(openai.OpenAI(base_url=url + "/v1", api_key="sk-test",
                                           max_retries=0), operation="chat")
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
        producer_for(settings, "requests").flush()
    finally:
        sdk.configure()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    rows = read_topic(reader, reader.topics.requests, 1).to_pylist()
    assert [(r["model"], r["output_tokens"], r["source"]) for r in rows] == [
        ("gpt-4o-mini", 4, "sdk")]
