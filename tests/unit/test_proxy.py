"""Proxy behaviour with the real `openai` client against a local OpenAI-wire-format stub.

The sink here is a list (the unit under test is the proxy's HTTP handling and measurement);
tests/integration/test_edges_kafka.py reads the same events back from the real broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.openai_stub import CACHED_TOKENS, PROMPT_TOKENS, StubUpstream, free_port
from tests.proxy_harness import ListSink, Servers


@pytest.fixture
def servers() -> Iterator[Servers]:
    with Servers(StubUpstream(), ListSink(), provider="openai") as running:
        yield running


def _only(sink: ListSink) -> dict[str, Any]:
    deadline = time.monotonic() + 2
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sink.events) == 1, sink.events
    return sink.events[0]


def test_non_streaming_chat_usage_tags_and_operation_header(servers: Servers) -> None:
    client = servers.client(**{"X-Costpipe-Operation": "code_completion",
                               "X-Costpipe-Team": "search", "X-Costpipe-App": "ide"})
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "secret prompt"}], max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    event = _only(servers.sink)
    assert event["operation"] == "code_completion"
    assert (event["team"], event["app"], event["feature"]) == ("search", "ide", None)
    assert (event["provider"], event["provider_kind"], event["source"]) == (
        "openai", "external", "proxy")
    assert event["model"] == "gpt-4o" and event["response_model"] == "gpt-4o-0613"
    assert event["gen_ai_operation"] == "chat"
    assert (event["input_tokens"], event["output_tokens"]) == (PROMPT_TOKENS, 3)
    assert event["cache_read_tokens"] == CACHED_TOKENS
    assert event["status"] == "ok" and event["error_type"] is None
    assert event["latency_ms"] > 0 and 0 < event["ttft_ms"] <= event["latency_ms"]
    # the API key reaches the upstream; our own headers do not
    sent = {k.lower(): v for k, v in servers.stub.headers[-1].items()}
    assert sent["authorization"] == "Bearer sk-secret-key"
    assert not any(k.startswith("x-costpipe-") for k in sent)
    assert "secret" not in repr(event)


def test_streaming_chat_injects_usage_and_hides_the_extra_chunk(servers: Servers) -> None:
    stream = servers.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True)
    chunks = list(stream)
    assert all(chunk.choices for chunk in chunks), "injected usage chunk leaked to the client"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "tok0 tok1 tok2 tok3 "
    assert servers.stub.requests[-1]["stream_options"] == {"include_usage": True}
    event = _only(servers.sink)
    assert (event["input_tokens"], event["output_tokens"]) == (PROMPT_TOKENS, 4)
    assert event["operation"] == "chat"
    assert 0 < event["ttft_ms"] <= event["latency_ms"]


def test_streaming_chat_keeps_the_usage_chunk_the_client_asked_for(servers: Servers) -> None:
    stream = servers.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2
    assert _only(servers.sink)["output_tokens"] == 2


def test_streaming_without_usage_from_upstream_counts_chunks() -> None:
    sink = ListSink()
    with Servers(StubUpstream(usage_in_stream=False), sink, provider="own-vllm") as running:
        list(running.client().chat.completions.create(
            model="llama-3-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
            stream=True))
        event = _only(sink)
    assert event["output_tokens"] == 6 and event["input_tokens"] > 0
    assert event["provider_kind"] == "internal"


def test_error_status_is_recorded_and_passed_through(servers: Servers) -> None:
    with pytest.raises(openai.RateLimitError):
        servers.client().chat.completions.create(
            model="fail-429", messages=[{"role": "user", "content": "hi"}])
    event = _only(servers.sink)
    assert event["status"] == "error" and event["error_type"] == "rate_limit_error"
    assert event["input_tokens"] == 0 and event["output_tokens"] == 0


def test_embeddings_completions_responses_and_operation_map(servers: Servers) -> None:
    client = servers.client()
    client.embeddings.create(model="emb-model", input=["a", "b"])
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", max_tokens=2)
    client.responses.create(model="gpt-4.1", input="hello")
    deadline = time.monotonic() + 2
    while len(servers.sink.events) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    emb, cmpl, resp = servers.sink.events
    assert (emb["operation"], emb["gen_ai_operation"]) == ("search_embeddings", "embeddings")
    assert (emb["input_tokens"], emb["output_tokens"]) == (6, 0)
    assert (cmpl["operation"], cmpl["output_tokens"]) == ("text_completion", 2)
    assert (resp["operation"], resp["input_tokens"], resp["output_tokens"]) == ("responses", 9, 4)
    assert resp["cache_read_tokens"] == 1


def test_other_paths_pass_through_without_events(servers: Servers) -> None:
    models = servers.client().models.list()
    assert [m.id for m in models.data] == ["stub-model"]
    assert servers.sink.events == []


def test_auth_token_required_when_configured() -> None:
    sink = ListSink()
    with Servers(StubUpstream(), sink, provider="openai", auth_token="t0k") as running:
        with pytest.raises(openai.AuthenticationError):
            running.client().models.list()
        assert running.client(**{"X-Costpipe-Token": "t0k"}).models.list().data
        assert all("x-costpipe-token" not in {k.lower() for k in h}
                   for h in running.stub.headers)


def test_chunks_reach_the_client_before_the_upstream_finishes() -> None:
    sink = ListSink()
    with Servers(StubUpstream(chunk_delay_s=0.25), sink, provider="openai") as running:
        body = {"model": "gpt-4o", "stream": True, "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]}
        start = time.monotonic()
        arrivals: list[float] = []
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=body,
                          timeout=10) as response:
            for _ in response.iter_raw():
                arrivals.append(time.monotonic() - start)
        # 8 upstream writes 0.25 s apart: the first must arrive long before the last
        assert arrivals[0] < 0.75, arrivals
        assert arrivals[-1] > 1.5, arrivals
        assert len(arrivals) >= 5, arrivals


def test_client_disconnect_mid_stream_is_recorded_as_an_error() -> None:
    sink = ListSink()
    with Servers(StubUpstream(chunk_delay_s=0.2), sink, provider="openai") as running:
        body = {"model": "gpt-4o", "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=body,
                          timeout=10) as response:
            next(response.iter_raw())
        event = _only(sink) if _wait_for(sink, 5) else None
    assert event is not None
    assert (event["status"], event["error_type"]) == ("error", "client_disconnected")
    assert event["output_tokens"] < 8


def test_a_client_that_leaves_after_done_completed_its_call() -> None:
    """The official sync client closes the response right after `data: [DONE]`; when the
    upstream ends its body in a later read the call was still fully delivered."""
    sink = ListSink()
    with Servers(StubUpstream(end_delay_s=0.3), sink, provider="openai") as running:
        body = {"model": "gpt-4o", "stream": True, "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}]}
        received = b""
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=body,
                          timeout=10) as response:
            for chunk in response.iter_raw():
                received += chunk
                if b"[DONE]" in received:
                    break  # leave now, as openai's Stream does
        event = _only(sink) if _wait_for(sink, 5) else None
    assert event is not None
    assert (event["status"], event["error_type"]) == ("ok", None)
    assert event["output_tokens"] == 8 and event["input_tokens"] > 0


def _wait_for(sink: ListSink, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(sink.events)


def test_unreachable_upstream_is_a_502_and_an_error_event() -> None:
    sink = ListSink()
    with Servers(StubUpstream(), sink, provider="openai") as running:
        dead = free_port()
        proxy = running.proxy_for(f"http://127.0.0.1:{dead}/v1")
        with pytest.raises(openai.InternalServerError) as raised:
            openai.OpenAI(base_url=proxy + "/v1", api_key="k", max_retries=0).embeddings.create(
                model="emb", input="x")
        assert raised.value.status_code == 502
        event = _only(sink)
    assert (event["status"], event["error_type"]) == ("error", "upstream_unreachable")
