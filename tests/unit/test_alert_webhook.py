"""Webhook delivery of alerts against a real local HTTP server (no mocked HTTP client).

Why: issue 4 asks for Slack-compatible JSON with retries and backoff that never blocks the
stream; a flaky receiver must still get the alert exactly once, and a dead one must give up
in bounded time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from costpipe.streams.alerts import post_webhook

ALERT: dict[str, Any] = {
    "alert_id": "abc123",
    "timestamp": dt.datetime(2025, 1, 1, 12, 1, tzinfo=dt.UTC),
    "rule": "spike",
    "severity": "warning",
    "key": "chat/openai/gpt-4o",
    "window_start": dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC),
    "observed": 12.5,
    "threshold": 3.0,
    "message": "cost $12.5000 in window vs baseline $1.0000 (k=3.0)",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _with_server(handler: Callable[[web.Request], Awaitable[web.Response]],
                       body: Callable[[str], Awaitable[Any]]) -> Any:
    """Run `body(url)` while an aiohttp app serving `handler` listens on a free port."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        return await body(f"http://127.0.0.1:{port}/hook")
    finally:
        await runner.cleanup()


def test_flaky_receiver_gets_alert_once_after_retries() -> None:
    """500, 500, then 200: three requests, one accepted body naming rule and key."""
    hits: list[float] = []
    accepted: list[dict[str, Any]] = []
    content_types: set[str] = set()

    async def handler(request: web.Request) -> web.Response:
        hits.append(time.monotonic())
        content_types.add(request.content_type)
        payload = await request.json()
        if len(hits) <= 2:
            return web.Response(status=500, text="down")
        accepted.append(payload)
        return web.json_response({"ok": True})

    started = time.monotonic()
    ok = asyncio.run(_with_server(handler, lambda url: post_webhook(url, ALERT, attempts=4)))
    assert ok is True
    assert len(hits) == 3, "two failures then one success, no extra request"
    assert len(accepted) == 1
    assert content_types == {"application/json"}
    text = accepted[0]["text"]
    assert set(accepted[0]) == {"text"} and isinstance(text, str)  # Slack-compatible body
    assert "spike" in text and "chat/openai/gpt-4o" in text and "warning" in text
    assert ALERT["message"] in text
    # backoff: the second retry waits longer than the first
    first_gap, second_gap = hits[1] - hits[0], hits[2] - hits[1]
    assert first_gap >= 0.4 and second_gap > first_gap
    assert time.monotonic() - started < 10


def test_client_error_is_not_retried() -> None:
    """A 4xx (not 429) means the receiver rejects the payload: give up at once."""
    hits: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=400, text="bad payload")

    ok = asyncio.run(_with_server(handler, lambda url: post_webhook(url, ALERT, attempts=4)))
    assert ok is False and len(hits) == 1


def test_dead_receiver_gives_up_in_bounded_time() -> None:
    """Nothing listening: returns False after its attempts, never hangs."""
    url = f"http://127.0.0.1:{_free_port()}/hook"  # closed port: connection refused
    started = time.monotonic()
    ok = asyncio.run(asyncio.wait_for(post_webhook(url, ALERT, attempts=3), timeout=15))
    elapsed = time.monotonic() - started
    assert ok is False
    assert elapsed < 8, f"3 refused attempts took {elapsed:.1f}s"


def test_webhook_runs_beside_other_work() -> None:
    """While retrying it yields to the event loop: other tasks keep running (stream not
    blocked)."""
    ticks: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503)

    async def body(url: str) -> bool:
        async def ticker() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.05)

        tick_task = asyncio.create_task(ticker())
        try:
            return await post_webhook(url, ALERT, attempts=2)
        finally:
            tick_task.cancel()

    assert asyncio.run(_with_server(handler, body)) is False
    assert len(ticks) >= 10
