"""Throughput of the stream processors' work per batch on one core: costing (pricing, shadow
price, GPU allocation) + stage-1 partials + stage-2 merge, Arrow batches of 1,000 events.

Measures the processing path the Faust agents run per message, without Kafka (the broker and
Faust overheads, ~300 µs per message, are in docs/decisions/2026-11-25-arrow-envelopes.md).
Prints events/s.

    .venv/bin/python -m bench.bench_streams [--events 200000]
"""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.settings import Settings
from costpipe.schemas.codec import conform
from costpipe.schemas.records import COST_RECORD
from costpipe.streams.allocation.allocator import GpuAllocator
from costpipe.streams.costing import cost_records
from costpipe.streams.windows import WindowMerger, partials
from tests.streams_support.workload import make_workload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    settings = Settings.model_validate({"topics": {"partitions": 1}})
    per_second = 500
    work = make_workload(settings, seconds=args.events // per_second, per_second=per_second,
                         batch_size=1000)
    events = sum(b.num_rows for b in work.requests)
    allocator = GpuAllocator(settings, {})
    merger = WindowMerger(settings, {})
    samples = iter(work.samples)
    started = time.perf_counter()
    for offset, batch in enumerate(work.requests):
        external, pending = cost_records(batch, settings, 0, offset)
        wm = pc.max(batch.column("timestamp").cast(pa.int64())).as_py()
        merger.apply(partials(external, 60), "requests:0", offset, wm)
        allocator.add_requests(pending, f"requests:0:{offset}")
        allocator.note_requests(wm, "requests:0")
        for _ in range(2):
            smp = next(samples, None)
            if smp is not None:
                allocator.add_samples(smp, f"gpu:0:{offset}")
        closed = allocator.close_ready()
        if closed.num_rows:
            merger.apply(partials(conform(closed, COST_RECORD), 60), "gpuwork:0", offset, None)
    elapsed = time.perf_counter() - started
    print(f"streams processing: {events:,} events in {elapsed:.2f} s = "
          f"{events / elapsed:,.0f} events/s (batches of 1,000, one core, no Kafka)")


if __name__ == "__main__":
    main()
