"""Which data files of a table are live: the one listing every reader of the lake uses.

Why a rule instead of a manifest: compaction replaces the small files of one (hour, topic,
partition) with one file named after the whole offset range they cover. The replacement
appears in one atomic rename (local) or one completed upload (object storage), and from that
moment every file whose range lies inside a larger range of the same (hour folder, topic,
partition) is *superseded*: readers ignore it, so they never see both copies, and never a
partial state. The superseded files are deleted later (after a grace period, so a query that
listed them just before still finds them). The sink's ranges never nest (it skips offsets the
lake already holds), so only compaction creates nesting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from costpipe.lake.layout import Lake, parse_data_file_name, table
from costpipe.schemas.codec import conform


@dataclass(frozen=True)
class DataFile:
    path: str  # inside the lake's filesystem
    folder: str  # the partition folder (path without the file name)
    topic: str
    partition: int
    first: int
    last: int
    mtime: float = 0.0  # seconds since the epoch; 0 when the filesystem does not say
    size: int = 0  # bytes

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def stream(self) -> tuple[str, str, int]:
        return self.folder, self.topic, self.partition

    def within(self, other: DataFile) -> bool:
        """Whether `other` covers this file's range and is larger (so it replaced this one)."""
        return (self.stream == other.stream and other.first <= self.first
                and self.last <= other.last and (other.first, other.last) != (self.first,
                                                                              self.last))


def list_files(lake: Lake, base: str) -> list[DataFile]:
    """Every committed data file under `base` (a path inside the lake), live or not."""
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    out = []
    for info in lake.fs.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        parsed = parse_data_file_name(info.base_name)
        if parsed is None:
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        out.append(DataFile(info.path, info.path.rsplit("/", 1)[0], *parsed, mtime=mtime,
                            size=info.size or 0))
    return sorted(out, key=lambda f: f.path)


def split_live(files: list[DataFile]) -> tuple[list[DataFile], list[DataFile]]:
    """(live, superseded). Per stream, sorted by (first, -last): a file is superseded when an
    earlier-starting or same-starting larger file already reaches its last offset."""
    by_stream: dict[tuple[str, str, int], list[DataFile]] = defaultdict(list)
    for file in files:
        by_stream[file.stream].append(file)
    live, superseded = [], []
    for group in by_stream.values():
        group.sort(key=lambda f: (f.first, -f.last))
        reach = -1
        for file in group:
            if file.last <= reach:
                superseded.append(file)
            else:
                live.append(file)
                reach = file.last
    return sorted(live, key=lambda f: f.path), sorted(superseded, key=lambda f: f.path)


def live_files(lake: Lake, table_name: str, under: str | None = None) -> list[DataFile]:
    """The live data files of a table (optionally only under `under`, e.g. `date=...`)."""
    base = lake.path(table_name, under) if under else lake.path(table_name)
    return split_live(list_files(lake, base))[0]


def read_files(lake: Lake, table_name: str, paths: list[str]) -> pa.Table:
    """The rows of `paths` in the table's current schema (older files get its new columns)."""
    schema = table(table_name).schema
    parts = [conform(pq.read_table(path, filesystem=lake.fs), schema) for path in paths]
    return pa.concat_tables(parts) if parts else schema.empty_table()
