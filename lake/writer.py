"""Atomic, deterministic Parquet writes into the Hive-partitioned lake.

Why this shape:
- A flush covers one (topic, partition, first offset, last offset) range; its rows are split by
  the hour of the table's time column and each hour gets one file named after the range, so a
  replay of the same range rewrites the same names instead of adding rows.
- Files are written in `<lake>/_staging/` under a `.tmp-` name ending in `.part` (outside every
  table tree and never matching `*.parquet`), fsynced, then renamed. A flush that spans several
  hours writes an intent file first, so a crash between renames is rolled forward on restart
  (`recover`) instead of leaving half a range visible.
- `durable_high_water` reads the last durable offset back from the file names: the sink skips
  what the lake already holds, which makes any replay (with any flush boundaries) add nothing.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from costpipe.core.metrics import LAKE_BYTES, LAKE_FILES, LAKE_ROWS
from costpipe.lake.layout import (
    STAGING_DIR,
    TMP_PREFIX,
    Lake,
    Table,
    bucket_partition,
    data_file_name,
    hour_buckets,
    parse_data_file_name,
    partition_dir,
    table,
)
from costpipe.schemas.codec import conform

MAINTENANCE_PREFIX = f"{TMP_PREFIX}maint-"  # never a sink prefix: those start with a table
ROW_GROUP_SIZE = 1_000_000  # large groups: DuckDB scans and prunes per row group
COMPRESSION = "zstd"


@dataclass(frozen=True)
class WrittenFile:
    path: str
    rows: int
    size: int = 0  # bytes


def _split_by_hour(data: pa.Table, spec: Table) -> list[tuple[str, int, pa.Table]]:
    """Vectorised: sort by hour bucket (then the table's cluster keys), slice at bucket changes.

    Returns (date, hour, rows).
    """
    buckets = hour_buckets(data, spec.time_column)
    keyed = data.select(list(spec.cluster_keys)).append_column("__hour", pa.array(buckets))
    order = pc.sort_indices(keyed, sort_keys=[("__hour", "ascending")]
                            + [(name, "ascending") for name in spec.cluster_keys])
    sorted_buckets = buckets[order.to_numpy()]
    data = data.take(order)
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
    ends = np.r_[starts[1:], len(sorted_buckets)]
    out = []
    for start, end in zip(starts, ends, strict=True):
        date, hour = bucket_partition(int(sorted_buckets[start]))
        out.append((date, hour, data.slice(int(start), int(end - start))))
    return out


def cluster_sorted(data: pa.Table, spec: Table) -> pa.Table:
    """Rows in the table's cluster order (stable, so equal keys keep their input order)."""
    if not spec.cluster_keys or data.num_rows == 0:
        return data
    order = pc.sort_indices(data.select(list(spec.cluster_keys)),
                            sort_keys=[(name, "ascending") for name in spec.cluster_keys])
    return data.take(order)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(lake: Lake, path: str, data: pa.Table) -> int:
    """Write `data` to `path` and make it durable before returning; returns its size."""
    if lake.is_local:
        with open(path, "wb") as handle:
            pq.write_table(data, handle, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
            handle.flush()
            os.fsync(handle.fileno())
            return handle.tell()
    # object stores: the object becomes visible only when the upload completes
    with lake.fs.open_output_stream(path) as stream:
        pq.write_table(data, stream, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
        return int(stream.tell())


def _write_text_durable(lake: Lake, path: str, text: str) -> None:
    if lake.is_local:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    else:
        with lake.fs.open_output_stream(path) as stream:
            stream.write(text.encode())


def _move(lake: Lake, source: str, target: str) -> None:
    lake.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    if lake.is_local:
        os.replace(source, target)  # atomic on POSIX; overwrites a replayed file in place
        _fsync_dir(target.rsplit("/", 1)[0])
    else:
        lake.fs.move(source, target)


def _staging_prefix(table_name: str, topic: str, partition: int) -> str:
    return f"{TMP_PREFIX}{table_name}--{topic}-p{partition}-"


def write_range(
    lake: Lake,
    table_name: str,
    data: pa.Table | pa.RecordBatch,
    topic: str,
    partition: int,
    first_offset: int,
    last_offset: int,
) -> list[WrittenFile]:
    """Durably write the rows of one offset range; returns the final files (one per hour)."""
    spec = table(table_name)
    rows = conform(data, spec.schema)
    if rows.num_rows == 0:
        return []
    name = data_file_name(topic, partition, first_offset, last_offset)
    staging = lake.path(STAGING_DIR)
    lake.fs.create_dir(staging, recursive=True)
    moves: list[tuple[str, str, int, int]] = []
    for date, hour, part in _split_by_hour(rows, spec):
        prefix = _staging_prefix(table_name, topic, partition)
        tmp = f"{staging}/{prefix}{date}-{hour:02d}-{name}.part"
        size = _write_durable(lake, tmp, part)
        moves.append((tmp, lake.path(partition_dir(table_name, date, hour), name),
                      part.num_rows, size))
    intent = f"{staging}/{_staging_prefix(table_name, topic, partition)}{name}.intent"
    if len(moves) > 1:
        _write_text_durable(lake, intent, json.dumps([[src, dst] for src, dst, _, _ in moves]))
    for src, dst, _, _ in moves:
        _move(lake, src, dst)
    if len(moves) > 1:
        lake.fs.delete_file(intent)
    written = [WrittenFile(dst, n, size) for _, dst, n, size in moves]
    LAKE_FILES.labels(table_name).inc(len(written))
    LAKE_BYTES.labels(table_name).inc(sum(f.size for f in written))
    LAKE_ROWS.labels(table_name).inc(rows.num_rows)
    return written


def write_file(lake: Lake, folder: str, name: str, data: pa.Table, staging_tag: str
               ) -> WrittenFile:
    """Write one whole file into `folder` (inside the lake) atomically: durable in staging
    first, then one rename (or one completed upload). For maintenance (compaction, rollups);
    `staging_tag` keeps its staging names apart from the sink's, which `recover` owns."""
    staging = lake.path(STAGING_DIR)
    lake.fs.create_dir(staging, recursive=True)
    tmp = f"{staging}/{MAINTENANCE_PREFIX}{staging_tag}-{uuid.uuid4().hex}-{name}.part"
    size = _write_durable(lake, tmp, data)
    target = f"{folder}/{name}"
    _move(lake, tmp, target)
    return WrittenFile(target, data.num_rows, size)


def sweep_maintenance_staging(lake: Lake, older_than: float, now: float) -> int:
    """Delete staging files a killed compaction or rollup left (older than `older_than` s)."""
    staging = lake.path(STAGING_DIR)
    deleted = 0
    for info in lake.fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True)):
        if not info.base_name.startswith(MAINTENANCE_PREFIX):
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else now
        if now - mtime >= older_than:
            try:
                lake.fs.delete_file(info.path)
                deleted += 1
            except FileNotFoundError:
                pass
    return deleted


def recover(lake: Lake, table_name: str, topic: str, partition: int) -> None:
    """Before consuming a partition: finish interrupted multi-file flushes, drop torn writes.

    Only this (table, topic, partition)'s staging files are touched, so workers that own other
    partitions of the same lake are never disturbed. A staging file without an intent was never
    acknowledged to Kafka, so deleting it loses nothing: the offsets are consumed again.
    """
    staging = lake.path(STAGING_DIR)
    prefix = _staging_prefix(table_name, topic, partition)
    infos = lake.fs.get_file_info(pafs.FileSelector(staging, allow_not_found=True))
    mine = [i for i in infos if i.base_name.startswith(prefix)]
    for info in (i for i in mine if i.base_name.endswith(".intent")):
        with lake.fs.open_input_stream(info.path) as stream:
            pairs = json.loads(stream.read().decode())
        for src, dst in pairs:
            if lake.fs.get_file_info(src).type == pafs.FileType.File:
                _move(lake, src, dst)
        lake.fs.delete_file(info.path)
    for info in mine:
        if info.base_name.endswith(".part") and lake.fs.get_file_info(info.path).type == (
            pafs.FileType.File
        ):
            lake.fs.delete_file(info.path)


def durable_high_water(lake: Lake, table_name: str, topic: str, partition: int) -> int:
    """Last source offset the lake already holds for (topic, partition); -1 when none."""
    selector = pafs.FileSelector(lake.path(table_name), recursive=True, allow_not_found=True)
    high = -1
    for info in lake.fs.get_file_info(selector):
        parsed = parse_data_file_name(info.base_name)
        if parsed and parsed[0] == topic and parsed[1] == partition:
            high = max(high, parsed[3])
    return high

