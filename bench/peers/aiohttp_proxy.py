"""Peer: the metering proxy with an aiohttp data path (web server + one ClientSession).

Why: the proxy's HTTP layer is hand-written (collectors/http_server.py, http_client.py) because
aiohttp's cost per forwarded chunk was measured too high. This peer re-measures that choice on
today's harness (`python -m bench.bench_proxy --data-path aiohttp`); the decision record is
docs/decisions/2026-11-30-proxy-http-layer.md. Bench code, not product code.

Only the HTTP data path differs from `costpipe proxy`: `AiohttpProxy` is today's `Proxy` with
`start`/`close` replaced, so the target mapping, request rewriting (`_Exchange._rewrite_body`),
`ResponseTracker` (usage injection and stripping) and the event (`Proxy._emit`, one per call,
to the same sink) are the real proxy's, and `collectors.proxy.serve` runs it (uvloop, gc.freeze
after start, the same shutdown grace). Responses stream chunk by chunk; a TCPConnector keeps the
upstream connections alive (idle ones closed after 4 s, like the real pool).

    python -m bench.peers.aiohttp_proxy --upstream http://127.0.0.1:8000/v1 --provider openai
        [--listen 127.0.0.1:8787]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import time

import aiohttp
from aiohttp import web
from yarl import URL

from costpipe.collectors.events import EventSink
from costpipe.collectors.http_server import Headers, IncomingRequest, error_body
from costpipe.collectors.proxy import (
    HOP_BY_HOP,
    MAX_REQUEST_BODY,
    TOKEN_HEADER,
    Proxy,
    ProxyConfig,
    ResponseTracker,
    _Exchange,
    serve,
)
from costpipe.core.settings import Settings

log = logging.getLogger(__name__)


class AiohttpProxy(Proxy):
    """`Proxy` served by aiohttp: same config, sink and events, another HTTP layer."""

    def __init__(self, settings: Settings, config: ProxyConfig, sink: EventSink) -> None:
        super().__init__(settings, config, sink)
        self._origin = str(URL(config.upstream).origin())
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_connections,
                                           keepalive_timeout=4.0, ssl=self._ssl or True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0,
                                          sock_read=self.config.read_timeout_s),
            auto_decompress=False, trust_env=False, skip_auto_headers=("User-Agent",))
        app = web.Application(client_max_size=MAX_REQUEST_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle_aiohttp)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, host, port, reuse_address=True, backlog=2048)
        return self._server

    async def close(self, grace_s: float = 0.0) -> None:
        """Stop listening; calls in flight get `grace_s`, then aiohttp cancels them (each is
        recorded as a `proxy_shutdown` error)."""
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            if self._runner.server is not None:
                self._runner.server.pre_shutdown()
                await self._runner.server.shutdown(grace_s)
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle_aiohttp(self, request: web.Request) -> web.StreamResponse:
        incoming = IncomingRequest(request.method, request.raw_path.encode("latin-1"),
                                   list(request.raw_headers), await request.read(),
                                   request.version.minor)
        if self.config.auth_token:
            given = (incoming.header(TOKEN_HEADER.lower().encode()) or "").encode("latin-1")
            if not hmac.compare_digest(given, self.config.auth_token.encode()):
                return _error(401, "missing or wrong X-Costpipe-Token header", "unauthorized")
        exchange = _Exchange(self, incoming, None)  # type: ignore[arg-type]  # aiohttp replies
        if exchange.route is not None:
            exchange._rewrite_body()
        response: web.StreamResponse | None = None
        assert self._session is not None
        try:
            async with self._session.request(
                    incoming.method, URL(self._origin + self._target(incoming.target).decode(
                        "latin-1"), encoded=True),
                    headers=_forwarded(incoming.headers), data=exchange.body,
                    allow_redirects=False) as upstream:
                exchange.ttfb = time.perf_counter()
                exchange.status_code = upstream.status
                encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
                exchange.content_encoding = encoding or None
                sse = upstream.content_type == "text/event-stream"
                tracker = exchange.tracker = ResponseTracker(
                    sse=sse, strip_usage_chunk=exchange.injected, start=exchange.start)
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers=[(k.decode("latin-1"), v.decode("latin-1"))
                                                       for k, v in upstream.raw_headers
                                                       if k.lower() not in HOP_BY_HOP])
                if not sse and upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    out = tracker.feed(chunk)
                    if out:
                        await response.write(out)
                tail = tracker.finish(exchange.content_encoding)
                if tail:
                    await response.write(tail)
                await response.write_eof()
        except asyncio.CancelledError:
            exchange.error_type = "proxy_shutdown"
            raise
        except (TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
            if request.transport is None or request.transport.is_closing():
                exchange.error_type = "client_disconnected"
            elif response is None:  # no response came: 502, as the real proxy answers
                log.warning("%s: upstream failed: %s", self.config.upstream, type(exc).__name__)
                exchange.error_type = "upstream_unreachable"
                response = _error(502, f"upstream failed: {type(exc).__name__}",
                                  "upstream_unreachable")
            else:  # cut mid-response: the client sees an incomplete response, not a wrong one
                exchange.error_type = "upstream_interrupted"
                request.transport.abort()
        finally:
            if exchange.route is not None:
                self._emit(exchange)
        return response if response is not None else web.Response(status=499)


def _forwarded(headers: Headers) -> list[tuple[str, str]]:
    """The client's headers as the real proxy forwards them (`_Exchange._head`); aiohttp adds
    Host and Content-Length."""
    out = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers
           if (lower := name.lower()) not in HOP_BY_HOP and not lower.startswith(b"x-costpipe-")
           and lower not in (b"accept-encoding", b"expect")]
    out.append(("Accept-Encoding", "identity"))
    return out


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.Response(status=status, body=error_body(message, kind),
                        content_type="application/json")


def main() -> None:
    from costpipe.collectors.producer import producer_for
    from costpipe.core.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--listen", help="HOST:PORT [servers.proxy_listen]")
    args = parser.parse_args()
    settings = get_settings()
    host, _, port = (args.listen or settings.servers.proxy_listen).rpartition(":")
    producer = producer_for(settings, "requests")
    try:
        serve(AiohttpProxy(settings, ProxyConfig(upstream=args.upstream, provider=args.provider),
                           producer), host, int(port))
    finally:
        producer.close()


if __name__ == "__main__":
    main()
