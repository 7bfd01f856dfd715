"""A lean OpenAI-wire stub and load generator for the proxy benchmark.

Why: the proxy's added latency is the difference between streams through the proxy and
streams straight to the stub. With an aiohttp stub and an aiohttp client, those two took
~1.2 ms of CPU per request each, so on this 2-core machine the harness itself queued for
~90 ms (direct time to first chunk, p50) and the difference measured the harness's contention
more than the proxy. Here both sides are asyncio Protocols on uvloop with httptools, like a C
load generator (wrk) and a batched model server, which leaves the CPU to the proxy.

The stub sends what tests/openai_stub.py sends for a streaming chat call with
`include_usage`: a role chunk, `max_tokens` content chunks, a finish chunk, a usage chunk and
`[DONE]`, one SSE event every `chunk_delay_s`, as HTTP/1.1 chunked transfer.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

import httptools

from tests.openai_stub import PROMPT_TOKENS  # the same usage as the test stub reports


def sse_events(model: str, max_tokens: int) -> list[bytes]:
    """The stream's SSE events, already framed as HTTP chunks."""
    base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": model + "-0613",
            "object": "chat.completion.chunk", "usage": None}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "finish_reason": None}]}]
    events += [{**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                     "finish_reason": None}]} for i in range(max_tokens)]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": {
        "prompt_tokens": PROMPT_TOKENS, "completion_tokens": max_tokens,
        "total_tokens": PROMPT_TOKENS + max_tokens}})
    payloads = [json.dumps(e).encode() for e in events] + [b"[DONE]"]
    framed = []
    for payload in payloads:
        data = b"data: " + payload + b"\n\n"
        framed.append(b"%x\r\n%b\r\n" % (len(data), data))
    return framed


class StubConnection(asyncio.Protocol):
    """Answers every request with the same SSE stream, one event per `delay` seconds."""

    def __init__(self, events: list[bytes], delay: float) -> None:
        self._events = events
        self._delay = delay
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        start = self._loop.time()
        self._loop.call_at(start + self._delay, self._send, 0, start)

    def _send(self, index: int, start: float) -> None:
        """Event i leaves at start + (i + 1) * delay: late timers do not add up over a stream."""
        if self._transport is None:
            return
        if index + 1 < len(self._events):
            self._transport.write(self._events[index])
            self._loop.call_at(start + (index + 2) * self._delay, self._send, index + 1, start)
        else:
            self._transport.write(self._events[index] + b"0\r\n\r\n")


class ClientConnection(asyncio.Protocol):
    """One keep-alive connection that times a request: first body byte and end of stream."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._done: asyncio.Future[tuple[float, float]] | None = None
        self._start = 0.0
        self._first = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("connection closed mid-response"))

    def on_body(self, body: bytes) -> None:
        if not self._first:
            self._first = time.perf_counter()

    def on_message_complete(self) -> None:
        end = time.perf_counter()
        if self._done is not None and not self._done.done():
            first = self._first or end
            self._done.set_result(((end - self._start) * 1000, (first - self._start) * 1000))

    async def request(self, raw: bytes) -> tuple[float, float]:
        """(stream ms, time-to-first-chunk ms) for one request."""
        assert self._transport is not None
        self._done = asyncio.get_running_loop().create_future()
        self._first = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._start = time.perf_counter()
        self._transport.write(raw)
        return await self._done


def request_bytes(host: str, port: int, body: dict[str, object]) -> bytes:
    payload = json.dumps(body).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (host.encode(), port, len(payload), payload))


async def serve_stub(port: int, delay: float, max_tokens: int) -> None:
    events = sse_events("gpt-4o", max_tokens)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubConnection(events, delay), "127.0.0.1", port,
                                      backlog=2048)
    async with server:
        await server.serve_forever()


async def connect(port: int, count: int) -> list[ClientConnection]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, conn = await loop.create_connection(ClientConnection, "127.0.0.1", port)
        conns.append(conn)
    return conns
