"""Minimal HTTP/1.1 server and client connections on asyncio Protocols (httptools parsers).

Why not aiohttp for the proxy's data path: with 200 concurrent streams the proxy forwards
~10,000 SSE chunks per second. aiohttp's StreamResponse / ClientResponse machinery cost ~80 us
of CPU per forwarded chunk and ~2 ms per request, so the proxy took a whole core and added
~100 ms at p99 (bench/FINDINGS.md section 6). Here every upstream read goes from the parser's
callback straight to the client's transport: no task, no future, one write per read.

Scope: what an OpenAI-compatible pass-through needs. HTTP/1.1 and 1.0 clients with keep-alive
(requests on one connection are answered in order), `Expect: 100-continue`, request bodies
with Content-Length or chunked, bounded by `max_body`; upstream over http or https with a
keep-alive pool; responses framed by Content-Length, chunked or connection close. Flow control
both ways: a slow client pauses the upstream read instead of buffering the stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import httptools

Headers = list[tuple[bytes, bytes]]
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


class ResponseListener(Protocol):
    """What the code that sent a request hears back from the upstream."""

    def on_head(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_done(self) -> None: ...

    def on_error(self, exc: Exception) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request in flight at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self._pieces: list[bytes] = []
        self.idle_since = 0.0
        self._reset(None, bodyless=False)

    def _reset(self, listener: ResponseListener | None, bodyless: bool) -> None:
        """Per-request state, fresh for each request on this connection."""
        self._listener = listener
        self._parser = httptools.HttpResponseParser(self)
        self._headers: Headers = []
        self._reason = b""
        self._complete = False
        self._head_sent = False
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._bodyless = bodyless
        self._keep_alive = False
        self.paused = False  # the client is slow, not the upstream: no read timeout
        self.last_activity = time.monotonic()

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def request(self, head: bytes, body: bytes, listener: ResponseListener,
                bodyless: bool = False) -> None:
        """Send one request; `bodyless` when the response carries no body (HEAD)."""
        assert self.transport is not None
        self._reset(listener, bodyless)
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)

    def detach(self) -> None:
        """The caller no longer wants the response: close, since the stream is mid-message."""
        self._listener = None
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        listener = self._listener
        if listener is None:  # bytes while idle: the upstream broke the protocol
            self.detach()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionError(f"malformed upstream response: {exc}"))
            return
        if self._pieces:
            pieces, self._pieces = self._pieces, []
            listener.on_body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._complete:
            self._finish(reusable=self._keep_alive and not self._bodyless)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        listener = self._listener
        if listener is None or self._complete:
            return
        if self._head_sent and not self._framed:  # body delimited by the close
            if self._pieces:
                listener.on_body(b"".join(self._pieces))
                self._pieces = []
            self._finish(reusable=False)
            return
        self.fail(exc or ConnectionResetError("upstream closed the connection"))

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.last_activity = time.monotonic()
            self.transport.resume_reading()

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding"
                                              and b"chunked" in value.lower()):
                self._framed = True
        self._head_sent = True
        self._keep_alive = self._parser.should_keep_alive()  # reset once the message ends
        if self._listener is not None:
            self._listener.on_head(status, self._reason, self._headers)
        if self._bodyless or status in (204, 304):
            self._complete = True

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    def _finish(self, reusable: bool) -> None:
        listener, self._listener = self._listener, None
        if reusable:
            self._pool.release(self)
        elif self.transport is not None:
            self.transport.close()
        if listener is not None:
            listener.on_done()

    def fail(self, exc: Exception) -> None:
        listener, self._listener = self._listener, None
        if self.transport is not None:
            self.transport.abort()
        if listener is not None:
            listener.on_error(exc)


class UpstreamPool:
    """Keep-alive connections to one upstream host; idle ones expire before the server's own
    keep-alive timeout (uvicorn, which vLLM uses, closes idle connections after 5 s), so a
    request is rarely sent on a connection the server is closing."""

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 max_connections: int, connect_timeout_s: float, read_timeout_s: float,
                 idle_timeout_s: float = 4.0) -> None:
        self.host, self.port, self._ssl = host, port, ssl_context
        self._max = max_connections
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()
        self._reaper: asyncio.Task[None] | None = None

    def try_acquire(self) -> UpstreamConnection | None:
        """An idle connection, without waiting (the common case); None when a new connection
        or a free slot has to be awaited with `acquire`."""
        if self._in_use >= self._max or self._waiters:
            return None
        conn = self._pop_idle()
        if conn is not None:
            self._in_use += 1
            self._busy.add(conn)
        return conn

    def _pop_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        """A connection ready for one request; `release` or its close gives the slot back."""
        loop = asyncio.get_running_loop()
        if self._reaper is None:
            self._reaper = loop.create_task(self._reap())
        while self._in_use >= self._max:
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_use += 1
        try:
            conn = self._pop_idle()
            if conn is None:
                async with asyncio.timeout(self._connect_timeout_s):
                    _, conn = await loop.create_connection(
                        lambda: UpstreamConnection(self), self.host, self.port, ssl=self._ssl,
                        server_hostname=self.host if self._ssl else None)
            self._busy.add(conn)
            return conn
        except BaseException:
            self._free_slot()
            raise

    def _free_slot(self) -> None:
        self._in_use -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def release(self, conn: UpstreamConnection) -> None:
        if conn in self._busy:
            self._busy.discard(conn)
            self._free_slot()
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self._busy:
            self._busy.discard(conn)
            self._free_slot()
        elif conn in self._idle:
            self._idle.remove(conn)

    async def _reap(self) -> None:
        """Once a second: close idle connections past their time and silent upstreams."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in [c for c in self._idle if now - c.idle_since > self._idle_timeout_s]:
                self._idle.remove(conn)
                if conn.transport is not None:
                    conn.transport.close()
            for conn in [c for c in self._busy if not c.paused
                         and now - c.last_activity > self._read_timeout_s]:
                conn.fail(TimeoutError(f"no data from upstream for {self._read_timeout_s} s"))

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
        for conn in [*self._idle, *self._busy]:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
