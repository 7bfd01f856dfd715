"""SDK `track`/`tracked` and `wrap_openai` (real openai client, sync + async, streaming) against
a local OpenAI-wire stub; every event is read back from the real broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import openai
import pytest

from costpipe.collectors import sdk
from costpipe.collectors.openai_wrapper import wrap_openai
from costpipe.collectors.producer import BatchingProducer
from tests.integration.collectors_core.helpers import read_topic
from tests.openai_stub import CACHED_TOKENS, PROMPT_TOKENS, StubUpstream, start_site

pytestmark = pytest.mark.integration


class _Stub:
    """The stub upstream served from its own event-loop thread."""

    def __init__(self, upstream: StubUpstream) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner, self.url = asyncio.run_coroutine_threadsafe(
            start_site(upstream.app()), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub(StubUpstream())
    yield server
    server.close()


@pytest.fixture
def producer(settings_for_tests) -> Iterator[BatchingProducer]:
    producer = BatchingProducer(settings_for_tests, settings_for_tests.topics.requests,
                                metrics=False)
    sdk.configure(settings_for_tests, producer, tags={"team": "platform"})
    yield producer
    producer.close()
    sdk.configure()


def _events(settings, producer, expected: int) -> dict[str, dict]:
    producer.flush()
    rows = read_topic(settings, settings.topics.requests, expected).to_pylist()
    assert len(rows) == expected
    by_feature = {row["feature"]: row for row in rows}
    assert len(by_feature) == expected
    return by_feature


def test_track_and_tracked_record_usage_errors_and_tags(settings_for_tests, producer):
    with sdk.track(operation="code_completion", provider="openai", model="gpt-4o",
                   feature="ctx") as t:
        t.usage(input_tokens=120, output_tokens=30, cache_read_tokens=100)
    with pytest.raises(ValueError), sdk.track(operation="voice", provider="own-tts",
                                              model="tts-1", feature="boom"):
        raise ValueError("upstream said no")

    @sdk.tracked(operation="text", provider="own-vllm", model="llama-3.1-8b", feature="deco")
    def answer(tracker: sdk.Tracker) -> str:
        tracker.usage(input_tokens=5, output_tokens=7)
        return "ok"

    @sdk.tracked(operation="text", provider="anthropic", model="claude-3-5-haiku",
                 feature="adeco")
    async def answer_async() -> str:
        return "ok"

    assert answer() == "ok"
    assert asyncio.run(answer_async()) == "ok"
    events = _events(settings_for_tests, producer, 4)
    ctx = events["ctx"]
    assert (ctx["input_tokens"], ctx["output_tokens"], ctx["cache_read_tokens"]) == (120, 30, 100)
    assert ctx["provider_kind"] == "external" and ctx["status"] == "ok"
    assert ctx["team"] == "platform" and ctx["latency_ms"] >= 0
    boom = events["boom"]
    assert boom["status"] == "error" and boom["error_type"] == "ValueError"
    assert boom["provider_kind"] == "internal"
    assert events["deco"]["output_tokens"] == 7 and events["deco"]["provider_kind"] == "internal"
    assert events["adeco"]["status"] == "ok"
    assert all("upstream said no" not in str(v) for e in events.values() for v in e.values())


def test_wrap_openai_sync_calls_streaming_and_errors(settings_for_tests, producer, stub):
    client = wrap_openai(openai.OpenAI(api_key="sk-test", base_url=f"{stub.url}/v1",
                                       max_retries=0), tags={"app": "ide"})
    msgs = [{"role": "user", "content": "hello there, how are you"}]
    client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=4,
                                   costpipe_tags={"feature": "chat"})
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=msgs, max_tokens=6, stream=True,
        costpipe_tags={"feature": "chat-stream"}, costpipe_operation="code_completion"))
    assert all(chunk.choices for chunk in chunks)  # the injected usage chunk stays hidden
    with client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=3,
                                        stream=True, stream_options={"include_usage": False},
                                        costpipe_tags={"feature": "no-usage"}) as stream:
        for _ in stream:
            pass
    client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", max_tokens=2,
                              costpipe_tags={"feature": "completion"})
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                             costpipe_tags={"feature": "embed"})
    client.responses.create(model="gpt-4o", input="hi", costpipe_tags={"feature": "responses"})
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=msgs,
                                       costpipe_tags={"feature": "error"})
    events = _events(settings_for_tests, producer, 7)

    chat = events["chat"]
    assert (chat["input_tokens"], chat["output_tokens"]) == (PROMPT_TOKENS, 4)
    assert chat["cache_read_tokens"] == CACHED_TOKENS and chat["app"] == "ide"
    assert chat["response_model"] == "gpt-4o-0613" and chat["gen_ai_operation"] == "chat"
    streamed = events["chat-stream"]
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (PROMPT_TOKENS, 6)
    assert streamed["operation"] == "code_completion"
    assert streamed["ttft_ms"] is not None and streamed["ttft_ms"] <= streamed["latency_ms"]
    counted = events["no-usage"]
    assert counted["output_tokens"] == 3 and counted["input_tokens"] == 6  # 24 chars / 4
    assert events["completion"]["output_tokens"] == 2
    assert events["completion"]["gen_ai_operation"] == "text_completion"
    embed = events["embed"]
    assert (embed["input_tokens"], embed["output_tokens"], embed["operation"]) == (6, 0,
                                                                                   "embeddings")
    resp = events["responses"]
    assert (resp["input_tokens"], resp["output_tokens"], resp["cache_read_tokens"]) == (9, 4, 1)
    error = events["error"]
    assert error["status"] == "error" and error["error_type"] == "RateLimitError"


def test_wrap_openai_async_client(settings_for_tests, producer, stub):
    client = wrap_openai(openai.AsyncOpenAI(api_key="sk-test", base_url=f"{stub.url}/v1",
                                            max_retries=0), operation="reasoning",
                         provider="own-vllm")

    async def calls() -> int:
        await client.chat.completions.create(model="llama", messages=[], max_tokens=2,
                                             costpipe_tags={"feature": "achat"})
        stream = await client.chat.completions.create(
            model="llama", messages=[], max_tokens=5, stream=True,
            costpipe_tags={"feature": "astream"})
        return len([chunk async for chunk in stream])

    assert asyncio.run(calls()) == 7  # role chunk + 5 tokens + finish, usage chunk hidden
    events = _events(settings_for_tests, producer, 2)
    assert events["achat"]["output_tokens"] == 2
    assert events["achat"]["provider_kind"] == "internal"
    assert events["astream"]["output_tokens"] == 5 and events["astream"]["ttft_ms"] is not None
    assert events["astream"]["operation"] == "reasoning"
