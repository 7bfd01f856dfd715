"""Added latency of the metering proxy at 200 concurrent streaming requests.

Runs the OpenAI-wire stub and the proxy in their own processes, then fires rounds of
CONCURRENCY streaming chat requests alternately straight at the stub and through the proxy,
and prints p50/p99 of end-to-end stream time and of time to first chunk for both, plus the
difference (the proxy's added latency; target p99 <= 2 ms).

    .venv/bin/python bench/bench_proxy.py [--rounds 10] [--concurrency 200] [--kafka] [--uvloop]

The stub streams 16 tokens at 50 tokens/s per stream (20 chunks, ~0.4 s). On a contended
machine the percentiles are dominated by CPU queueing; `proxy_cpu_us_per_chunk` (CPU the proxy
process spent per forwarded chunk) is the steadier figure.

`--kafka` makes the proxy send its events through the real producer (KAFKA_BOOTSTRAP_SERVERS
or settings); without it events go to a counting sink so only the HTTP path is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import process_cpu_s  # noqa: E402
from tests.openai_stub import StubUpstream, free_port  # noqa: E402

CHUNK_DELAY_S = 0.02  # 50 tokens/s per stream, a typical served-model rate
BODY = {"model": "gpt-4o", "stream": True, "max_tokens": 16,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "benchmark"}]}


class CountingSink:
    def __init__(self) -> None:
        self.events = 0

    def emit(self, event: Any) -> None:
        self.events += 1

    def emit_batch(self, batch: Any) -> None:
        self.events += batch.num_rows


def serve(role: str, port: int, upstream: str, kafka: bool, use_uvloop: bool) -> None:
    from aiohttp import web

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    if role == "stub":
        web.run_app(StubUpstream(chunk_delay_s=CHUNK_DELAY_S).app(), host="127.0.0.1", port=port,
                    access_log=None, print=None)
        return
    from collectors.proxy import Proxy, ProxyConfig
    from costpipe.settings import load_settings

    settings = load_settings()
    sink: Any = CountingSink()
    if kafka:
        from collectors.producer import BatchingProducer

        sink = BatchingProducer(settings, f"bench.proxy.{os.getpid()}.v1", metrics=False,
                                spool_dir=Path(settings.state_dir) / f"bench-spool-{os.getpid()}")
    proxy = Proxy(settings, ProxyConfig(upstream=upstream + "/v1", provider="openai"), sink)
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    web.run_app(proxy.app(), host="127.0.0.1", port=port, access_log=None, print=None)
    if os.environ.get("BENCH_PROFILE"):
        profiler.disable()
        profiler.dump_stats(os.environ["BENCH_PROFILE"])


async def _one(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    async with session.post(url, json=BODY) as reply:
        async for _ in reply.content.iter_any():
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return (end - start) * 1000, ((first or end) - start) * 1000


async def _wait_up(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.post(url, json={**BODY, "stream": False}) as reply:
                    await reply.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit(f"server at {url} did not come up")


async def measure(direct: str, proxied: str, rounds: int, concurrency: int
                  ) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy": []}
    await _wait_up(direct)
    await _wait_up(proxied)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_no in range(rounds + 1):  # round 0 warms connection pools up
            for name, url in (("direct", direct), ("proxy", proxied)):
                got = await asyncio.gather(*(_one(session, url) for _ in range(concurrency)))
                if round_no:
                    results[name].extend(got)
    return results


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--kafka", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="serve both sides on uvloop")
    parser.add_argument("--serve", choices=["stub", "proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.kafka, args.uvloop)
        return
    stub_port, proxy_port = free_port(), free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    me = [sys.executable, __file__, *(["--uvloop"] if args.uvloop else [])]
    procs = [
        subprocess.Popen([*me, "--serve", "stub", "--port", str(stub_port)]),
        subprocess.Popen([*me, "--serve", "proxy", "--port", str(proxy_port),
                          "--upstream", stub_url, *(["--kafka"] if args.kafka else [])]),
    ]
    try:
        cpu_before = [process_cpu_s(p.pid) for p in procs]
        results = asyncio.run(measure(stub_url + "/v1/chat/completions",
                                      f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                                      args.rounds, args.concurrency))
        cpu = [process_cpu_s(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    figures: dict[str, Any] = {"concurrency": args.concurrency,
                               "requests_each": len(results["direct"]),
                               "sink": "kafka" if args.kafka else "counting",
                               "loop": "uvloop" if args.uvloop else "asyncio",
                               "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    chunks = BODY["max_tokens"] + 4  # role, tokens, finish, usage, [DONE]
    proxied = len(results["proxy"]) + args.concurrency  # + warm-up round
    figures["proxy_cpu_us_per_request"] = round(cpu[1] / proxied * 1e6, 1)
    figures["proxy_cpu_us_per_chunk"] = round(cpu[1] / proxied / chunks * 1e6, 1)
    figures["stub_cpu_us_per_request"] = round(cpu[0] / (2 * proxied) * 1e6, 1)
    for metric, index in (("stream_ms", 0), ("ttft_ms", 1)):
        for name in ("direct", "proxy"):
            values = [r[index] for r in results[name]]
            figures[f"{name}_{metric}_p50"] = round(_pct(values, 0.5), 3)
            figures[f"{name}_{metric}_p99"] = round(_pct(values, 0.99), 3)
        for q in ("p50", "p99"):
            figures[f"added_{metric}_{q}"] = round(
                figures[f"proxy_{metric}_{q}"] - figures[f"direct_{metric}_{q}"], 3)
    print(json.dumps(figures, indent=2))
    ok = figures["added_stream_ms_p99"] <= 2.0
    print(f"added p99 (stream) = {figures['added_stream_ms_p99']} ms "
          f"-> {'meets' if ok else 'MISSES'} the 2 ms target")


if __name__ == "__main__":
    main()
