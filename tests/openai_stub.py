"""A local upstream that speaks the OpenAI wire format, for proxy tests and benchmarks.

Why: tests must not call real providers; this stub behaves like OpenAI / vLLM for the parts the
proxy depends on: JSON bodies with `usage`, SSE streams (with the usage chunk only when
`stream_options.include_usage` is true, unless `usage_in_stream=False` mimics a server that
never sends one), error statuses, and pass-through paths such as GET /v1/models.

Knobs come from the request's `model`: `fail-<status>` answers that HTTP error;
`max_tokens` sets the number of streamed content chunks.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 7
CACHED_TOKENS = 2


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
