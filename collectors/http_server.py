"""HTTP/1.1 server side of the proxy's data path: client connections on an asyncio Protocol
with httptools' request parser. `ServerConnection` parses requests and hands each one, in order,
to a handler with a `Reply` that writes straight to the client's transport.

Why hand-written rather than aiohttp's web server: the proxy forwards every SSE chunk of every
stream, and the per-chunk cost of the HTTP layer is what it adds to a caller's latency; the
measured choice is in docs/decisions/2026-11-30-proxy-http-layer.md. The upstream side is
`collectors/http_client.py`.

Scope: what an OpenAI-compatible pass-through needs. HTTP/1.1 and 1.0 clients with keep-alive
(requests on one connection are answered in order, pipelining included), `Expect: 100-continue`,
request bodies with Content-Length or chunked, bounded by `max_body`; responses with a length,
chunked, or ended by the close (HTTP/1.0). A slow client pauses the upstream read
(`ReplyListener.pause`) instead of buffering the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

Headers = list[tuple[bytes, bytes]]  # raw (name, value) pairs, as sent; the client side too
log = logging.getLogger(__name__)

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 413: b"Payload Too Large",
            500: b"Internal Server Error",
            502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


def error_body(message: str, kind: str) -> bytes:
    """An error in the OpenAI wire shape, so OpenAI clients raise it with its message."""
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": kind}}).encode()


@dataclass(slots=True)
class IncomingRequest:
    method: str
    target: bytes  # raw request target: path and query as the client sent them
    headers: Headers
    body: bytes
    http_minor: int  # 1 for HTTP/1.1, 0 for HTTP/1.0

    def header(self, name: bytes) -> str | None:
        """First value of a header (`name` lower-case), decoded as latin-1 like HTTP says."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


class ReplyListener(Protocol):
    """What the code answering a request hears about the client connection."""

    def client_gone(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


Handler = Callable[[IncomingRequest, "Reply"], None]


class Reply:
    """Writes one response to the client: `start`, any number of `write`, then `end`."""

    __slots__ = ("_chunked", "_conn", "_keep_alive", "finished", "listener", "started")

    def __init__(self, conn: ServerConnection, keep_alive: bool) -> None:
        self._conn = conn
        self._chunked = False
        self._keep_alive = keep_alive
        self.listener: ReplyListener | None = None
        self.started = False
        self.finished = False

    def start(self, status: int, reason: bytes, headers: Headers,
              content_length: int | None, bodyless: bool = False) -> None:
        """Send the status line and headers. Without a length the body is chunked (HTTP/1.1)
        or ends with the connection (HTTP/1.0). `bodyless`: a HEAD, 204 or 304 answer."""
        self.started = True
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))]
        lines.extend(b"%s: %s\r\n" % pair for pair in headers)
        if bodyless:
            if content_length is not None and status not in (204, 304):
                lines.append(b"Content-Length: %d\r\n" % content_length)
        elif content_length is not None:
            lines.append(b"Content-Length: %d\r\n" % content_length)
        elif self._conn.http_minor >= 1:
            self._chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self._keep_alive = False
        lines.append(b"Connection: keep-alive\r\n\r\n" if self._keep_alive
                     else b"Connection: close\r\n\r\n")
        self._conn.send(b"".join(lines))

    def write(self, data: bytes) -> None:
        if data and not self.finished:
            self._conn.send(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    def end(self) -> None:
        """The response is complete: the connection serves the client's next request."""
        if self.finished:
            return
        if self._chunked:
            self._conn.send(b"0\r\n\r\n")
        self.finished = True
        self._conn.reply_done(self, self._keep_alive)

    def abort(self) -> None:
        """Cut the connection: the client sees an incomplete response, not a wrong one."""
        if not self.finished:
            self.finished = True
            self._conn.close()

    def simple(self, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
        self.start(status, b"", [(b"Content-Type", content_type)], len(body))
        self.write(body)
        self.end()


class ServerConnection(asyncio.Protocol):
    """One client connection: parses requests, hands each to `handler`, one at a time."""

    def __init__(self, handler: Handler, max_body: int) -> None:
        self._handler = handler
        self._max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = bytearray()
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._keep_alive = True
        self._queue: deque[tuple[IncomingRequest, bool]] = deque()
        self._current: Reply | None = None
        self.http_minor = 1

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError:
            self._refuse(400, "malformed HTTP request")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._queue.clear()
        current, self._current = self._current, None
        if current is not None and not current.finished:
            current.finished = True
            if current.listener is not None:
                current.listener.client_gone()

    def pause_writing(self) -> None:
        if self._current is not None and self._current.listener is not None:
            self._current.listener.pause()

    def resume_writing(self) -> None:
        if self._current is not None and self._current.listener is not None:
            self._current.listener.resume()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # reset once the message ends
        expects_continue = False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
            elif lower == b"content-length" and value.isdigit() and int(value) > self._max_body:
                self._too_large = True
        if expects_continue and not self._too_large:  # curl waits for this before a body
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._too_large = True
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return  # refused or closed: later pipelined requests are not served
        if self._too_large:
            self._refuse(413, f"request body larger than {self._max_body} bytes")
            return
        version = self._parser.get_http_version()
        request = IncomingRequest(
            method=self._parser.get_method().decode("ascii", "replace"),
            target=bytes(self._url), headers=self._headers, body=b"".join(self._body),
            http_minor=0 if version == "1.0" else 1,
        )
        self._queue.append((request, self._keep_alive))
        if self._current is None:
            self._next()

    # used by Reply
    def send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def reply_done(self, reply: Reply, keep_alive: bool) -> None:
        if reply is not self._current:
            return
        self._current = None
        if not keep_alive:
            self._queue.clear()
            self.close()
        elif self._queue:
            self._next()

    def _next(self) -> None:
        request, keep_alive = self._queue.popleft()
        self.http_minor = request.http_minor
        reply = Reply(self, keep_alive)
        self._current = reply
        try:
            self._handler(request, reply)
        except Exception:  # a bug in the handler must not hang the client
            log.exception("request handler failed")
            if reply.started:
                reply.abort()
            elif not reply.finished:
                reply.simple(500, error_body("proxy error", "server_error"))

    def _refuse(self, status: int, message: str) -> None:
        body = error_body(message, "invalid_request_error")
        self.send(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%b" % (status, _REASONS[status], len(body), body))
        self._queue.clear()
        self.close()
