"""HTTP/1.1 client side of the proxy's data path: keep-alive connections to one upstream, over
http or https, on an asyncio Protocol with httptools' response parser, and their pool.

Why hand-written rather than aiohttp's ClientSession: each upstream read goes from the parser's
callback straight to the `ResponseListener` (the proxy writes it to the client): no task, no
future, one write per read. The measured choice is in
docs/decisions/2026-11-30-proxy-http-layer.md; the side facing the proxy's own clients is
`collectors/http_server.py`.

Scope: one request in flight per connection; responses framed by Content-Length, chunked or the
connection's close; idle connections expire before the upstream's own keep-alive timeout; a
silent upstream times out, a paused one (slow client) does not.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Protocol, cast

import httptools

from costpipe.collectors.http_server import Headers


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
