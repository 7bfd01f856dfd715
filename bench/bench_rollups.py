"""Query time over growing history with the lake's rollups, and files per day after compaction.

1. Builds one lake of the largest size at `--rate` requests/s (default 100/s = 360k rows an
   hour, so 300M rows are ~35 days), one Parquet file per hour as the sink's cluster order
   writes it, and the smaller lakes as its first hours (hard links: the same files). Each lake
   is maintained like the worker does (`lake.maintenance.maintain`: compaction, then hourly
   and daily rollups) with its last hour left open, so the views read rollups plus a raw tail.
2. Times `dependency_share` and `cost_per_operation` warm on one connection (`--repeat` runs
   each; the target must hold on every run), and once over raw rows only (`rollups=False`)
   where that is affordable, in the same run.
3. Streams `--stream-hours` of sink flushes (`--stream-partitions` partitions, one flush every
   `--flush-seconds`, the real `write_range`) and compacts them: files before and after.

Usage: python -m bench.bench_rollups [--sizes 10000000,100000000,300000000] [--keep DIR]
Prints one JSON object last (bench/run_all.py reads it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.settings import LakeSettings, Settings
from costpipe.lake.files import list_files, live_files
from costpipe.lake.layout import HOUR_US, data_file_name, open_lake, partition_dir, table
from costpipe.lake.maintenance import maintain
from costpipe.lake.writer import COMPRESSION, ROW_GROUP_SIZE, cluster_sorted, write_range

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TOPIC = "costpipe.costs.v1"
VARIANTS = 8
VIEWS = ("dependency_share", "cost_per_operation")


def _variants(rows_per_hour: int) -> list[pa.Table]:
    spec = table("costs")
    return [cluster_sorted(sample.costs(rows_per_hour, seed=seed, start=START, days=1 / 24),
                           spec) for seed in range(VARIANTS)]


def build_history(root: Path, hours: int, rows_per_hour: int) -> float:
    """One file per hour; hour h holds variant h % 8 with its timestamps moved by h hours."""
    started = time.perf_counter()
    variants = _variants(rows_per_hour)
    for hour in range(hours):
        base = variants[hour % VARIANTS]
        micros = pc.cast(base["timestamp"], pa.int64())
        shifted = pc.cast(pc.add(micros, hour * HOUR_US), base.schema.field("timestamp").type)
        data = base.set_column(base.schema.get_field_index("timestamp"), "timestamp", shifted)
        at = START + dt.timedelta(hours=hour)
        folder = root / partition_dir("costs", at.date().isoformat(), at.hour)
        folder.mkdir(parents=True, exist_ok=True)
        first = hour * rows_per_hour
        name = data_file_name(TOPIC, hour % 4, first, first + rows_per_hour - 1)
        pq.write_table(data, folder / name, compression=COMPRESSION,
                       row_group_size=ROW_GROUP_SIZE)
        print(f"\r  wrote hour {hour + 1}/{hours}", end="", flush=True)
    print()
    return time.perf_counter() - started


def link_prefix(source: Path, target: Path, hours: int) -> None:
    """A lake of the first `hours` hours of `source`, hard-linked (no copy)."""
    for hour in range(hours):
        at = START + dt.timedelta(hours=hour)
        rel = partition_dir("costs", at.date().isoformat(), at.hour)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for file in (source / rel).glob("*.parquet"):
            os.link(file, target / rel / file.name)


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def measure(root: Path, hours: int, repeat: int, raw: bool) -> dict[str, object]:
    lake = open_lake(str(root))
    end = START + dt.timedelta(hours=hours)
    options = LakeSettings(location=str(root), closed_after_seconds=0,
                           compaction_grace_seconds=0)
    started = time.perf_counter()
    result = maintain(lake, options, now=(end - dt.timedelta(hours=1)).timestamp())
    maintain_s = time.perf_counter() - started
    settings = Settings(lake=LakeSettings(location=str(root)))
    started = time.perf_counter()
    con = analytics.connect(settings)
    connect_s = time.perf_counter() - started
    out: dict[str, object] = {
        "hours": hours, "maintain_s": round(maintain_s, 2), "connect_s": round(connect_s, 3),
        "rollup_hours": result.rollups.hours_built, "rollup_days": result.rollups.days_built}
    for view in VIEWS:
        fn = getattr(analytics, view)
        fn(con)  # warm: file metadata and OS cache
        out[view] = [round(t, 4) for t in timed(lambda fn=fn: fn(con), repeat)]
    if raw:
        con_raw = analytics.connect(settings, rollups=False)
        for view in VIEWS:
            fn = getattr(analytics, view)
            out[f"{view}_raw"] = round(timed(lambda fn=fn: fn(con_raw), 1)[0], 3)
        same = all(getattr(analytics, v)(con).equals(getattr(analytics, v)(con_raw))
                   for v in VIEWS)
        out["same_as_raw"] = same
    return out


def streaming_day(root: Path, hours: int, partitions: int, flush_seconds: int,
                  rate: int) -> dict[str, object]:
    """`hours` of sink flushes through write_range, then one compaction of the closed hours."""
    lake = open_lake(str(root))
    flushes = hours * 3600 // flush_seconds
    rows = max(1, rate * flush_seconds // partitions)
    chunk = sample.costs(rows * VARIANTS, seed=99, start=START, days=1 / 24)
    started = time.perf_counter()
    for index in range(flushes):
        at_us = int(START.timestamp() * 1e6) + index * flush_seconds * 1_000_000
        for partition in range(partitions):
            part = chunk.slice(((index + partition) % VARIANTS) * rows, rows)
            micros = pc.cast(part["timestamp"], pa.int64())
            base = pc.min(micros).as_py()
            shifted = pc.add(pc.subtract(micros, base), at_us)
            part = part.set_column(part.schema.get_field_index("timestamp"), "timestamp",
                                   pc.cast(pc.min_element_wise(
                                       shifted, at_us + flush_seconds * 1_000_000 - 1),
                                       part.schema.field("timestamp").type))
            offset = index * rows
            write_range(lake, "costs", part, TOPIC, partition, offset, offset + rows - 1)
        if index % 200 == 0:
            print(f"\r  streamed {index + 1}/{flushes} flushes", end="", flush=True)
    print()
    write_s = time.perf_counter() - started
    before = len(live_files(lake, "costs"))
    options = LakeSettings(location=str(root), closed_after_seconds=0,
                           compaction_grace_seconds=0)
    end = (START + dt.timedelta(hours=hours)).timestamp()
    started = time.perf_counter()
    maintain(lake, options, now=end)
    compact_s = time.perf_counter() - started
    after_live = len(live_files(lake, "costs"))
    maintain(lake, options, now=end + 1)  # the next run deletes the replaced files
    on_disk = len(list_files(lake, lake.path("costs")))
    folders = hours
    return {"hours": hours, "partitions": partitions, "flush_seconds": flush_seconds,
            "write_s": round(write_s, 1), "files_before": before,
            "files_after": after_live, "files_on_disk_after_grace": on_disk,
            "files_per_hour_folder_before": before / folders,
            "files_per_hour_folder_after": after_live / folders,
            "files_per_day_before": before * 24 / hours,
            "files_per_day_after": after_live * 24 / hours,
            "compact_s": round(compact_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000000,100000000,300000000")
    parser.add_argument("--rate", type=int, default=100, help="requests per second")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--raw-up-to", type=int, default=100_000_000,
                        help="also time raw scans on lakes up to this many rows")
    parser.add_argument("--stream-hours", type=int, default=24)
    parser.add_argument("--stream-partitions", type=int, default=2)
    parser.add_argument("--flush-seconds", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="build/keep lakes here instead of a temp dir")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rows_per_hour = args.rate * 3600
    work = args.keep or Path(tempfile.mkdtemp(prefix="costpipe-bench-rollups-"))
    results: dict[str, object] = {"rate_per_s": args.rate, "rows_per_hour": rows_per_hour}
    try:
        hours = {size: -(-size // rows_per_hour) for size in sizes}
        full = work / "history"
        if not any(full.glob("costs/**/*.parquet")):
            print(f"writing {hours[sizes[-1]]} hours ({sizes[-1]:,} rows) in {full}")
            results["build_s"] = round(build_history(full, hours[sizes[-1]], rows_per_hour), 1)
        for size in sizes:
            root = work / f"lake-{size}"
            shutil.rmtree(root, ignore_errors=True)
            link_prefix(full, root, hours[size])
            print(f"{size:,} rows ({hours[size]} hours):", flush=True)
            figures = measure(root, hours[size], args.repeat, raw=size <= args.raw_up_to)
            for view in VIEWS:
                runs = figures[view]
                assert isinstance(runs, list)
                raw = figures.get(f"{view}_raw")
                print(f"  {view:>20}: max {max(runs):.3f} s, median "
                      f"{statistics.median(runs):.3f} s over {len(runs)} warm runs"
                      + (f"; raw scan {raw:.3f} s" if raw is not None else ""))
            print(f"  maintenance {figures['maintain_s']} s, connect {figures['connect_s']} s"
                  + (f", same as raw: {figures['same_as_raw']}" if "same_as_raw" in figures
                     else ""))
            results[str(size)] = figures
            shutil.rmtree(root, ignore_errors=True)
        small, large = str(sizes[0]), str(sizes[-1])
        for view in VIEWS:
            growth = max(results[large][view]) / max(results[small][view])  # type: ignore[index]
            results[f"{view}_growth"] = round(growth, 2)
            print(f"{view}: worst run grows {growth:.2f}x from {sizes[0]:,} to {sizes[-1]:,}")
        print(f"streaming {args.stream_hours} h, {args.stream_partitions} partitions, a flush "
              f"every {args.flush_seconds} s:")
        stream = streaming_day(work / "stream", args.stream_hours, args.stream_partitions,
                               args.flush_seconds, args.rate)
        print(f"  {stream['files_before']} files -> {stream['files_after']} after compaction "
              f"({stream['files_per_hour_folder_after']:.1f} per hour folder, "
              f"{stream['files_per_day_after']:.0f} per day); compaction "
              f"{stream['compact_s']} s")
        results["streaming"] = stream
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "stream", ignore_errors=True)
    print(json.dumps(results))  # everything, for the record
    print(json.dumps(flat(results, sizes)))  # last: the figures bench/run_all.py reads


def label(size: int) -> str:
    return f"{size // 1_000_000}m" if size >= 1_000_000 else str(size)


def flat(results: dict[str, object], sizes: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for size in sizes:
        figures = results[str(size)]
        assert isinstance(figures, dict)
        for view in VIEWS:
            out[f"{view}_{label(size)}_max_s"] = max(figures[view])
            if f"{view}_raw" in figures:
                out[f"{view}_{label(size)}_raw_s"] = figures[f"{view}_raw"]
        out[f"connect_{label(size)}_s"] = figures["connect_s"]
        out[f"maintain_{label(size)}_s"] = figures["maintain_s"]
    for view in VIEWS:
        out[f"{view}_growth"] = results[f"{view}_growth"]  # type: ignore[assignment]
    stream = results["streaming"]
    assert isinstance(stream, dict)
    for key in ("files_per_day_before", "files_per_day_after", "files_per_hour_folder_after",
                "compact_s"):
        out[key] = stream[key]
    return out


if __name__ == "__main__":
    main()
