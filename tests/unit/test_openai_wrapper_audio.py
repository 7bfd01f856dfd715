"""`wrap_openai` records speech, transcription and translation calls with their billed units.

Real `openai` client (sync and async) against the local stub (tests/openai_stub.py); the SDK's
events go to a list sink (tests/integration/collectors_core/test_sdk_openai.py covers the
wrapper through the real broker).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from costpipe.collectors import sdk
from costpipe.collectors.openai_wrapper import wrap_openai
from costpipe.core.settings import load_settings
from tests.openai_stub import (
    AUDIO_TOKENS_PER_SECOND,
    SPEECH_TEXT,
    TEXT_TOKENS,
    TRANSCRIPT,
    UPLOAD_SECONDS,
    StubUpstream,
    speech_pcm,
    speech_seconds,
    speech_usage,
    upload_wav,
    wav_file,
)
from tests.proxy_harness import ListSink, Servers

TEXT = SPEECH_TEXT
UPLOAD = upload_wav()
AUDIO_TOKENS = round(UPLOAD_SECONDS * AUDIO_TOKENS_PER_SECOND)
UNITS = ("input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens",
         "input_characters", "input_audio_seconds", "output_audio_seconds")


@pytest.fixture
def sink() -> Iterator[ListSink]:
    events = ListSink()
    sdk.configure(load_settings(environ={}), events)  # type: ignore[arg-type]
    yield events
    sdk.configure()


@pytest.fixture
def base_url() -> Iterator[str]:
    with Servers(StubUpstream(), ListSink(), provider="openai") as running:
        yield running.upstream_url + "/v1"


def _client(base_url: str) -> openai.OpenAI:
    return wrap_openai(openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0))


def _units(event: dict[str, Any]) -> dict[str, Any]:
    return {name: event.get(name) for name in UNITS}


def _expect(**given: Any) -> dict[str, Any]:
    return {name: given.get(name, 0 if name in ("input_tokens", "output_tokens") else None)
            for name in UNITS}


def _only(sink: ListSink) -> dict[str, Any]:
    assert len(sink.events) == 1, sink.events
    event = sink.events.pop()
    text = repr(event)
    assert "secret" not in text and "Hällo" not in text and TRANSCRIPT not in text
    assert all(len(str(value)) < 100 for value in event.values())
    assert event["source"] == "sdk" and event["provider"] == "openai"
    return event


def test_speech_wav_records_characters_and_seconds(sink: ListSink, base_url: str) -> None:
    reply = _client(base_url).audio.speech.create(
        model="tts-1", input=TEXT, voice="alloy", response_format="wav",
        costpipe_tags={"team": "support"})
    assert reply.content == wav_file(speech_pcm(TEXT))
    event = _only(sink)
    assert _units(event) == _expect(input_characters=len(TEXT),
                                    output_audio_seconds=speech_seconds(TEXT))
    assert (event["operation"], event["gen_ai_operation"], event["model"]) == (
        "speech", "speech", "tts-1")
    assert event["team"] == "support" and event["status"] == "ok"


def test_speech_sse_takes_usage_and_pcm_seconds(sink: ListSink, base_url: str) -> None:
    _client(base_url).audio.speech.create(
        model="gpt-4o-mini-tts", input=TEXT, voice="alloy", response_format="pcm",
        stream_format="sse")
    usage = speech_usage(TEXT)
    assert _units(_only(sink)) == _expect(
        input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
        output_audio_tokens=usage["output_tokens"], input_characters=len(TEXT),
        output_audio_seconds=speech_seconds(TEXT))


def test_speech_mp3_and_streaming_response_record_characters(sink: ListSink,
                                                             base_url: str) -> None:
    client = _client(base_url)
    client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy")
    assert _units(_only(sink)) == _expect(input_characters=len(TEXT))
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", input=TEXT, voice="alloy", response_format="wav") as response:
        assert b"".join(response.iter_bytes()) == wav_file(speech_pcm(TEXT))
    # the body was not read when the call returned: characters only, the audio untouched
    assert _units(_only(sink)) == _expect(input_characters=len(TEXT))


def test_transcriptions_and_translation(sink: ListSink, base_url: str, tmp_path: Path) -> None:
    client = _client(base_url)
    reply = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", UPLOAD))
    assert reply.text == TRANSCRIPT
    event = _only(sink)
    assert _units(event) == _expect(input_audio_seconds=13.0)  # whisper-1 usage: whole seconds
    assert (event["operation"], event["gen_ai_operation"]) == ("transcription", "transcription")

    client.audio.transcriptions.create(model="gpt-4o-transcribe", file=UPLOAD)
    assert _units(_only(sink)) == _expect(
        input_tokens=AUDIO_TOKENS + TEXT_TOKENS, input_audio_tokens=AUDIO_TOKENS,
        output_tokens=len(TRANSCRIPT.split()))

    path = tmp_path / "talk.wav"
    path.write_bytes(UPLOAD)
    assert client.audio.translations.create(model="whisper-1", file=path).text == TRANSCRIPT
    event = _only(sink)  # translations report no usage: measured from the file
    assert _units(event) == _expect(input_audio_seconds=UPLOAD_SECONDS)
    assert (event["operation"], event["gen_ai_operation"]) == ("translation", "translation")


def test_text_format_is_measured_from_a_file_object(sink: ListSink, base_url: str) -> None:
    upload = io.BytesIO(UPLOAD)
    upload.seek(100)  # httpx uploads from offset 0 whatever the position; we put it back
    text = _client(base_url).audio.transcriptions.create(
        model="whisper-1", file=upload, response_format="text")
    assert text == TRANSCRIPT + "\n"
    assert _units(_only(sink)) == _expect(input_audio_seconds=UPLOAD_SECONDS)


def test_streaming_transcription_sync(sink: ListSink, base_url: str) -> None:
    stream = _client(base_url).audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", UPLOAD), stream=True)
    events = list(stream)
    assert events[-1].type == "transcript.text.done" and events[-1].text == TRANSCRIPT
    event = _only(sink)
    assert _units(event) == _expect(
        input_tokens=AUDIO_TOKENS + TEXT_TOKENS, input_audio_tokens=AUDIO_TOKENS,
        output_tokens=len(TRANSCRIPT.split()))
    assert 0 < event["ttft_ms"] <= event["latency_ms"]


def test_async_client_speech_transcription_and_stream(sink: ListSink, base_url: str) -> None:
    async def calls() -> list[Any]:
        client = wrap_openai(openai.AsyncOpenAI(base_url=base_url, api_key="sk-test",
                                                max_retries=0))
        speech = await client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy",
                                                  response_format="pcm")
        assert speech.content == speech_pcm(TEXT)
        verbose = await client.audio.translations.create(
            model="whisper-1", file=("a.wav", UPLOAD), response_format="verbose_json")
        assert verbose.duration == UPLOAD_SECONDS
        stream = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=("a.wav", UPLOAD), stream=True)
        return [event async for event in stream]

    assert asyncio.run(calls())[-1].type == "transcript.text.done"
    assert [_units(e) for e in sink.events] == [
        _expect(input_characters=len(TEXT), output_audio_seconds=speech_seconds(TEXT)),
        _expect(input_audio_seconds=UPLOAD_SECONDS),  # verbose_json duration
        _expect(input_tokens=AUDIO_TOKENS + TEXT_TOKENS, input_audio_tokens=AUDIO_TOKENS,
                output_tokens=len(TRANSCRIPT.split())),
    ]


def test_failed_audio_call_is_an_error_without_units(sink: ListSink, base_url: str) -> None:
    with pytest.raises(openai.RateLimitError):
        _client(base_url).audio.speech.create(model="fail-429", input=TEXT, voice="alloy")
    event = _only(sink)
    assert event["status"] == "error" and event["error_type"] == "RateLimitError"
    assert _units(event) == _expect()
