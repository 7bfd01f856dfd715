"""OTLP receiver throughput in GenAI spans/s.

Two figures: the conversion path alone (protobuf parse -> rows -> validated Arrow batch, in
process) and end to end over HTTP (receiver in its own process, protobuf exports of
`--spans-per-request` spans posted by `--concurrency` clients).

    .venv/bin/python -m bench.bench_otlp [--requests 200] [--spans-per-request 500] [--kafka]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]

from tests.openai_stub import free_port  # noqa: E402
from tests.otlp_payloads import GENAI, export_request, span  # noqa: E402


class CountingSink:
    def __init__(self) -> None:
        self.rows = 0

    def emit(self, event: Any) -> None:
        self.rows += 1

    def emit_batch(self, batch: Any) -> None:
        self.rows += batch.num_rows


def _payload(spans: int) -> bytes:
    genai = [span({**GENAI, "gen_ai.usage.input_tokens": i}) for i in range(spans * 4 // 5)]
    other = [span({"http.method": "GET"}) for _ in range(spans - len(genai))]
    return export_request(genai + other).SerializeToString()


def in_process(spans: int, repeats: int) -> float:
    from costpipe.collectors.otlp import OtlpReceiver, parse_request
    from costpipe.core.settings import load_settings

    receiver = OtlpReceiver(load_settings(environ={}), CountingSink())
    body = _payload(spans)
    start = time.process_time()  # CPU time: steadier than wall time on a shared machine
    for _ in range(repeats):
        receiver.ingest(parse_request(body, "application/x-protobuf"))
    return spans * repeats / (time.process_time() - start)


def serve(port: int, kafka: bool) -> None:
    from aiohttp import web

    from costpipe.collectors.otlp import OtlpReceiver
    from costpipe.core.settings import load_settings

    settings = load_settings()
    sink: Any = CountingSink()
    if kafka:
        from costpipe.collectors.producer import BatchingProducer

        sink = BatchingProducer(settings, f"bench.otlp.{os.getpid()}.v1", metrics=False,
                                spool_dir=Path(settings.state_dir) / f"bench-spool-{os.getpid()}")
    web.run_app(OtlpReceiver(settings, sink).app(), host="127.0.0.1", port=port,
                access_log=None, print=None)


async def over_http(url: str, body: bytes, requests: int, concurrency: int) -> float:
    headers = {"Content-Type": "application/x-protobuf"}
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        queue = list(range(requests))

        async def worker() -> None:
            while queue:
                queue.pop()
                async with session.post(url, data=body, headers=headers) as reply:
                    assert reply.status == 200, reply.status
                    await reply.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--spans-per-request", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kafka", action="store_true")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.kafka)
        return
    figures: dict[str, Any] = {"spans_per_request": args.spans_per_request,
                               "genai_share": 0.8, "load_avg_1m": os.getloadavg()[0]}
    figures["in_process_spans_per_cpu_s"] = round(in_process(args.spans_per_request, 40))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_otlp", "--serve", str(port),
                             *(["--kafka"] if args.kafka else [])])
    try:
        seconds = asyncio.run(over_http(f"http://127.0.0.1:{port}/v1/traces",
                                        _payload(args.spans_per_request), args.requests,
                                        args.concurrency))
    finally:
        proc.terminate()
        proc.wait(10)
    figures["http_spans_per_s"] = round(args.requests * args.spans_per_request / seconds)
    figures["http_requests_per_s"] = round(args.requests / seconds, 1)
    figures["sink"] = "kafka" if args.kafka else "counting"
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
