"""A local upstream that speaks the OpenAI wire format, for proxy tests and benchmarks.

Why: tests must not call real providers; this stub behaves like OpenAI / vLLM for the parts the
proxy depends on: JSON bodies with `usage`, SSE streams (with the usage chunk only when
`stream_options.include_usage` is true, unless `usage_in_stream=False` mimics a server that
never sends one), error statuses, and pass-through paths such as GET /v1/models. Audio too:
speech answers audio whose length tests can compute (`speech_seconds`), chunked like OpenAI's,
or SSE deltas with usage for gpt-4o-mini-tts; transcription/translation read the uploaded WAV
and answer usage as OpenAI bills it (whisper-1: whole seconds; gpt-4o-*: tokens).

Knobs come from the request's `model`: `fail-<status>` answers that HTTP error;
`max_tokens` sets the number of streamed content chunks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import socket
import time
import wave
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 7
CACHED_TOKENS = 2
SPEECH_BYTES_PER_CHAR = 2_400  # of 24 kHz 16-bit mono pcm: 0.05 s of speech per character
PCM_RATE = 24_000
TRANSCRIPT = "the quick brown fox jumps over the lazy dog"
AUDIO_TOKENS_PER_SECOND = 10  # gpt-4o-transcribe usage: input audio tokens = seconds * 10
TEXT_TOKENS = 3  # gpt-4o-transcribe usage: the text part of input tokens
NOT_WAV_SECONDS = 3.0  # what the stub "hears" in an upload it cannot decode


SPEECH_TEXT = "Hällo wörld, this is a secret sentence 🎉"  # 40 code points, 45 UTF-8 bytes
UPLOAD_SECONDS = 12.5  # of the recording the audio tests upload (16 kHz 16-bit mono WAV)


def upload_wav(seconds: float = UPLOAD_SECONDS) -> bytes:
    return wav_file(b"\x01\x02" * int(16_000 * seconds), rate=16_000)


def speech_pcm(text: str) -> bytes:
    """The pcm samples the stub speaks for `text` (a fixed pattern, len(text) * 0.05 s)."""
    n = len(text) * SPEECH_BYTES_PER_CHAR
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def speech_seconds(text: str) -> float:
    return len(text) * SPEECH_BYTES_PER_CHAR / (2 * PCM_RATE)


def speech_usage(text: str) -> dict[str, int]:
    """gpt-4o-mini-tts usage in `speech.audio.done`: output tokens are audio tokens."""
    inp, out = len(text) // 4 + 1, len(text) * 2
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}


def wav_file(pcm: bytes, rate: int = PCM_RATE, width: int = 2, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def transcription_usage(model: str, seconds: float) -> dict[str, Any]:
    """Usage as OpenAI reports it: whisper-1 bills whole seconds, gpt-4o-* tokens."""
    if model == "whisper-1":
        return {"type": "duration", "seconds": math.ceil(seconds)}
    audio = round(seconds * AUDIO_TOKENS_PER_SECOND)
    output = len(TRANSCRIPT.split())
    return {"type": "tokens", "input_tokens": audio + TEXT_TOKENS, "output_tokens": output,
            "total_tokens": audio + TEXT_TOKENS + output,
            "input_token_details": {"text_tokens": TEXT_TOKENS, "audio_tokens": audio}}


@dataclass
class StubUpstream:
    chunk_delay_s: float = 0.0
    end_delay_s: float = 0.0  # wait after the last event before ending the body
    usage_in_stream: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/translations", self.translations)
        app.router.add_get("/v1/models", self.models)
        return app

    async def _read(self, request: web.Request) -> dict[str, Any]:
        doc = await request.json()
        self.requests.append(doc)
        self.headers.append(dict(request.headers))
        return doc

    @staticmethod
    def _fail(doc: dict[str, Any]) -> web.Response | None:
        model = str(doc.get("model", ""))
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            return web.json_response(
                {"error": {"message": "stub failure", "type": "rate_limit_error",
                           "param": None, "code": "rate_limit_exceeded"}},
                status=status,
            )
        return None

    @staticmethod
    def _usage(completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
        }

    async def chat(self, request: web.Request) -> web.StreamResponse:
        doc = await self._read(request)
        if (failed := self._fail(doc)) is not None:
            return failed
        n = int(doc.get("max_tokens") or 5)
        base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": doc["model"] + "-0613"}
        if not doc.get("stream"):
            return web.json_response({
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "tok " * n}}],
                "usage": self._usage(n),
            })
        include = bool((doc.get("stream_options") or {}).get("include_usage"))
        chunk = {**base, "object": "chat.completion.chunk"}
        extra = {"usage": None} if include and self.usage_in_stream else {}
        events = [{**chunk, **extra, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
        events += [{**chunk, **extra, "choices": [
            {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}]}
            for i in range(n)]
        events.append({**chunk, **extra, "choices": [
            {"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include and self.usage_in_stream:
            events.append({**chunk, "choices": [], "usage": self._usage(n)})
        return await self._sse(request, [json.dumps(e) for e in events] + ["[DONE]"])

    async def completions(self, request: web.Request) -> web.StreamResponse:
        doc = await self._read(request)
        if (failed := self._fail(doc)) is not None:
            return failed
        n = int(doc.get("max_tokens") or 5)
        return web.json_response({
            "id": "cmpl-stub", "object": "text_completion", "created": int(time.time()),
            "model": doc["model"], "choices": [{"index": 0, "text": "tok " * n,
                                                "finish_reason": "stop", "logprobs": None}],
            "usage": self._usage(n),
        })

    async def embeddings(self, request: web.Request) -> web.Response:
        doc = await self._read(request)
        inputs = doc["input"] if isinstance(doc["input"], list) else [doc["input"]]
        return web.json_response({
            "object": "list", "model": doc["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                     for i in range(len(inputs))],
            "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
        })

    async def responses(self, request: web.Request) -> web.Response:
        doc = await self._read(request)
        return web.json_response({
            "id": "resp_stub", "object": "response", "created_at": int(time.time()),
            "status": "completed", "model": doc["model"],
            "output": [{"type": "message", "id": "msg_1", "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "hi", "annotations": []}]}],
            "usage": {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13,
                      "input_tokens_details": {"cached_tokens": 1},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        })

    async def speech(self, request: web.Request) -> web.StreamResponse:
        doc = await self._read(request)
        if (failed := self._fail(doc)) is not None:
            return failed
        text, fmt = str(doc["input"]), doc.get("response_format") or "mp3"
        pcm = speech_pcm(text)
        if doc.get("stream_format") == "sse":
            audio = pcm if fmt == "pcm" else wav_file(pcm)
            deltas = [{"type": "speech.audio.delta",
                       "audio": base64.b64encode(audio[i:i + 6000]).decode()}
                      for i in range(0, len(audio), 6000)]
            done: dict[str, Any] = {"type": "speech.audio.done"}
            if doc["model"] == "gpt-4o-mini-tts":
                done["usage"] = speech_usage(text)
            return await self._sse(request, [json.dumps(e) for e in [*deltas, done]])
        body = {"wav": wav_file(pcm), "pcm": pcm}.get(fmt, b"ID3\x04" + pcm[: len(pcm) // 10])
        response = web.StreamResponse(headers={"Content-Type": f"audio/{fmt}"})
        await response.prepare(request)  # chunked, no Content-Length: as OpenAI sends audio
        for i in range(0, len(body), 8192):
            await response.write(body[i:i + 8192])
        await response.write_eof()
        return response

    async def _read_form(self, request: web.Request) -> tuple[dict[str, str], float | None]:
        form = await request.post()
        upload = form["file"]
        data = upload.file.read() if isinstance(upload, web.FileField) else b""
        fields = {k: str(v) for k, v in form.items() if k != "file"}
        self.requests.append({**fields, "file_bytes": len(data)})
        self.headers.append(dict(request.headers))
        try:
            with wave.open(io.BytesIO(data)) as audio:
                return fields, audio.getnframes() / audio.getframerate()
        except (wave.Error, EOFError):
            return fields, None

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._transcript(request, translate=False)

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._transcript(request, translate=True)

    async def _transcript(self, request: web.Request, translate: bool) -> web.StreamResponse:
        fields, seconds = await self._read_form(request)
        if (failed := self._fail(fields)) is not None:
            return failed
        seconds = NOT_WAV_SECONDS if seconds is None else seconds
        model, fmt = fields["model"], fields.get("response_format", "json")
        usage = transcription_usage(model, seconds)
        if fields.get("stream") == "true" and model != "whisper-1" and not translate:
            events = [{"type": "transcript.text.delta", "delta": word + " "}
                      for word in TRANSCRIPT.split()]
            events.append({"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage})
            return await self._sse(request, [json.dumps(e) for e in events])
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=TRANSCRIPT + "\n", content_type="text/plain")
        doc: dict[str, Any] = {"text": TRANSCRIPT}
        if fmt == "verbose_json":
            doc = {"task": "translate" if translate else "transcribe", "language": "english",
                   "duration": seconds, **doc, "segments": []}
        if not translate:  # OpenAI's translations report no usage
            doc["usage"] = usage
        return web.json_response(doc)

    async def models(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.json_response({"object": "list", "data": [
            {"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]})

    async def _sse(self, request: web.Request, payloads: list[str]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for payload in payloads:
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            await response.write(f"data: {payload}\n\n".encode())
        if self.end_delay_s:
            await asyncio.sleep(self.end_delay_s)
        await response.write_eof()
        return response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_site(app: web.Application, port: int | None = None) -> tuple[web.AppRunner, str]:
    """Serve `app` on 127.0.0.1; return the runner (to clean up) and its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, f"http://127.0.0.1:{port}"
