"""The proxy records speech, transcription and translation calls with their billed units.

Real `openai` client -> proxy -> local stub (tests/openai_stub.py); each response is compared
byte for byte with the same call made to the stub directly, so metering changes nothing.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from costpipe.collectors.audio_units import PCM_BYTES_PER_SECOND
from costpipe.collectors.proxy import read_form
from tests.openai_stub import (
    AUDIO_TOKENS_PER_SECOND,
    NOT_WAV_SECONDS,
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


@pytest.fixture
def servers() -> Iterator[Servers]:
    with Servers(StubUpstream(), ListSink(), provider="openai") as running:
        yield running


def _direct(servers: Servers) -> openai.OpenAI:
    return openai.OpenAI(base_url=servers.upstream_url + "/v1", api_key="sk-secret-key",
                         max_retries=0)


def _only(sink: ListSink) -> dict[str, Any]:
    deadline = time.monotonic() + 2
    while not sink.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sink.events) == 1, sink.events
    return sink.events.pop()


def _assert_no_content(event: dict[str, Any]) -> None:
    """No prompt text, transcript or audio: every value is short and none is ours."""
    text = repr(event)
    for secret in ("secret", "Hällo", "quick brown", TRANSCRIPT):
        assert secret not in text
    assert all(len(str(value)) < 100 for value in event.values())


UNITS = ("input_tokens", "output_tokens", "input_audio_tokens", "output_audio_tokens",
         "input_characters", "input_audio_seconds", "output_audio_seconds")


def _units(event: dict[str, Any]) -> dict[str, Any]:
    return {name: event[name] for name in UNITS}


def _expect(**given: Any) -> dict[str, Any]:
    return {name: given.get(name, 0 if name in ("input_tokens", "output_tokens") else None)
            for name in UNITS}


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_speech_records_characters_and_seconds(servers: Servers, fmt: str) -> None:
    client = servers.client(**{"X-Costpipe-Operation": "voice", "X-Costpipe-Team": "support"})
    reply = client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy",
                                       response_format=fmt)
    event = _only(servers.sink)
    assert _units(event) == _expect(input_characters=len(TEXT),
                                    output_audio_seconds=speech_seconds(TEXT))
    assert len(TEXT) == 40 and speech_seconds(TEXT) == 2.0
    assert (event["operation"], event["gen_ai_operation"], event["model"]) == (
        "voice", "speech", "tts-1")
    assert event["team"] == "support" and event["status"] == "ok" and event["source"] == "proxy"
    assert event["ttft_ms"] is not None and event["latency_ms"] >= event["ttft_ms"]
    direct = _direct(servers).audio.speech.create(model="tts-1", input=TEXT, voice="alloy",
                                                   response_format=fmt)
    assert reply.content == direct.content
    assert reply.content == (wav_file(speech_pcm(TEXT)) if fmt == "wav" else speech_pcm(TEXT))
    _assert_no_content(event)


def test_speech_in_a_compressed_format_has_no_seconds(servers: Servers) -> None:
    reply = servers.client().audio.speech.create(model="tts-1-hd", input=TEXT, voice="alloy")
    assert reply.content.startswith(b"ID3")
    assert _units(_only(servers.sink)) == _expect(input_characters=len(TEXT))


def test_speech_sse_takes_usage_and_counts_pcm_deltas(servers: Servers) -> None:
    kwargs: dict[str, Any] = dict(model="gpt-4o-mini-tts", input=TEXT, voice="alloy",
                                  response_format="pcm", stream_format="sse")
    reply = servers.client().audio.speech.create(**kwargs)
    usage = speech_usage(TEXT)
    event = _only(servers.sink)
    assert _units(event) == _expect(
        input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
        output_audio_tokens=usage["output_tokens"], input_characters=len(TEXT),
        output_audio_seconds=len(speech_pcm(TEXT)) / PCM_BYTES_PER_SECOND)
    assert reply.content == _direct(servers).audio.speech.create(**kwargs).content
    events = [json.loads(line[6:]) for line in reply.content.decode().splitlines() if line]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if "audio" in e)
    assert audio == speech_pcm(TEXT)  # the client got every delta, unchanged
    _assert_no_content(event)


def test_transcription_whisper_records_the_billed_seconds(servers: Servers) -> None:
    reply = servers.client().audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("talk.wav", UPLOAD))
    event = _only(servers.sink)
    # usage wins over the measured 12.5 s: OpenAI bills whisper-1 by the (rounded-up) second
    assert _units(event) == _expect(input_audio_seconds=13.0)
    assert (event["operation"], event["gen_ai_operation"], event["model"]) == (
        "transcription", "transcription", "whisper-1")
    direct = _direct(servers).audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("talk.wav", UPLOAD))
    assert reply.content == direct.content
    assert reply.parse().text == TRANSCRIPT
    _assert_no_content(event)


def test_transcription_gpt_4o_records_tokens_and_audio_tokens(servers: Servers) -> None:
    reply = servers.client().audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", UPLOAD))
    audio_tokens = round(UPLOAD_SECONDS * AUDIO_TOKENS_PER_SECOND)
    event = _only(servers.sink)
    assert _units(event) == _expect(input_tokens=audio_tokens + TEXT_TOKENS,
                                    input_audio_tokens=audio_tokens,
                                    output_tokens=len(TRANSCRIPT.split()))
    assert reply.text == TRANSCRIPT and event["model"] == "gpt-4o-transcribe"
    _assert_no_content(event)


def test_translation_without_usage_is_measured_from_the_upload(servers: Servers) -> None:
    reply = servers.client().audio.translations.with_raw_response.create(
        model="whisper-1", file=("talk.wav", UPLOAD))
    event = _only(servers.sink)
    assert _units(event) == _expect(input_audio_seconds=UPLOAD_SECONDS)
    assert (event["operation"], event["gen_ai_operation"]) == ("translation", "translation")
    direct = _direct(servers).audio.translations.with_raw_response.create(
        model="whisper-1", file=("talk.wav", UPLOAD))
    assert reply.content == direct.content


def test_verbose_json_duration_is_used_when_the_upload_is_not_wav(servers: Servers) -> None:
    reply = servers.client().audio.translations.create(
        model="whisper-1", file=("talk.mp3", b"ID3\x04" + bytes(5000)),
        response_format="verbose_json")
    assert reply.duration == NOT_WAV_SECONDS
    assert _units(_only(servers.sink)) == _expect(input_audio_seconds=NOT_WAV_SECONDS)


@pytest.mark.parametrize("fmt", ["text", "srt"])
def test_text_response_formats_are_measured_from_the_upload(servers: Servers, fmt: str) -> None:
    reply = servers.client().audio.transcriptions.create(
        model="whisper-1", file=("talk.wav", UPLOAD), response_format=fmt)
    assert reply == TRANSCRIPT + "\n"
    assert _units(_only(servers.sink)) == _expect(input_audio_seconds=UPLOAD_SECONDS)


def test_streaming_transcription_takes_usage_from_the_done_event(servers: Servers) -> None:
    stream = servers.client().audio.transcriptions.create(
        model="gpt-4o-mini-transcribe", file=("talk.wav", UPLOAD), stream=True)
    events = list(stream)
    assert [e.type for e in events][-1] == "transcript.text.done"
    assert "".join(e.delta for e in events[:-1]) == TRANSCRIPT + " "
    audio_tokens = round(UPLOAD_SECONDS * AUDIO_TOKENS_PER_SECOND)
    event = _only(servers.sink)
    assert _units(event) == _expect(input_tokens=audio_tokens + TEXT_TOKENS,
                                    input_audio_tokens=audio_tokens,
                                    output_tokens=len(TRANSCRIPT.split()))
    assert 0 < event["ttft_ms"] <= event["latency_ms"] and event["status"] == "ok"
    _assert_no_content(event)


def test_form_fields_after_the_file_and_a_quoted_boundary(servers: Servers) -> None:
    """curl and browsers may send `model` after the file; the boundary may be quoted."""
    boundary = "b0und4ry"
    body = b"".join([
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode(), UPLOAD,
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
        f"whisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; "
        f'name="response_format"\r\n\r\ntext\r\n--{boundary}--\r\n'.encode()])
    reply = httpx.post(servers.url + "/v1/audio/translations", content=body, timeout=10,
                       headers={"Content-Type": f'multipart/form-data; boundary="{boundary}"'})
    assert reply.status_code == 200 and reply.text == TRANSCRIPT + "\n"
    event = _only(servers.sink)
    assert event["model"] == "whisper-1"
    assert _units(event) == _expect(input_audio_seconds=UPLOAD_SECONDS)


def test_failed_audio_calls_are_errors_without_units(servers: Servers) -> None:
    client = servers.client()
    with pytest.raises(openai.RateLimitError):
        client.audio.speech.create(model="fail-429", input=TEXT, voice="alloy")
    event = _only(servers.sink)
    assert event["status"] == "error" and event["error_type"] == "rate_limit_error"
    assert _units(event) == _expect()
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="fail-400", file=("talk.wav", UPLOAD))
    event = _only(servers.sink)
    assert event["status"] == "error" and _units(event) == _expect()


def _form(boundary: bytes, *parts: tuple[bytes, bytes]) -> bytes:
    out = b"".join(b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary, head, data) for head, data in parts)
    return out + b"--%s--\r\n" % boundary


@pytest.mark.parametrize("body, content_type, expected", [
    (_form(b"xyz", (b'Content-Disposition: form-data; name="model"', b"whisper-1"),
           (b'Content-Disposition: form-data; name="file"; filename="x.mp3"', b"ID3" * 9)),
     "multipart/form-data; boundary=xyz", ({"model": "whisper-1"}, None)),
    (_form(b"xyz", (b'Content-Disposition: form-data; name="prompt"', b"secret words"),
           (b'Content-Disposition: form-data; name="file"; filename="x.wav"', UPLOAD)),
     "multipart/form-data; boundary=xyz", ({}, UPLOAD_SECONDS)),
    (_form(b"xyz", (b'Content-Disposition: form-data; name="model"', b"whisper-1")),
     "multipart/form-data", ({}, None)),  # no boundary
    (_form(b"xyz", (b'Content-Disposition: form-data; name="model"', b"whisper-1"))[:40],
     "multipart/form-data; boundary=xyz", ({}, None)),  # cut short
    (b"", "multipart/form-data; boundary=xyz", ({}, None)),
    (b"not a form at all", None, ({}, None)),
])
def test_read_form_keeps_only_the_model_and_the_upload_seconds(
        body: bytes, content_type: str | None, expected: tuple[dict[str, str], float | None],
) -> None:
    assert read_form(body, content_type) == expected
