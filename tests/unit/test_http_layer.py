"""The proxy's own HTTP/1.1 layer (collectors/http_server.py, collectors/http_client.py) on
the wire, with raw sockets.

The openai-client tests in test_proxy.py cover the usual calls; these cover what an HTTP
server and client must also get right: keep-alive on both sides, pipelining, chunked and
`Expect: 100-continue` request bodies, limits, malformed input, responses framed by close,
upstream timeouts and interruptions, and flow control towards a slow client.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import trustme

from costpipe.collectors.http_server import IncomingRequest, Reply, ServerConnection
from costpipe.collectors.proxy import Proxy, ProxyConfig
from costpipe.core.settings import load_settings
from tests.openai_stub import free_port
from tests.proxy_harness import ListSink

UpstreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
CHAT = b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
JSON_REPLY = (b'{"id":"x","model":"gpt-4o-0613","choices":[],'
              b'"usage":{"prompt_tokens":5,"completion_tokens":2}}')


class Rig:
    """A raw upstream (`handler` per connection) and a proxy in front of it, on a loop thread."""

    def __init__(self, handler: UpstreamHandler, tls: ssl.SSLContext | None = None,
                 **config: Any) -> None:
        self.handler = handler
        self.tls = tls
        self.config = config
        self.sink = ListSink()
        self.upstream_connections = 0
        self.handlers: set[asyncio.Task[None]] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Rig:
        self.thread.start()
        self.call(self._start())
        return self

    def call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.upstream_connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.handlers.add(task)
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                self.handlers.discard(task)

        self.upstream = await asyncio.start_server(counted, "127.0.0.1", 0, ssl=self.tls)
        port = self.upstream.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        self.proxy = Proxy(load_settings(environ={}), ProxyConfig(
            upstream=f"{scheme}://127.0.0.1:{port}/v1", provider="openai", **self.config),
            self.sink)
        self.port = free_port()
        await self.proxy.start("127.0.0.1", self.port)

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            await self.proxy.close()
            self.upstream.close()
            for task in list(self.handlers):  # no pending task left for the GC to find
                task.cancel()
            await asyncio.gather(*self.handlers, return_exceptions=True)
        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        _LEFTOVERS.pop(sock.fileno(), None)
        return sock

    def events(self, count: int, seconds: float = 3.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.sink.events) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.sink.events


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head[:-4].split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return line, headers, body


def keep_alive_json(seen: list[tuple[bytes, dict[bytes, bytes], bytes]]) -> UpstreamHandler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%b" % (len(JSON_REPLY), JSON_REPLY))
            await writer.drain()
    return handler


def post(path: bytes, body: bytes, *extra: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n%b"
            b"Content-Length: %d\r\n\r\n%b" % (path, b"".join(h + b"\r\n" for h in extra),
                                               len(body), body))


_LEFTOVERS: dict[int, bytes] = {}  # bytes read past a response, per socket


def read_response(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response: status, headers, body (de-chunked), read off a blocking socket. Bytes
    of the next (pipelined) response that came in the same read are kept for the next call."""
    buf = _LEFTOVERS.pop(sock.fileno(), b"")

    def more() -> bytes:
        got = sock.recv(65536)
        assert got, f"connection closed mid-response: {buf!r}"
        return got

    while b"\r\n\r\n" not in buf:
        buf += more()
    head, _, buf = buf.partition(b"\r\n\r\n")
    line, *rest = head.split(b"\r\n")
    status = int(line.split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(b":") for h in rest)}
    if status == 100 or b"content-length" in headers:
        size = int(headers.get(b"content-length", b"0"))
        while len(buf) < size:
            buf += more()
        _LEFTOVERS[sock.fileno()] = buf[size:]
        return status, headers, buf[:size]
    body = b""
    while True:
        while b"\r\n" not in buf:
            buf += more()
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line, 16)
        while len(buf) < size + 2:
            buf += more()
        if size == 0:
            _LEFTOVERS[sock.fileno()] = buf[2:]
            return status, headers, body
        body, buf = body + buf[:size], buf[size + 2:]


@pytest.fixture
def json_rig() -> Iterator[tuple[Rig, list[tuple[bytes, dict[bytes, bytes], bytes]]]]:
    seen: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    with Rig(keep_alive_json(seen)) as rig:
        yield rig, seen


def test_both_sides_keep_their_connections_alive(json_rig: Any) -> None:
    rig, seen = json_rig
    with rig.connect() as sock:
        for _ in range(5):
            sock.sendall(post(b"/v1/chat/completions", CHAT))
            status, headers, body = read_response(sock)
            assert status == 200 and body == JSON_REPLY
            assert headers[b"connection"] == b"keep-alive"
    assert len(seen) == 5
    assert rig.upstream_connections == 1  # pooled, not one connection per call
    events = rig.events(5)
    assert [(e["input_tokens"], e["output_tokens"]) for e in events] == [(5, 2)] * 5


def test_pipelined_requests_are_answered_in_order(json_rig: Any) -> None:
    rig, seen = json_rig
    with rig.connect() as sock:
        sock.sendall(post(b"/v1/chat/completions", CHAT) + post(b"/v1/embeddings",
                                                                  b'{"model":"e","input":"x"}'))
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 200
    assert [line.split()[1] for line, _, _ in seen] == [b"/v1/chat/completions",
                                                        b"/v1/embeddings"]
    assert [e["gen_ai_operation"] for e in rig.events(2)] == ["chat", "embeddings"]


def test_chunked_and_expect_continue_request_bodies_reach_the_upstream_whole(
        json_rig: Any) -> None:
    rig, seen = json_rig
    with rig.connect() as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in (CHAT[:10], CHAT[10:]))
                     + b"0\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nExpect: 100-continue"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(CHAT))
        status, _, rest = read_response(sock)
        assert status == 100 and rest == b""
        sock.sendall(CHAT)
        assert read_response(sock)[0] == 200
    for _, headers, body in seen:
        assert body == CHAT and headers[b"content-length"] == str(len(CHAT)).encode()
        assert b"transfer-encoding" not in headers and b"expect" not in headers
    assert [e["model"] for e in rig.events(2)] == ["gpt-4o", "gpt-4o"]


def test_malformed_request_is_a_400_and_the_connection_closes(json_rig: Any) -> None:
    rig, seen = json_rig
    with rig.connect() as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 400 and b"malformed" in body
        assert sock.recv(10) == b""
    assert seen == [] and rig.sink.events == []


class _Bare:
    """A bare ServerConnection with `handler`, on a loop thread (no proxy, no upstream)."""

    def __init__(self, handler: Callable[[IncomingRequest, Reply], None], max_body: int) -> None:
        self.handler, self.max_body = handler, max_body
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> socket.socket:
        self.thread.start()

        async def serve() -> asyncio.Server:
            return await asyncio.get_running_loop().create_server(
                lambda: ServerConnection(self.handler, max_body=self.max_body), "127.0.0.1", 0)

        self.server = asyncio.run_coroutine_threadsafe(serve(), self.loop).result(5)
        port = self.server.sockets[0].getsockname()[1]
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        _LEFTOVERS.pop(self.sock.fileno(), None)
        return self.sock

    def __exit__(self, *_: object) -> None:
        self.sock.close()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_body_over_the_limit_is_a_413_before_anything_is_forwarded() -> None:
    handled: list[IncomingRequest] = []

    def handler(request: IncomingRequest, reply: Reply) -> None:
        handled.append(request)
        reply.simple(200, b"{}")

    with _Bare(handler, max_body=100) as sock:
        sock.sendall(post(b"/v1/chat/completions", b"x" * 50))
        assert read_response(sock)[0] == 200
        sock.sendall(post(b"/v1/chat/completions", b"x" * 101) + post(b"/v1/x", b"{}"))
        status, _, body = read_response(sock)
        assert status == 413 and b"100 bytes" in body
        assert sock.recv(10) == b""  # closed: the pipelined request after it is not served
    assert len(handled) == 1


def test_a_failing_handler_answers_500_and_the_connection_goes_on() -> None:
    def handler(request: IncomingRequest, reply: Reply) -> None:
        if request.target == b"/boom":
            raise RuntimeError("bug")
        reply.simple(200, b"{}")

    with _Bare(handler, max_body=100) as sock:
        sock.sendall(post(b"/boom", b"{}"))
        status, _, body = read_response(sock)
        assert status == 500 and b"server_error" in body
        sock.sendall(post(b"/fine", b"{}"))
        assert read_response(sock)[:3:2] == (200, b"{}")


def test_response_framed_by_close_is_rechunked_and_that_connection_not_reused() -> None:
    async def close_framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n\r\n" + JSON_REPLY)
        await writer.drain()

    with Rig(close_framed) as rig, rig.connect() as sock:
        for _ in range(2):
            sock.sendall(post(b"/v1/chat/completions", CHAT))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, JSON_REPLY)
            assert headers[b"transfer-encoding"] == b"chunked"
        assert rig.upstream_connections == 2
        assert [e["status"] for e in rig.events(2)] == ["ok", "ok"]


def test_head_request_gets_headers_only() -> None:
    async def head_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line, _, _ = await read_request(reader)
            assert line.startswith(b"HEAD ")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1234\r\n\r\n")
            await writer.drain()

    with Rig(head_ok) as rig, rig.connect() as sock:
        for _ in range(2):  # a second request on the same connection still parses
            sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: p\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += sock.recv(4096)
            assert buf.startswith(b"HTTP/1.1 200") and b"Content-Length: 1234" in buf
            assert buf.endswith(b"\r\n\r\n")


def test_silent_upstream_times_out_as_a_502_and_an_error_event() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    with Rig(silent, read_timeout_s=1.0) as rig, rig.connect() as sock:
        started = time.monotonic()
        sock.sendall(post(b"/v1/chat/completions", CHAT))
        status, _, body = read_response(sock)
        assert status == 502 and b"TimeoutError" in body
        assert time.monotonic() - started < 5
        event = rig.events(1)[0]
    assert (event["status"], event["error_type"]) == ("error", "upstream_unreachable")


def test_upstream_cut_mid_stream_cuts_the_client_and_is_recorded() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        data = b'data: {"model":"m","choices":[{"delta":{"content":"a"}}]}\n\n'
        writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    with Rig(cut) as rig, rig.connect() as sock:
        sock.sendall(post(b"/v1/chat/completions", CHAT))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert b'"content":"a"' in received
        assert not received.endswith(b"0\r\n\r\n")  # never a complete-looking response
        event = rig.events(1)[0]
    assert (event["status"], event["error_type"]) == ("error", "upstream_interrupted")
    assert event["output_tokens"] == 1


def test_slow_client_pauses_the_upstream_instead_of_buffering_the_stream() -> None:
    sent = [0]

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: %d\r\n\r\n" % (64 * 1024 * 1024))
        block = b"x" * 65536
        for _ in range(1024):
            writer.write(block)
            await writer.drain()
            sent[0] += len(block)

    with Rig(firehose) as rig, rig.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(post(b"/v1/files", b"{}"))
        time.sleep(1.0)  # the client reads nothing
        first = sent[0]
        time.sleep(0.5)
        assert sent[0] == first, "the upstream kept sending to a client that does not read"
        assert sent[0] < 32 * 1024 * 1024
        paused = [c.paused for c in rig.proxy._pool._busy]  # type: ignore[union-attr]
        assert paused == [True]
        total = 0
        while total < 4 * 1024 * 1024:  # reading again resumes the upstream
            total += len(sock.recv(1 << 20))
        time.sleep(0.3)
        assert sent[0] > first


def test_shutdown_lets_short_calls_finish_and_records_the_ones_it_cuts() -> None:
    async def slow_sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, _, body = await read_request(reader)
        events = 3 if b"short" in body else 100
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for _ in range(events):
            data = b'data: {"model":"m","choices":[{"delta":{"content":"a"}}]}\n\n'
            writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    with Rig(slow_sse) as rig, rig.connect() as short, rig.connect() as long:
        short.sendall(post(b"/v1/chat/completions", b'{"model":"short","stream":true}'))
        long.sendall(post(b"/v1/chat/completions", b'{"model":"long","stream":true}'))
        time.sleep(0.15)
        rig.call(rig.proxy.close(grace_s=1.0))
        status, _, body = read_response(short)  # finished inside the grace period
        assert status == 200 and body.count(b"data:") == 3
        events = {e["model"]: e for e in rig.events(2)}
    assert (events["short"]["status"], events["short"]["error_type"]) == ("ok", None)
    assert (events["long"]["status"], events["long"]["error_type"]) == ("error",
                                                                        "proxy_shutdown")
    assert 5 <= events["long"]["output_tokens"] < 100


def test_https_upstream_is_verified_against_the_trusted_cas(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A self-hosted server with a private CA: trusted through SSL_CERT_FILE, refused without."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    seen: list[tuple[bytes, dict[bytes, bytes], bytes]] = []
    with Rig(keep_alive_json(seen), tls=server_tls) as rig, rig.connect() as sock:
        sock.sendall(post(b"/v1/chat/completions", CHAT))  # not trusted yet
        status, _, body = read_response(sock)
        assert status == 502 and b"SSLCertVerificationError" in body
        assert b"SSL_CERT_FILE" in body
    assert seen == []
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    with Rig(keep_alive_json(seen), tls=server_tls) as rig, rig.connect() as sock:
        for _ in range(2):
            sock.sendall(post(b"/v1/chat/completions", CHAT))
            assert read_response(sock)[:3:2] == (200, JSON_REPLY)
        assert rig.upstream_connections == 1
        assert [e["status"] for e in rig.events(2)] == ["ok", "ok"]
        host = f"127.0.0.1:{rig.upstream.sockets[0].getsockname()[1]}".encode()
    assert [headers[b"host"] for _, headers, _ in seen] == [host, host]
