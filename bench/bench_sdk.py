"""SDK caller overhead per tracked call (target <= 10 us on the caller's thread).

Measures `with track(...) as t: t.usage(...)` on the caller's thread with the real producer
behind it (events are queued; the sender thread encodes and ships them to Kafka). Run:
    .venv/bin/python -m bench.bench_sdk [calls]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid

from costpipe.collectors import sdk
from costpipe.collectors.producer import BatchingProducer
from costpipe.core.settings import load_settings


def main(calls: int = 200_000) -> None:
    settings = load_settings(environ={**__import__("os").environ,
                                      "COSTPIPE_STATE_DIR": tempfile.mkdtemp()})
    topic = f"bench.sdk.{uuid.uuid4().hex[:8]}.v1"
    producer = BatchingProducer(settings, topic, metrics=False)
    sdk.configure(settings, producer, tags={"team": "bench"})
    rounds, cpu_rounds = [], []
    per_round = calls // 10
    for _ in range(10):
        started, cpu_started = time.perf_counter(), time.thread_time()
        for _ in range(per_round):
            with sdk.track(operation="code_completion", provider="openai", model="gpt-4o") as t:
                t.usage(input_tokens=1200, output_tokens=40, cache_read_tokens=800)
        rounds.append((time.perf_counter() - started) / per_round * 1e6)
        cpu_rounds.append((time.thread_time() - cpu_started) / per_round * 1e6)
    empty = time.perf_counter()
    for _ in range(per_round):
        pass
    loop_us = (time.perf_counter() - empty) / per_round * 1e6
    flush_started = time.perf_counter()
    producer.close(timeout=120)
    flush_s = time.perf_counter() - flush_started
    stats = producer.stats
    print(f"tracked calls: {per_round * 10:,}")
    print(f"caller-thread CPU per tracked call: median {statistics.median(cpu_rounds):.2f} us "
          f"(best round {min(cpu_rounds):.2f} us)")
    print(f"wall time per tracked call incl. GIL sharing with the sender thread: "
          f"median {statistics.median(rounds):.2f} us, "
          f"best round {min(rounds):.2f} us, worst round {max(rounds):.2f} us "
          f"(empty loop {loop_us:.3f} us)")
    print(f"delivered to Kafka: sent={stats['sent']:,} spooled={stats['spooled']:,} "
          f"failed={stats['failed']} (drain after the loop: {flush_s:.2f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calls", nargs="?", type=int, default=200_000, help="tracked calls")
    main(parser.parse_args().calls)
