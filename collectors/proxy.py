"""OpenAI-compatible pass-through proxy that emits one request event per model call.

Why a proxy: teams that call OpenAI or a self-hosted OpenAI-compatible server (vLLM,
llama.cpp) get cost telemetry by changing only `base_url`. It must not change what the client
sees or when it sees it, so responses are streamed chunk by chunk (aiohttp StreamResponse, one
write per upstream chunk), and one shared ClientSession keeps a connection pool to the upstream.

Measured per call: tokens (from `usage`; for streaming chat/completions the proxy adds
`stream_options.include_usage=true` when the client did not set it, and then removes that extra
usage-only chunk so the client sees exactly the stream it asked for; if the upstream still sends
no usage, tokens are estimated: output = content chunks, input = request chars / 4), latency,
time to first token, status and error type, operation and tags from `X-Costpipe-*` headers.

Auth: when a token is configured, clients must send `X-Costpipe-Token: <token>`. A separate
header (not `Authorization`) because `Authorization` carries the upstream API key, which is
forwarded untouched. All `X-Costpipe-*` headers are stripped before forwarding. Nothing here
logs or stores prompt text, response text or header values.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter
from yarl import URL

from collectors.events import EventSink, request_event
from costpipe.settings import Settings

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Costpipe-Token"
TAG_HEADERS = {"team": "X-Costpipe-Team", "app": "X-Costpipe-App", "feature": "X-Costpipe-Feature"}
# path -> (default operation name, gen_ai.operation.name)
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", "chat"),
    "/v1/completions": ("text_completion", "text_completion"),
    "/v1/embeddings": ("embeddings", "embeddings"),
    "/v1/responses": ("responses", "chat"),
}
USAGE_INJECT_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length",
))
MAX_JSON_BODY = 16 * 1024 * 1024
_CONTENT = re.compile(rb'"(?:content|text|delta|arguments)"\s*:\s*"[^"]')
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')

REQUESTS = Counter(
    "costpipe_proxy_requests", "Model calls seen by the proxy", ["route", "status"]
)


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


class ResponseTracker:
    """Watches the response bytes on their way to the client; keeps counts, never text."""

    def __init__(self, *, sse: bool, strip_usage_chunk: bool, start: float) -> None:
        self.sse = sse
        self.strip = sse and strip_usage_chunk
        self.start = start
        self.first_token_at: float | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.error_type: str | None = None
        self.content_events = 0
        self._pending = bytearray()
        self._body = bytearray()
        self._body_overflow = False

    def feed(self, chunk: bytes) -> bytes:
        """Return what to send to the client now."""
        if not self.sse:
            if not self._body_overflow:
                if len(self._body) + len(chunk) <= MAX_JSON_BODY:
                    self._body += chunk
                else:
                    self._body_overflow = True
            return chunk
        self._pending += chunk
        end = max(self._pending.rfind(b"\n\n") + 2, self._pending.rfind(b"\r\n\r\n") + 4)
        if end < 2:
            return b"" if self.strip else chunk
        complete = bytes(self._pending[:end])
        del self._pending[:end]
        kept = self._scan_events(complete)
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
        error = doc.get("error")
        if isinstance(error, dict):
            kind = error.get("type") or error.get("code")
            self.error_type = str(kind) if kind else None

    def _scan_events(self, data: bytes) -> bytes:
        sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
        kept: list[bytes] = []
        for raw in data.split(sep):
            if not raw.strip():
                continue
            if self._inspect(raw):
                kept.append(raw + sep)
        return b"".join(kept)

    def _inspect(self, event: bytes) -> bool:
        """Update counters from one SSE event; False means: drop it (injected usage chunk)."""
        if _CONTENT.search(event):
            self.content_events += 1
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        wants_parse = self.model is None or (b'"usage"' in event and not _NULL_USAGE.search(event))
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
            if self.strip and doc.get("choices") == []:
                return False
        if isinstance(doc.get("error"), dict):
            self.error_type = str(doc["error"].get("type") or doc["error"].get("code") or "error")
        return True


class Proxy:
    """The aiohttp application; `app()` builds it, the sink receives one event per call."""

    def __init__(self, settings: Settings, config: ProxyConfig, sink: EventSink) -> None:
        self.settings = settings
        self.config = config
        self.sink = sink
        base = config.upstream.rstrip("/")
        self._base = base
        self._base_has_v1 = URL(base).path.rstrip("/").endswith("/v1")
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=self.config.read_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False
        )

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    def _target(self, request: web.Request) -> URL:
        path = request.rel_url.raw_path
        if self._base_has_v1 and (path == "/v1" or path.startswith("/v1/")):
            path = path[3:]
        query = request.rel_url.raw_query_string
        return URL(f"{self._base}{path}{'?' + query if query else ''}", encoded=True)

    def _authorised(self, request: web.Request) -> bool:
        if not self.config.auth_token:
            return True
        given = request.headers.get(TOKEN_HEADER, "")
        return hmac.compare_digest(given.encode(), self.config.auth_token.encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        start = time.perf_counter()
        if not self._authorised(request):
            return _openai_error(401, "missing or wrong X-Costpipe-Token header", "unauthorized")
        route = ROUTES.get(request.path) if request.method == "POST" else None
        body = await request.read()
        request_doc: dict[str, Any] = {}
        injected = False
        if route is not None:
            try:
                parsed = json.loads(body) if body else {}
                request_doc = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                request_doc = {}
            if (
                self.config.inject_usage
                and request_doc.get("stream") is True
                and request.path in USAGE_INJECT_ROUTES
            ):
                options = request_doc.get("stream_options")
                if not isinstance(options, dict) or "include_usage" not in options:
                    request_doc = {
                        **request_doc,
                        "stream_options": {**(options or {}), "include_usage": True},
                    }
                    body = json.dumps(request_doc, separators=(",", ":")).encode()
                    injected = True
        started_at = dt.datetime.now(dt.UTC)
        headers = _forward_headers(request.headers)
        tracker: ResponseTracker | None = None
        status_code = 502
        error_type: str | None = None
        response: web.StreamResponse | None = None
        ttfb: float | None = None
        assert self._session is not None
        try:
            async with self._session.request(
                request.method, self._target(request), headers=headers, data=body,
                allow_redirects=False,
            ) as upstream:
                ttfb = time.perf_counter()
                status_code = upstream.status
                sse = upstream.content_type == "text/event-stream"
                tracker = ResponseTracker(sse=sse, strip_usage_chunk=injected, start=start)
                response = web.StreamResponse(
                    status=upstream.status, reason=upstream.reason,
                    headers=_response_headers(upstream.headers),
                )
                if not sse and upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        out = tracker.feed(chunk)
                        if out:
                            await response.write(out)
                    tail = tracker.finish(upstream.headers.get("Content-Encoding"))
                    if tail:
                        await response.write(tail)
                    await response.write_eof()
                except ConnectionResetError:
                    error_type = "client_disconnected"
        except (TimeoutError, aiohttp.ClientError) as exc:
            error_type = "upstream_unreachable" if response is None else "upstream_interrupted"
            if response is None:
                log.warning("upstream %s failed: %s", self._base, type(exc).__name__)
                response = _openai_error(502, f"upstream failed: {type(exc).__name__}",
                                         "upstream_unreachable")
        finally:
            if route is not None:
                self._emit(request, route, request_doc, body, start, started_at, ttfb,
                           tracker, status_code, error_type)
        return response

    def _emit(
        self, request: web.Request, route: tuple[str, str], request_doc: dict[str, Any],
        body: bytes, start: float, started_at: Any, ttfb: float | None,
        tracker: ResponseTracker | None, status_code: int, error_type: str | None,
    ) -> None:
        end = time.perf_counter()
        model = request_doc.get("model") if isinstance(request_doc.get("model"), str) else None
        response_model = tracker.model if tracker else None
        if tracker is not None and tracker.usage is not None:
            tokens = usage_tokens(tracker.usage)
        else:
            tokens = {
                "input_tokens": len(body) // 4 if status_code < 400 else 0,
                "output_tokens": tracker.content_events if tracker else 0,
            }
        failed = status_code >= 400 or error_type is not None
        if failed and error_type is None:
            error_type = (tracker.error_type if tracker else None) or str(status_code)
        first = tracker.first_token_at if tracker and tracker.sse else ttfb
        operation = (
            request.headers.get(self.config.operation_header)
            or self.settings.servers.operation_map.get(model or "")
            or self.settings.servers.operation_map.get(request.path)
            or route[0]
        )
        event = request_event(
            self.settings,
            timestamp=started_at,
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
            **{name: request.headers.get(header) for name, header in TAG_HEADERS.items()},
            **tokens,
        )
        REQUESTS.labels(route[1], event["status"]).inc()
        try:
            self.sink.emit(event)
        except Exception:  # telemetry must never break the caller's request
            log.exception("could not hand the request event to the producer")


def _forward_headers(incoming: Any) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower.startswith("x-costpipe-") or lower == "accept-encoding":
            continue
        out.add(name, value)
    out["Accept-Encoding"] = "identity"
    return out


def _response_headers(incoming: Any) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in HOP_BY_HOP:
            out.add(name, value)
    return out


def _openai_error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}}, status=status
    )
