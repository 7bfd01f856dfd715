"""OpenAI-compatible pass-through proxy that emits one request event per model call.

Why a proxy: teams that call OpenAI or a self-hosted OpenAI-compatible server (vLLM,
llama.cpp) get cost telemetry by changing only `base_url`. It must not change what the client
sees or when it sees it, so each upstream read is written to the client as it arrives, and a
keep-alive pool holds the upstream connections. The HTTP layer (asyncio Protocols and
httptools) was chosen by measurement: docs/decisions/2026-11-30-proxy-http-layer.md.

Measured per call: tokens (from `usage`; for streaming chat/completions the proxy adds
`stream_options.include_usage=true` when the client did not set it, and then removes that extra
usage-only chunk so the client sees exactly the stream it asked for; if the upstream still sends
no usage, tokens are estimated: output = content chunks, input = request chars / 4), latency,
time to first token, status and error type, operation and tags from `X-Costpipe-*` headers.
Audio calls carry their billed units instead of estimates: speech the characters of `input`,
usage tokens (gpt-4o-mini-tts, SSE) and the seconds of audio returned (wav/pcm, counted as it
streams); transcription/translation the usage (tokens or seconds), else verbose_json's
`duration`, else the seconds of the uploaded WAV (its header read in place, see audio_units).

Auth: when a token is configured, clients must send `X-Costpipe-Token: <token>`. A separate
header (not `Authorization`) because `Authorization` carries the upstream API key, which is
forwarded untouched. All `X-Costpipe-*` headers are stripped before forwarding. Nothing here
logs or stores prompt text, response text or header values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import hmac
import json
import logging
import re
import signal
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any

from yarl import URL

from costpipe.collectors.audio_units import (
    WAV_HEAD_MAX,
    AudioMeter,
    audio_seconds,
    sse_audio_bytes,
    usage_units,
)
from costpipe.collectors.events import EventSink, request_event
from costpipe.collectors.http_client import UpstreamConnection, UpstreamPool
from costpipe.collectors.http_server import (
    Headers,
    IncomingRequest,
    Reply,
    ServerConnection,
    error_body,
)
from costpipe.core.metrics import PROXY_REQUESTS
from costpipe.core.settings import Settings

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Costpipe-Token"
TAG_HEADERS = {"team": "X-Costpipe-Team", "app": "X-Costpipe-App", "feature": "X-Costpipe-Feature"}
# path -> (default operation name, gen_ai.operation.name)
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", "chat"),
    "/v1/completions": ("text_completion", "text_completion"),
    "/v1/embeddings": ("embeddings", "embeddings"),
    "/v1/responses": ("responses", "chat"),
    "/v1/audio/speech": ("speech", "speech"),
    "/v1/audio/transcriptions": ("transcription", "transcription"),
    "/v1/audio/translations": ("translation", "translation"),
}
SPEECH_ROUTE = "/v1/audio/speech"
UPLOAD_ROUTES = frozenset({"/v1/audio/transcriptions", "/v1/audio/translations"})
FORM_FIELDS = frozenset({"model"})  # all we read of a form besides the file's header
USAGE_INJECT_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
HOP_BY_HOP = frozenset(h.lower().encode() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
))
MAX_JSON_BODY = 16 * 1024 * 1024
MAX_REQUEST_BODY = 64 * 1024 * 1024
SHUTDOWN_GRACE_S = 10.0  # on SIGTERM, streams in flight get this long to finish
_CONTENT = re.compile(rb'"(?:content|text|delta|arguments|audio)"\s*:\s*"[^"]')
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_PART_NAME = re.compile(rb'(?:^|[;\s])name="([^"]*)"', re.IGNORECASE)
_FINAL_AUDIO_EVENTS = frozenset({"speech.audio.done", "transcript.text.done"})

REQUESTS = PROXY_REQUESTS


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str
    provider: str
    operation_header: str = "X-Costpipe-Operation"
    auth_token: str | None = None
    inject_usage: bool = True
    max_connections: int = 1000
    read_timeout_s: float = 600.0


def usage_tokens(usage: dict[str, Any]) -> dict[str, int]:
    """OpenAI chat/completions/embeddings/responses `usage` -> our token fields."""
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    return {
        "input_tokens": int(usage.get("prompt_tokens", usage.get("input_tokens")) or 0),
        "output_tokens": int(usage.get("completion_tokens", usage.get("output_tokens")) or 0),
        "cache_read_tokens": int(
            (details.get("cached_tokens") if isinstance(details, dict) else 0)
            or usage.get("cache_read_input_tokens") or 0
        ),
        "cache_write_tokens": int(usage.get("cache_creation_input_tokens") or 0),
    }


@dataclass
class AudioCall:
    """The request side of an audio call: what it is and what it sent, in billed units only."""

    speech: bool
    response_format: str | None = None  # speech: the audio format asked for
    input_characters: int | None = None
    upload_seconds: float | None = None

    def units(self, tracker: ResponseTracker | None) -> dict[str, Any]:
        """Event fields: reported usage first, then what the proxy measured."""
        units: dict[str, Any] = {"input_characters": self.input_characters}
        usage = tracker.usage if tracker is not None else None
        if usage is not None:
            units.update(usage_units(usage, speech=self.speech))
        if self.speech:
            meter = tracker.meter if tracker is not None else None
            units["output_audio_seconds"] = meter.seconds() if meter is not None else None
        elif usage is None:  # tokens or seconds reported win over a measurement
            duration = tracker.duration if tracker is not None else None
            units["input_audio_seconds"] = (
                duration if duration is not None else self.upload_seconds)
        return units


def speech_call(doc: dict[str, Any]) -> AudioCall:
    """`POST /v1/audio/speech` JSON -> AudioCall; the text's length is kept, not the text."""
    text = doc.get("input")
    fmt = doc.get("response_format")
    return AudioCall(speech=True, response_format=fmt if isinstance(fmt, str) else "mp3",
                     input_characters=len(text) if isinstance(text, str) else None)


def read_form(body: bytes, content_type: str | None) -> tuple[dict[str, str], float | None]:
    """The few small fields we need from a multipart upload, and the seconds of its `file`
    when that is WAV. Only part headers and the file's first WAV_HEAD_MAX bytes are copied;
    the rest of the body is only searched for the next boundary."""
    match = _BOUNDARY.search(content_type or "")
    if match is None:
        return {}, None
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    fields: dict[str, str] = {}
    seconds: float | None = None
    pos = body.find(delimiter[2:])  # the first boundary may open the body without a CRLF
    while pos >= 0 and not body.startswith(b"--", pos + len(delimiter) - 2):  # not the end
        head_start = body.find(b"\r\n", pos) + 2
        head_end = body.find(b"\r\n\r\n", head_start - 2, head_start + 8192)
        if head_start < 2 or head_end < 0:
            break
        start = head_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            break
        headers = body[head_start:head_end]
        name = _PART_NAME.search(headers)
        key = name.group(1).decode("latin-1") if name else ""
        if key == "file":
            seconds = audio_seconds(None, body[start:min(end, start + WAV_HEAD_MAX)], end - start)
        elif key in FORM_FIELDS and end - start <= 256:
            fields[key] = body[start:end].decode("utf-8", "replace").strip()
        pos = end + 2
    return fields, seconds


class ResponseTracker:
    """Watches the response bytes on their way to the client; keeps counts, never text."""

    def __init__(self, *, sse: bool, strip_usage_chunk: bool, start: float,
                 meter: AudioMeter | None = None, keep_body: bool = True,
                 find_model: bool = True) -> None:
        """`meter` counts an audio body (or pcm SSE deltas) instead of keeping it;
        `keep_body=False` skips a body that is not JSON; `find_model=False` for streams whose
        events carry no model (audio), so their events are parsed only for usage."""
        self.sse = sse
        self.strip = sse and strip_usage_chunk
        self.start = start
        self.meter = meter
        self.keep_body = keep_body
        self.find_model = find_model
        self.first_token_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.duration: float | None = None
        self.model: str | None = None
        self.error_type: str | None = None
        self.content_events = 0
        self.done = False  # `data: [DONE]` (or a final usage chunk) passed: the call is complete
        self._pending = bytearray()
        self._body = bytearray()
        self._body_overflow = False

    def feed(self, chunk: bytes) -> bytes:
        """Return what to send to the client now."""
        if not self.sse:
            if self.meter is not None:
                self.meter.feed(chunk)
            elif self.keep_body and not self._body_overflow:
                if len(self._body) + len(chunk) <= MAX_JSON_BODY:
                    self._body += chunk
                else:
                    self._body_overflow = True
            return chunk
        if self._pending:
            self._pending += chunk
            data = bytes(self._pending)
        else:  # the usual case: each read is one or more whole events
            data = chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if end == 0:  # no complete event yet
            if not self._pending:
                self._pending += chunk
            return b"" if self.strip else chunk
        if end < len(data):
            self._pending = bytearray(data[end:])
            data = data[:end]
        else:
            self._pending.clear()
        kept = self._scan_events(data)
        return kept if self.strip else chunk

    def finish(self, content_encoding: str | None) -> bytes:
        """Flush what is left and parse a non-streaming JSON body."""
        if self.sse:
            rest = bytes(self._pending)
            self._pending.clear()
            kept = self._scan_events(rest) if rest.strip() else rest
            return kept if self.strip else b""
        if self._body and not self._body_overflow:
            self._parse_json_body(bytes(self._body), content_encoding)
        return b""

    def _parse_json_body(self, body: bytes, content_encoding: str | None) -> None:
        try:
            if content_encoding in ("gzip", "deflate"):
                body = zlib.decompress(body, zlib.MAX_WBITS | 32)
            doc = json.loads(body)
        except (ValueError, zlib.error):
            return
        if not isinstance(doc, dict):
            return
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        if isinstance(doc.get("model"), str):
            self.model = doc["model"]
        duration = doc.get("duration")  # verbose_json transcription/translation
        if isinstance(duration, int | float) and not isinstance(duration, bool):
            self.duration = float(duration)
        error = doc.get("error")
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code")
            self.error_type = str(kind) if kind else None

    def _scan_events(self, data: bytes) -> bytes:
        """Inspect each complete event; return the ones the client gets (when stripping)."""
        sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
        if not self.strip:  # the bytes go out unchanged: only count
            for raw in data.split(sep):
                if raw:
                    self._inspect(raw)
            return b""
        kept: list[bytes] = []
        for raw in data.split(sep):
            if raw.strip() and self._inspect(raw):
                kept.append(raw + sep)
        return b"".join(kept)

    def _inspect(self, event: bytes) -> bool:
        """Update counters from one SSE event; False means: drop it (injected usage chunk)."""
        if _CONTENT.search(event):
            self.content_events += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        if b"[DONE]" in event:
            self.done = True
        if self.meter is not None:
            self.meter.count(sse_audio_bytes(event))
        wants_parse = (self.find_model and self.model is None) or (
            b'"usage"' in event and not _NULL_USAGE.search(event))
        if not wants_parse:
            return True
        payload = b"".join(
            line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")
        )
        if not payload or payload == b"[DONE]":
            return True
        try:
            doc = json.loads(payload)
        except ValueError:
            return True
        if not isinstance(doc, dict):
            return True
        inner = doc.get("response") if isinstance(doc.get("response"), dict) else doc
        if self.model is None and isinstance(inner.get("model"), str):
            self.model = inner["model"]
        if isinstance(inner.get("usage"), dict):
            self.usage = inner["usage"]
            if doc.get("choices") == [] or doc.get("type") == "response.completed" or (
                    doc.get("type") in _FINAL_AUDIO_EVENTS):
                self.done = True  # the final usage chunk: nothing but [DONE] follows
            if self.strip and doc.get("choices") == []:
                return False
        if isinstance(doc.get("error"), dict):
            self.error_type = str(doc["error"].get("type") or doc["error"].get("code") or "error")
        return True


class Proxy:
    """The metering proxy: `start` serves it; the sink receives one event per model call."""

    def __init__(self, settings: Settings, config: ProxyConfig, sink: EventSink) -> None:
        self.settings = settings
        self.config = config
        self.sink = sink
        base = URL(config.upstream.rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"upstream must be an http(s) URL, got {config.upstream!r}")
        self._base_path = base.raw_path.rstrip("/")
        self._base_has_v1 = self._base_path.endswith("/v1")
        self._host_header = (base.raw_host if base.is_default_port()
                             else f"{base.raw_host}:{base.port}").encode("idna")
        self._upstream_host = base.raw_host or ""
        self._upstream_port = base.port or (443 if base.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if base.scheme == "https" else None
        self._pool: UpstreamPool | None = None
        self._server: asyncio.Server | None = None
        self._inflight: set[_Exchange] = set()

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on host:port (OSError when it cannot) and serve until `close`."""
        self._pool = UpstreamPool(
            self._upstream_host, self._upstream_port, self._ssl,
            max_connections=self.config.max_connections, connect_timeout_s=10.0,
            read_timeout_s=self.config.read_timeout_s)
        if hasattr(self.sink, "hold_back"):  # heartbeats wait for the calls in flight
            self.sink.hold_back(self._oldest_in_flight)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self._handle, MAX_REQUEST_BODY), host, port,
            reuse_address=True, backlog=2048)
        return self._server

    def _oldest_in_flight(self) -> dt.datetime | None:
        try:
            return min((e.started_at for e in list(self._inflight)), default=None)
        except RuntimeError:  # the loop changed the set meanwhile: hold back this time
            return dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop listening, let calls in flight finish for up to `grace_s`, then cut the rest;
        every call, finished or cut, has its event emitted before this returns."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for exchange in list(self._inflight):
            exchange.cut("proxy_shutdown")
        if self._pool is not None:
            await self._pool.close()

    def _target(self, target: bytes) -> bytes:
        path, _, query = target.partition(b"?")
        if path.startswith((b"http://", b"https://")):  # absolute form: keep the path
            path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
        if self._base_has_v1 and (path == b"/v1" or path.startswith(b"/v1/")):
            path = path[3:]
        full = self._base_path.encode() + path
        return full + b"?" + query if query else full

    def _handle(self, request: IncomingRequest, reply: Reply) -> None:
        if self.config.auth_token:
            given = (request.header(TOKEN_HEADER.lower().encode()) or "").encode("latin-1")
            if not hmac.compare_digest(given, self.config.auth_token.encode()):
                reply.simple(401, error_body("missing or wrong X-Costpipe-Token header",
                                                "unauthorized"))
                return
        _Exchange(self, request, reply).begin()

    def _emit(self, exchange: _Exchange) -> None:
        end = time.perf_counter()
        route = exchange.route
        assert route is not None
        request = exchange.request
        tracker = exchange.tracker
        status_code = exchange.status_code
        error_type = exchange.error_type
        model = exchange.model
        response_model = tracker.model if tracker else None
        if exchange.audio is not None:
            tokens = exchange.audio.units(tracker) if status_code < 400 else {}
        elif tracker is not None and tracker.usage is not None:
            tokens = usage_tokens(tracker.usage)
        else:
            tokens = {
                "input_tokens": len(exchange.body) // 4 if status_code < 400 else 0,
                "output_tokens": tracker.content_events if tracker else 0,
            }
        failed = status_code >= 400 or error_type is not None
        if failed and error_type is None:
            error_type = (tracker.error_type if tracker else None) or str(status_code)
        first = tracker.first_token_at if tracker and tracker.sse else exchange.ttfb
        start = exchange.start
        operation = (
            request.header(self.config.operation_header.lower().encode())
            or self.settings.servers.operation_map.get(model or "")
            or self.settings.servers.operation_map.get(exchange.path)
            or route[0]
        )
        event = request_event(
            self.settings,
            timestamp=exchange.started_at,
            operation=operation,
            gen_ai_operation=route[1],
            provider=self.config.provider,
            model=model or response_model or "unknown",
            response_model=response_model,
            latency_ms=(end - start) * 1000.0,
            ttft_ms=None if first is None else (first - start) * 1000.0,
            status="error" if failed else "ok",
            error_type=error_type if failed else None,
            source="proxy",
            **{name: request.header(header.lower().encode())
               for name, header in TAG_HEADERS.items()},
            **tokens,
        )
        REQUESTS.labels(route[1], event["status"]).inc()
        try:
            self.sink.emit(event)
        except Exception:  # telemetry must never break the caller's request
            log.exception("could not hand the request event to the producer")


class _Exchange:
    """One client request and its upstream response. The response bytes go from the upstream
    connection's callbacks to the client's transport directly."""

    def __init__(self, proxy: Proxy, request: IncomingRequest, reply: Reply) -> None:
        self.proxy = proxy
        self.request = request
        self.reply = reply
        self.start = time.perf_counter()
        self.started_at = dt.datetime.now(dt.UTC)
        self.path = request.target.partition(b"?")[0].decode("latin-1")
        self.route = ROUTES.get(self.path) if request.method == "POST" else None
        self.body = request.body
        self.model: str | None = None
        self.audio: AudioCall | None = None
        self.injected = False
        self.tracker: ResponseTracker | None = None
        self.status_code = 502
        self.error_type: str | None = None
        self.ttfb: float | None = None
        self.content_encoding: str | None = None
        self.upstream: UpstreamConnection | None = None
        self.finished = False

    def _rewrite_body(self) -> None:
        """Read the few request fields the event needs; add include_usage when streaming.
        The parsed body is not kept: it holds the prompt, for as long as the stream lasts."""
        if self.path in UPLOAD_ROUTES:
            self._read_upload()
            return
        try:
            parsed = json.loads(self.body) if self.body else {}
            doc = parsed if isinstance(parsed, dict) else {}
        except ValueError:
            doc = {}
        model = doc.get("model")
        self.model = model if isinstance(model, str) else None
        if self.path == SPEECH_ROUTE:
            self.audio = speech_call(doc)
        if (self.proxy.config.inject_usage and doc.get("stream") is True
                and self.path in USAGE_INJECT_ROUTES):
            options = doc.get("stream_options")
            if not isinstance(options, dict) or "include_usage" not in options:
                doc["stream_options"] = {**(options or {}), "include_usage": True}
                self.body = json.dumps(doc, separators=(",", ":")).encode()
                self.injected = True

    def _read_upload(self) -> None:
        """Transcription/translation: a multipart form, forwarded as is."""
        fields, seconds = read_form(self.body, self.request.header(b"content-type"))
        self.model = fields.get("model")
        self.audio = AudioCall(speech=False, upload_seconds=seconds)

    def _tracker(self, sse: bool, content_type: bytes) -> ResponseTracker:
        """Audio responses are metered, not kept: speech audio is counted as it passes, and a
        transcript is read only when it is JSON (its usage, its duration)."""
        audio = self.audio
        if audio is None:
            return ResponseTracker(sse=sse, strip_usage_chunk=self.injected, start=self.start)
        json_body = content_type.split(b";")[0].strip().lower() == b"application/json"
        meter = None
        if audio.speech and (audio.response_format == "pcm" if sse else not json_body):
            meter = AudioMeter(audio.response_format)
        return ResponseTracker(sse=sse, strip_usage_chunk=False, start=self.start, meter=meter,
                               keep_body=json_body, find_model=False)

    def _head(self) -> bytes:
        proxy = self.proxy
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (
            self.request.method.encode(), proxy._target(self.request.target),
            proxy._host_header)]
        for name, value in self.request.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower.startswith(b"x-costpipe-") or lower in (
                    b"accept-encoding", b"expect"):
                continue
            lines.append(b"%s: %s\r\n" % (name, value))
        if self.body or self.request.method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d\r\n" % len(self.body))
        lines.append(b"Accept-Encoding: identity\r\n\r\n")
        return b"".join(lines)

    def begin(self) -> None:
        """Send the request on an idle pooled connection at once (no task, no future); only a
        request that needs a new connection or waits for a free slot gets a task."""
        pool = self.proxy._pool
        assert pool is not None
        self.reply.listener = self
        self.proxy._inflight.add(self)
        if self.route is not None:
            self._rewrite_body()
        conn = pool.try_acquire()
        if conn is not None:
            self._send(conn)
        else:
            asyncio.get_running_loop().create_task(self._connect_and_send())

    async def _connect_and_send(self) -> None:
        pool = self.proxy._pool
        assert pool is not None
        try:
            conn = await pool.acquire()
        except (OSError, TimeoutError) as exc:
            self._unreachable(exc)
            return
        except BaseException:
            self._finish()
            raise
        if self.reply.finished:  # the client left while we connected
            pool.release(conn)
            self._finish()
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.request(self._head(), self.body, self, bodyless=self.request.method == "HEAD")

    def _finish(self) -> None:
        """Emit the request event, exactly once, whichever way the exchange ended."""
        if self.finished:
            return
        self.finished = True
        self.proxy._inflight.discard(self)
        # Break the exchange <-> reply cycle so the exchange is freed by reference counting
        # (left to the cyclic collector it made GC pauses: the proxy HTTP layer record).
        self.reply.listener = None
        if self.route is not None:
            self.proxy._emit(self)
        self.upstream = None

    def cut(self, error_type: str) -> None:
        """End the call now (shutdown): the client sees an incomplete response."""
        self.error_type = self.error_type or error_type
        if self.upstream is not None:
            self.upstream.detach()
        if self.reply.started:
            self.reply.abort()
        elif not self.reply.finished:
            self.reply.simple(503, error_body("the proxy is shutting down", error_type))
        self._finish()

    # ResponseListener: the upstream's side
    def on_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self.ttfb = time.perf_counter()
        self.status_code = status
        content_type = b""
        content_length: int | None = None
        out: Headers = []
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-type":
                content_type = value
            elif lower == b"content-length" and value.isdigit():
                content_length = int(value)
            elif lower == b"content-encoding":
                self.content_encoding = value.decode("latin-1").strip().lower()
            if lower not in HOP_BY_HOP:
                out.append((name, value))
        sse = content_type.split(b";")[0].strip().lower() == b"text/event-stream"
        self.tracker = self._tracker(sse, content_type)
        if self.reply.finished:
            return
        bodyless = self.request.method == "HEAD" or status in (204, 304)
        self.reply.start(status, reason, out, None if sse else content_length, bodyless=bodyless)

    def on_body(self, data: bytes) -> None:
        assert self.tracker is not None
        out = self.tracker.feed(data)
        if out:
            self.reply.write(out)

    def on_done(self) -> None:
        if self.tracker is not None:
            tail = self.tracker.finish(self.content_encoding)
            if tail:
                self.reply.write(tail)
        self.reply.end()
        self._finish()

    def on_error(self, exc: Exception) -> None:
        if self.reply.started:
            self.error_type = "upstream_interrupted"
            self.reply.abort()
            self._finish()
        else:
            self._unreachable(exc)

    def _unreachable(self, exc: BaseException) -> None:
        """No response came: answer 502 with why, and record the call as unreachable."""
        reason = f"upstream failed: {type(exc).__name__}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason += (" (its TLS certificate is not signed by a trusted CA; for a private"
                       " CA set SSL_CERT_FILE to its PEM bundle)")
        log.warning("%s: %s", self.proxy.config.upstream, reason)
        self.error_type = "upstream_unreachable"
        if not self.reply.finished:
            self.reply.simple(502, error_body(reason, "upstream_unreachable"))
        self._finish()

    # ReplyListener: the client's side
    def client_gone(self) -> None:
        complete = self.tracker is not None and self.tracker.sse and self.tracker.done
        if self.error_type is None and not complete:  # left after [DONE]: delivered in full
            self.error_type = "client_disconnected"
        if self.upstream is not None:
            self.upstream.detach()
        self._finish()

    def pause(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()


def serve(proxy: Proxy, host: str, port: int) -> None:
    """Run `proxy` on host:port until SIGINT or SIGTERM, on uvloop where it is installed
    (half the CPU per forwarded chunk of the standard loop). OSError when it cannot listen.
    On a signal, calls in flight get SHUTDOWN_GRACE_S to finish; the rest are cut and
    recorded as errors (`proxy_shutdown`), so no call goes unrecorded."""

    async def main() -> None:
        await proxy.start(host, port)
        # Everything imported so far lives for the whole process: keep it out of the
        # collector's full passes, which otherwise stall every stream for milliseconds.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await proxy.close(grace_s=SHUTDOWN_GRACE_S)

    try:
        import uvloop
    except ImportError:  # not built for this platform: the standard loop works, slower
        asyncio.run(main())
    else:
        uvloop.run(main())

