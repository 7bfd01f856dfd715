"""Throughput of the Parquet sink core (`lake.sink.LakeSink`): rows/s it makes durable.

What the Faust lake agent does per costs message, without Kafka: buffer Arrow batches of 1,000
cost records, flush every `--flush-rows` (the settings' default), i.e. de-duplicate against the
lake (`lake.dedup`), sort by hour and cluster keys, write zstd Parquet, fsync, rename. Two runs:
fresh records, and the same records again at new offsets (what a killed costing worker
re-emits: every row goes through the exact duplicate check and nothing is written).
Compare with the costing agent's rate (bench_streams.py, bench_e2e.py): the sink must keep up.

    .venv/bin/python -m bench.bench_lake_sink [--rows 2000000] [--flush-rows 200000]
Last line: JSON with both rates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import emit
from costpipe.analytics import sample
from costpipe.core.settings import Settings
from costpipe.lake.layout import open_lake
from costpipe.lake.sink import LakeSink

TOPIC = "costpipe.costs.v1"


def feed(sink: LakeSink, batches: list, first_offset: int) -> float:
    started = time.perf_counter()
    key = ("costs", TOPIC, 0)
    for offset, batch in enumerate(batches, start=first_offset):
        sink.add(key, offset, batch)
        sink.flush_due()
    sink.flush_all()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--flush-rows", type=int, default=Settings().lake.flush_rows)
    args = parser.parse_args()
    # two hours of traffic, in event-time order like a stream
    data = sample.costs(args.rows, days=2 / 24).sort_by("timestamp")
    batches = data.to_batches(1_000)
    root = Path(tempfile.mkdtemp(prefix="costpipe-sink-bench-"))
    try:
        sink = LakeSink(open_lake(str(root)), args.flush_rows, flush_seconds=10**9)
        fresh = feed(sink, batches, 0)
        replay = feed(sink, batches, len(batches))  # re-emitted: new offsets, same keys
        files = list(root.rglob("*.parquet"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"lake sink: {args.rows:,} fresh rows in {fresh:.2f} s = {args.rows / fresh:,.0f} "
          f"rows/s; the same rows re-emitted: {args.rows / replay:,.0f} rows/s "
          f"(all dropped as duplicates); {len(files)} files; flush every {args.flush_rows:,} "
          "rows", file=sys.stderr)
    emit({"fresh_rows_per_s": args.rows / fresh, "reemitted_rows_per_s": args.rows / replay,
          "files": len(files)})


if __name__ == "__main__":
    main()
