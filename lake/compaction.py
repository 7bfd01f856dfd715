"""Compaction: the sink's small files of a closed hour become one sorted file per stream.

Why per (hour folder, topic, partition): the merged file keeps the sink's naming
(`<topic>-p<partition>-<first>-<last>.parquet`, the whole range it covers), so everything that
reads offsets from names keeps working unchanged: the sink's durable high-water mark, its
de-duplication index, replays. A folder ends with one file per Kafka partition that wrote into
that hour. Atomic for readers (lake/files.py): the merged file appears in one rename or one
completed upload and from then on supersedes the files it covers; those are deleted once the
merged file is `grace_seconds` old. A SIGKILL at any point leaves either the old files only,
or the merged file plus superseded files every reader ignores; the next run finishes the job.
Two maintainers compacting the same hour write the same name with the same rows.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from costpipe.lake.files import DataFile, list_files, read_files, split_live
from costpipe.lake.layout import TABLES, Lake, data_file_name, table
from costpipe.lake.writer import cluster_sorted, sweep_maintenance_staging, write_file


@dataclass
class CompactionStats:
    files_before: int = 0
    files_after: int = 0  # live files once this run's merges are in
    merged_streams: int = 0
    deleted: int = 0  # superseded files removed after their grace


def _hour_end(folder: str) -> dt.datetime | None:
    try:
        date = folder.split("date=")[1][:10]
        hour = int(folder.split("hour=")[1][:2])
    except (IndexError, ValueError):
        return None
    return (dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
            + dt.timedelta(hours=hour + 1))


def _merge(lake: Lake, table_name: str, files: list[DataFile]) -> None:
    spec = table(table_name)
    data = read_files(lake, table_name, [f.path for f in files])
    first, last = min(f.first for f in files), max(f.last for f in files)
    name = data_file_name(files[0].topic, files[0].partition, first, last)
    write_file(lake, files[0].folder, name, cluster_sorted(data, spec),
               staging_tag=f"compact-{table_name}")


def compact_table(lake: Lake, table_name: str, closed_before: dt.datetime,
                  grace_seconds: float = 600.0,
                  progress: Callable[[str, int, int], None] | None = None) -> CompactionStats:
    """Merge the live files of each closed (hour, topic, partition) that has more than one;
    delete superseded files whose replacement is older than `grace_seconds` (wall clock: file
    times are; `now` only matters to the caller's `closed_before`)."""
    now = time.time()
    files = list_files(lake, lake.path(table_name))
    live, superseded = split_live(files)
    stats = CompactionStats(files_before=len(live), files_after=len(live))
    streams: dict[tuple[str, str, int], list[DataFile]] = defaultdict(list)
    for file in live:
        streams[file.stream].append(file)
    todo = [group for group in streams.values() if len(group) > 1
            and (end := _hour_end(group[0].folder)) is not None and end <= closed_before]
    for index, group in enumerate(todo):
        try:
            _merge(lake, table_name, group)
        except FileNotFoundError:
            continue  # another maintainer merged this stream meanwhile; its result stands
        stats.merged_streams += 1
        stats.files_after -= len(group) - 1
        if grace_seconds <= 0:  # nobody to wait for: outside readers see one copy at once
            stats.deleted += _delete(lake, group)
        if progress:
            progress(table_name, index + 1, len(todo))
    for old in superseded:
        cover = next((f for f in live if old.within(f)), None)
        if cover is None or now - cover.mtime < grace_seconds:
            continue
        stats.deleted += _delete(lake, [old])
    return stats


def _delete(lake: Lake, files: list[DataFile]) -> int:
    deleted = 0
    for file in files:
        try:
            lake.fs.delete_file(file.path)
            deleted += 1
        except FileNotFoundError:
            pass  # another maintainer was first
    return deleted


def compact(lake: Lake, closed_before: dt.datetime, grace_seconds: float = 600.0,
            progress: Callable[[str, int, int], None] | None = None
            ) -> dict[str, CompactionStats]:
    """Compact every table; staging files a killed run left are swept after an hour."""
    out = {name: compact_table(lake, name, closed_before, grace_seconds, progress=progress)
           for name in TABLES}
    sweep_maintenance_staging(lake, older_than=max(grace_seconds, 3600.0), now=time.time())
    return out
