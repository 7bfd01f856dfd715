"""Added latency of the metering proxy at 200 concurrent streaming requests.

Runs an OpenAI-wire stub and the proxy (`collectors.proxy.serve`, as `costpipe proxy` runs it)
in their own processes, sends CONCURRENCY streaming chat requests at a time straight to the
stub and through the proxy, in alternating blocks, and prints p50/p99 of the whole stream's
time and of the time to the first chunk for both, plus the difference: the proxy's added
latency (target p99 <= 2 ms).

    .venv/bin/python -m bench.bench_proxy [--load steady|herd] [--harness lean|aiohttp]
        [--data-path http1|aiohttp] [--rounds 40] [--blocks 10] [--concurrency 200] [--kafka]

The stub streams 16 tokens at 50 tokens/s per stream (20 SSE events, ~0.4 s).
- `--load steady` (default): 200 streams are always in flight, each worker sending its next
  request when its stream ends, starts spread over one stream's duration (`wrk -c 200`).
- `--load herd`: all 200 requests leave in the same millisecond. The last one waits for the
  proxy to set up the 199 before it (~100 us of CPU each), so this measures a burst, not the
  added latency of a stream.
- `--harness lean` (default): stub and load generator on uvloop + httptools
  (bench/lean_http.py), so they do not take the CPU the proxy needs on this 2-core machine.
  `--harness aiohttp`: the test stub and an aiohttp client (herd only), as measured before
  2026-11-30; those use ~1.2 ms of CPU per request each.

`--data-path aiohttp` runs bench/peers/aiohttp_proxy.py instead of the real proxy: the same
proxy with an aiohttp web server and ClientSession as its HTTP layer, everything else alike, to
measure that choice (docs/decisions/2026-11-30-proxy-http-layer.md).

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
from typing import TYPE_CHECKING, Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]

from bench.common import process_cpu_s  # noqa: E402
from tests.openai_stub import StubUpstream, free_port  # noqa: E402

if TYPE_CHECKING:
    from costpipe.collectors.proxy import Proxy

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


def serve(role: str, port: int, upstream: str, kafka: bool, use_uvloop: bool,
          data_path: str) -> None:
    from aiohttp import web

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    if role == "lean-stub":
        import uvloop

        from bench.lean_http import serve_stub

        uvloop.run(serve_stub(port, CHUNK_DELAY_S, int(BODY["max_tokens"])))  # type: ignore[call-overload]
        return
    if role == "stub":
        web.run_app(StubUpstream(chunk_delay_s=CHUNK_DELAY_S).app(), host="127.0.0.1", port=port,
                    access_log=None, print=None)
        return
    from costpipe.collectors.proxy import Proxy, ProxyConfig
    from costpipe.collectors.proxy import serve as serve_proxy
    from costpipe.core.settings import load_settings

    settings = load_settings()
    sink: Any = CountingSink()
    if kafka:
        from costpipe.collectors.producer import BatchingProducer

        sink = BatchingProducer(settings, f"bench.proxy.{os.getpid()}.v1", metrics=False,
                                spool_dir=Path(settings.state_dir) / f"bench-spool-{os.getpid()}")
    proxy_class: type[Proxy] = Proxy
    if data_path == "aiohttp":
        from bench.peers.aiohttp_proxy import AiohttpProxy

        proxy_class = AiohttpProxy
    proxy = proxy_class(settings, ProxyConfig(upstream=upstream + "/v1", provider="openai"), sink)
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    if os.environ.get("BENCH_LAG"):
        _probe_lag(type(proxy))
    try:
        serve_proxy(proxy, "127.0.0.1", port)
    finally:
        if kafka:
            from bench.common import delete_topics

            sink.close()
            delete_topics(settings, f"bench.proxy.{os.getpid()}.")
    if os.environ.get("BENCH_PROFILE"):
        profiler.disable()
        profiler.dump_stats(os.environ["BENCH_PROFILE"])


def _probe_lag(proxy_class: type[Proxy]) -> None:
    """BENCH_LAG=1 diagnostics, printed when the proxy exits: how late a 1 ms timer fires in
    its loop (stalls) and how long the cyclic garbage collector ran, per generation."""
    import atexit
    import gc

    lags: list[float] = []
    pauses: list[tuple[int, float]] = []
    gc_started = [0.0]

    def tick(loop: asyncio.AbstractEventLoop, due: float) -> None:
        now = time.perf_counter()
        lags.append(now - due)
        loop.call_later(0.001, tick, loop, now + 0.001)

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            pauses.append((info["generation"], time.thread_time() - gc_started[0]))

    original = proxy_class.start

    async def start(self: Proxy, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        loop.call_later(0.001, tick, loop, time.perf_counter() + 0.001)
        return await original(self, host, port)

    def report() -> None:
        for gen in (0, 1, 2):
            took = sorted(t * 1e3 for g, t in pauses if g == gen)
            if took:
                print(f"gc gen{gen}: {len(took)} runs, max {took[-1]:.3f} ms, "
                      f"total {sum(took):.1f} ms", file=sys.stderr)
        ms = sorted(x * 1e3 for x in lags)
        n = len(ms)
        if n:
            print(f"loop lag ms: p50 {ms[n // 2]:.3f} p99 {ms[int(n * .99)]:.3f} "
                  f"p99.9 {ms[int(n * .999)]:.3f} max {ms[-1]:.3f}; "
                  f"{sum(1 for x in ms if x > 3)} over 3 ms, {sum(1 for x in ms if x > 5)} "
                  f"over 5 ms, of {n}", file=sys.stderr)

    proxy_class.start = start  # type: ignore[method-assign]
    gc.callbacks.append(on_gc)
    atexit.register(report)


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


async def measure(direct: str, proxied: str, rounds: int, concurrency: int, on_warm: Any
                  ) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy": []}
    await _wait_up(direct)
    await _wait_up(proxied)
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        for round_no in range(rounds + 1):  # round 0 warms connection pools up
            if round_no == 1:
                on_warm()
            for name, url in (("direct", direct), ("proxy", proxied)):
                got = await asyncio.gather(*(_one(session, url) for _ in range(concurrency)))
                if round_no:
                    results[name].extend(got)
    return results


async def measure_lean(stub_port: int, proxy_port: int, rounds: int, concurrency: int,
                       load: str, on_warm: Any, blocks: int, seed: int = 7
                       ) -> dict[str, list[tuple[float, float]]]:
    """`steady`: `concurrency` workers, each sending requests back to back, their starts spread
    at random over one stream's duration, so `concurrency` streams are in flight and arrive one
    by one (like `wrk -c 200`). `herd`: all `concurrency` requests sent in the same millisecond
    and awaited together. Direct and proxied blocks alternate `blocks` times, so drift on the
    machine falls on both sides alike; `rounds` requests per worker and side in all."""
    import random

    from bench.lean_http import ClientConnection, connect, request_bytes

    results: dict[str, list[tuple[float, float]]] = {"direct": [], "proxy": []}
    await _wait_up(f"http://127.0.0.1:{stub_port}/v1/chat/completions")
    await _wait_up(f"http://127.0.0.1:{proxy_port}/v1/chat/completions")
    targets = {"direct": stub_port, "proxy": proxy_port}
    conns = {name: await connect(port, concurrency) for name, port in targets.items()}
    raw = {name: request_bytes("127.0.0.1", port, BODY) for name, port in targets.items()}
    stream_s = (int(BODY["max_tokens"]) + 4) * CHUNK_DELAY_S  # type: ignore[call-overload]
    rng = random.Random(seed)

    async def worker(conn: ClientConnection, request: bytes, delay: float, count: int
                     ) -> list[tuple[float, float]]:
        await asyncio.sleep(delay)
        return [await conn.request(request) for _ in range(count)]

    async def block(name: str, count: int) -> list[tuple[float, float]]:
        if load == "herd":
            got: list[tuple[float, float]] = []
            for _ in range(count):
                got += await asyncio.gather(*(c.request(raw[name]) for c in conns[name]))
            return got
        per_worker = await asyncio.gather(*(
            worker(conn, raw[name], rng.uniform(0, stream_s), count) for conn in conns[name]))
        return [r for runs in per_worker for r in runs]

    for name in ("direct", "proxy"):  # warms the proxy's upstream pool up
        await block(name, 1)
    on_warm()
    per_block = max(1, rounds // blocks)
    for _ in range(blocks):
        for name in ("direct", "proxy"):
            results[name] += await block(name, per_block)
    return results


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40,
                        help="requests per worker and side (lean) or herds (aiohttp)")
    parser.add_argument("--blocks", type=int, default=10,
                        help="lean harness: direct and proxied blocks alternate this often")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--kafka", action="store_true")
    parser.add_argument("--uvloop", action="store_true",
                        help="aiohttp harness: serve the stub on uvloop too")
    parser.add_argument("--harness", choices=["lean", "aiohttp"], default="lean",
                        help="lean: uvloop/httptools stub and load generator (default); aiohttp:"
                             " tests/openai_stub.py and an aiohttp client, which use ~1.2 ms of"
                             " CPU per request each")
    parser.add_argument("--load", choices=["steady", "herd"], default="steady",
                        help="lean harness: steady = CONCURRENCY streams always in flight,"
                             " arriving one by one (default); herd = all CONCURRENCY requests"
                             " sent in the same millisecond, ROUNDS times")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="run the proxy on a CPU of its own and the stub and load generator"
                             " on the others, as when clients and model servers are other"
                             " machines (default on with 2+ CPUs)")
    parser.add_argument("--data-path", choices=["http1", "aiohttp"], default="http1",
                        help="http1: the real proxy (collectors/http_server.py, http_client.py;"
                             " default); aiohttp: bench/peers/aiohttp_proxy.py, the same proxy"
                             " on aiohttp's web server and ClientSession")
    parser.add_argument("--serve", choices=["stub", "lean-stub", "proxy"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.kafka, args.uvloop, args.data_path)
        return
    stub_port, proxy_port = free_port(), free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    me = [sys.executable, "-m", "bench.bench_proxy", *(["--uvloop"] if args.uvloop else [])]
    stub_role = "lean-stub" if args.harness == "lean" else "stub"
    procs = [
        subprocess.Popen([*me, "--serve", stub_role, "--port", str(stub_port)]),
        subprocess.Popen([*me, "--serve", "proxy", "--port", str(proxy_port),
                          "--upstream", stub_url, "--data-path", args.data_path,
                          *(["--kafka"] if args.kafka else [])]),
    ]
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) >= 2
    if pinned:  # the proxy gets the last CPU; stub and load generator share the others
        os.sched_setaffinity(procs[1].pid, cpus[-1:])
        os.sched_setaffinity(procs[0].pid, cpus[:-1])
        os.sched_setaffinity(0, cpus[:-1])
    try:
        cpu_before: list[float] = []

        def on_warm() -> None:  # CPU from here on: not start-up, not the warm-up round
            cpu_before[:] = [process_cpu_s(p.pid) for p in procs]

        if args.harness == "lean":
            import uvloop

            results = uvloop.run(measure_lean(stub_port, proxy_port, args.rounds,
                                              args.concurrency, args.load, on_warm,
                                              args.blocks))
        else:
            results = asyncio.run(measure(stub_url + "/v1/chat/completions",
                                          f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                                          args.rounds, args.concurrency, on_warm))
        cpu = [process_cpu_s(p.pid) - before for p, before in zip(procs, cpu_before, strict=True)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    figures: dict[str, Any] = {"concurrency": args.concurrency,
                               "requests_each": len(results["direct"]),
                               "sink": "kafka" if args.kafka else "counting",
                               "harness": args.harness, "data_path": args.data_path,
                               "pinned": pinned,
                               "load": args.load if args.harness == "lean" else "herd",
                               "stub_loop": "uvloop" if args.uvloop or args.harness == "lean"
                               else "asyncio", "proxy_loop": "uvloop",
                               "load_avg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    chunks = BODY["max_tokens"] + 4  # role, tokens, finish, usage, [DONE]
    proxied = len(results["proxy"])
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
