"""Time the analytics views over a synthetic lake of N cost records (default 10M).

Prints generation/write time, lake size, and the median of 3 runs of `dependency_share()` and
`cost_per_operation()` (and the other views) through the public Python API (polars out).
Target: < 1 s each at 10M rows. Usage: python -m bench.bench_queries [--rows 100000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.settings import LakeSettings, Settings
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range

CHUNK = 1_000_000
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def build_lake(root: Path, rows: int, days: int) -> float:
    lake = open_lake(str(root))
    started = time.perf_counter()
    written = 0
    for index in range(0, rows, CHUNK):
        n = min(CHUNK, rows - index)
        # time-ordered chunks, like a stream: each flush covers a few hours, not the whole week
        start = START + dt.timedelta(days=days) * (index / rows)
        data = sample.costs(n, seed=index // CHUNK, start=start, days=days * n / rows)
        write_range(lake, "costs", data, "costpipe.costs.v1", index // CHUNK % 8,
                    index, index + n - 1)
        written += n
        print(f"\r  wrote {written:,}/{rows:,} rows", end="", flush=True)
    print()
    write_range(lake, "gpu_samples", sample.gpu_samples(200_000, days=days),
                "costpipe.gpu.v1", 0, 0, 0)
    return time.perf_counter() - started


def median_time(fn, repeat: int = 3) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = fn().height
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--lake", type=Path, help="reuse/keep this folder instead of a temp one")
    args = parser.parse_args()
    root = args.lake or Path(tempfile.mkdtemp(prefix="costpipe-bench-"))
    try:
        if not any(root.glob("costs/**/*.parquet")):
            print(f"generating {args.rows:,} cost records over {args.days} days in {root}")
            seconds = build_lake(root, args.rows, args.days)
            print(f"generate+write: {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s)")
        size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
        print(f"lake size: {size / 1e6:.0f} MB")
        con = analytics.connect(Settings(lake=LakeSettings(location=str(root))))
        count = con.execute("SELECT count(*) FROM costs").fetchall()[0][0]
        print(f"rows in costs view: {count:,}")
        for name, fn in (
            ("dependency_share", lambda: analytics.dependency_share(con)),
            ("cost_per_operation", lambda: analytics.cost_per_operation(con)),
            ("avoided_spend", lambda: analytics.avoided_spend(con)),
            ("breakeven", lambda: analytics.breakeven(con)),
        ):
            seconds, rows = median_time(fn)
            flag = "OK" if seconds < 1.0 else "over 1 s target"
            print(f"{name:>20}: median of 3 = {seconds:.3f} s ({rows} result rows) [{flag}]")
    finally:
        if args.lake is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
