"""Simulator throughput into Kafka (target >= 200,000 events/s on this machine).

Runs `simulate(..., as_fast_as_possible=True)` through the shared producers to fresh topics
and reports events/s including the final flush (every event acknowledged by the broker). Run:
    .venv/bin/python -m bench.bench_simulator [rate] [s]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid

from costpipe.collectors.simulator import simulate
from costpipe.core.settings import load_settings


def main(rate: float = 100_000.0, duration_s: int = 20) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(environ={
        **os.environ, "COSTPIPE_STATE_DIR": tempfile.mkdtemp(),
        "COSTPIPE_TOPICS__REQUESTS": f"bench.requests.{suffix}.v1",
        "COSTPIPE_TOPICS__GPU": f"bench.gpu.{suffix}.v1",
    })
    started = time.perf_counter()
    summary = simulate(settings, rate=rate, duration_s=duration_s, seed=1, gpus=16,
                       as_fast_as_possible=True, flush_timeout_s=300)
    elapsed = time.perf_counter() - started
    sent = sum(s["sent"] for s in summary.producer_stats.values())
    print(f"events: {summary.events:,} ({summary.requests:,} requests, "
          f"{summary.gpu_samples:,} GPU samples); acknowledged by Kafka: {sent:,}")
    print(f"throughput into Kafka (incl. final flush): {summary.events / elapsed:,.0f} events/s "
          f"over {elapsed:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rate", nargs="?", type=float, default=100_000.0,
                        help="simulated requests per second")
    parser.add_argument("seconds", nargs="?", type=int, default=20, help="simulated seconds")
    args = parser.parse_args()
    main(args.rate, args.seconds)
