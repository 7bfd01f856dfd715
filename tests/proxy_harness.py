"""Stub upstream + metering proxy served from a background event loop, for tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import openai
import pyarrow as pa

from costpipe.collectors.proxy import Proxy, ProxyConfig
from costpipe.core.settings import Settings, load_settings
from tests.openai_stub import StubUpstream, free_port, start_site


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Mapping[str, Any]) -> None:
        self.events.append(dict(event))

    def emit_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.events.extend(batch.to_pylist())


class Servers:
    """Stub upstream + proxy on a private event loop in a background thread."""

    def __init__(self, stub: StubUpstream, sink: Any, settings: Settings | None = None,
                 **config: Any) -> None:
        self.stub, self.sink, self.config = stub, sink, config
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[Any] = []
        self.proxies: list[Proxy] = []

    def __enter__(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        runner, self.upstream_url = await start_site(self.stub.app())
        self.runners.append(runner)
        self.url = await self._start_proxy(self.upstream_url + "/v1")

    async def _start_proxy(self, upstream: str) -> str:
        settings = self.settings or load_settings(environ={
            "COSTPIPE_SERVERS__OPERATION_MAP": '{"emb-model": "search_embeddings"}',
            "COSTPIPE_PROVIDERS__INTERNAL": '["own-vllm"]',
        })
        config = ProxyConfig(upstream=upstream, **self.config)
        proxy = Proxy(settings, config, self.sink)
        port = free_port()
        await proxy.start("127.0.0.1", port)
        self.proxies.append(proxy)
        return f"http://127.0.0.1:{port}"

    def proxy_for(self, upstream: str) -> str:
        """Another proxy (same sink and options) in front of `upstream`; returns its URL."""
        return asyncio.run_coroutine_threadsafe(self._start_proxy(upstream), self.loop).result(10)

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            for proxy in self.proxies:
                await proxy.close()
            for runner in reversed(self.runners):
                await runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def client(self, **headers: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="sk-secret-key",
                             default_headers=headers, max_retries=0)
