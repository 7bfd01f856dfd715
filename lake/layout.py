"""The one home for lake table names, their schemas and paths.

Why: the sink, the DuckDB views, the export and the report must agree on where a table lives and
how a partition folder is spelled; keeping it here means one edit if the layout ever changes.
Layout: `<location>/<table>/date=YYYY-MM-DD/hour=HH/<topic>-p<partition>-<first>-<last>.parquet`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from costpipe.core.settings import LakeSettings
from costpipe.schemas.records import ALERT, COST_RECORD, GPU_SAMPLE, WINDOW_AGGREGATE

STAGING_DIR: Final = "_staging"
EXPORT_DIR: Final = "_exports"
TMP_PREFIX: Final = ".tmp-"


@dataclass(frozen=True)
class Table:
    name: str
    schema: pa.Schema
    time_column: str  # decides the date=/hour= partition of a row
    sort_keys: tuple[str, ...]  # order inside compacted export files
    # a row's identity: the sink writes a key at most once (lake.dedup), so views need no
    # de-duplication; empty = no identity (every row is kept)
    unique_key: tuple[str, ...] = ()
    # row order inside each sink file: grouping columns first, so Parquet's dictionary and
    # run-length encodings shrink them and scans group faster (cost_per_operation over 10M
    # rows: 1.06 s unsorted vs 0.69 s sorted, bench/RESULTS.md)
    cluster_keys: tuple[str, ...] = ()


TABLES: Final[dict[str, Table]] = {
    t.name: t
    for t in (
        Table("costs", COST_RECORD, "timestamp", ("timestamp", "operation", "provider", "model"),
              ("record_id", "record_type"),
              ("record_type", "provider_kind", "operation", "provider", "model", "team")),
        # a sample sent twice (a replay) is the same (gpu_uuid, timestamp): written once
        Table("gpu_samples", GPU_SAMPLE, "timestamp", ("timestamp", "host", "gpu_uuid"),
              ("gpu_uuid", "timestamp")),
        Table("windows", WINDOW_AGGREGATE, "window_start",
              ("window_start", "operation", "provider", "model"),
              ("window_start", "operation", "provider_kind", "provider", "model", "revision")),
        # an alert re-emitted after a crash or a rebalance has the same id: written once
        Table("alerts", ALERT, "timestamp", ("timestamp", "alert_id"), ("alert_id",)),
    )
}

Key = tuple[str, str, int]  # (table, topic, partition): what one sink buffer and its files cover

_NAME = re.compile(
    r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})\.parquet$"
)


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown lake table {name!r}; expected one of {sorted(TABLES)}") from None


def data_file_name(topic: str, partition: int, first_offset: int, last_offset: int) -> str:
    """Deterministic: a replay of the same offsets produces the same name (overwrite, no dup)."""
    return f"{topic}-p{partition}-{first_offset:020d}-{last_offset:020d}.parquet"


def parse_data_file_name(name: str) -> tuple[str, int, int, int] | None:
    match = _NAME.match(name)
    if not match:
        return None
    return match["topic"], int(match["partition"]), int(match["first"]), int(match["last"])


def partition_dir(table_name: str, date: str, hour: int) -> str:
    return f"{table_name}/date={date}/hour={hour:02d}"


HOUR_US: Final = 3_600_000_000


def time_buckets(data: pa.Table, time_column: str, width_us: int) -> np.ndarray:
    """Per row, floor(time / width) in whole widths since the epoch (UTC)."""
    micros = pc.cast(pc.cast(data[time_column], pa.timestamp("us", tz="UTC")), pa.int64())
    return np.floor_divide(micros.to_numpy(zero_copy_only=False), width_us)


def hour_buckets(data: pa.Table, time_column: str) -> np.ndarray:
    """Per row, the hour partition it lands in, as whole hours since the epoch (UTC)."""
    return time_buckets(data, time_column, HOUR_US)


def bucket_partition(bucket: int) -> tuple[str, int]:
    """(date, hour) of an hour bucket from `hour_buckets`."""
    date, clock = str(np.datetime64(int(bucket) * HOUR_US, "us")).split("T")
    return date, int(clock[:2])


@dataclass(frozen=True)
class Lake:
    """A lake root on some pyarrow filesystem.

    `uri` names the root for people and for DuckDB's read_parquet on a local lake; a remote
    lake is read through `fs` (costpipe.analytics), never by DuckDB's own network code.
    """

    fs: pafs.FileSystem
    root: str  # path inside `fs`, no trailing slash
    uri: str  # absolute local path, or scheme://... (no credentials, no query)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def glob(self, table_name: str) -> str:
        return f"{self.uri}/{table_name}/**/*.parquet"

    def has_files(self, table_name: str) -> bool:
        """Whether any committed data file exists (staging names never end in .parquet)."""
        selector = pafs.FileSelector(self.path(table_name), recursive=True, allow_not_found=True)
        return any(
            info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
            for info in self.fs.get_file_info(selector)
        )


def s3_filesystem(lake_settings: LakeSettings | None = None, bucket: str | None = None
                  ) -> pafs.S3FileSystem:
    """The S3 filesystem the `lake.s3_*` settings describe.

    Unset keys fall back to the AWS default chain (`AWS_*` variables, ~/.aws, instance role);
    without an endpoint or a region the bucket's region is asked of AWS, as pyarrow's
    `FileSystem.from_uri` does.
    """
    options = lake_settings or LakeSettings()
    kwargs: dict[str, Any] = {}
    if options.s3_endpoint is not None:
        scheme, _, host = options.s3_endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme)
    region = options.s3_region
    if region is None and options.s3_endpoint is None and bucket:
        region = pafs.resolve_s3_region(bucket)
    if region is not None:
        kwargs["region"] = region
    if options.s3_access_key_id is not None:
        kwargs.update(access_key=options.s3_access_key_id,
                      secret_key=options.s3_secret_access_key)
    return pafs.S3FileSystem(**kwargs)


def open_lake(location: str, lake_settings: LakeSettings | None = None) -> Lake:
    """A local folder, `s3://bucket/prefix`, or any other pyarrow filesystem URL (file://,
    gs://, hdfs://...). An s3:// lake's endpoint, region and keys come from `lake_settings`
    (the `lake.s3_*` settings), never from the URL."""
    if location.startswith("s3://"):
        root = location[len("s3://"):].strip("/")
        bucket = root.split("/", 1)[0]
        if not bucket or "?" in root or "@" in bucket:
            raise ValueError(f"lake location {location!r}: expected s3://bucket/prefix (the "
                             "endpoint, region and keys go in the lake.s3_* settings)")
        return Lake(s3_filesystem(lake_settings, bucket), root, f"s3://{root}")
    if "://" in location:
        fs, root = pafs.FileSystem.from_uri(location)
        root = root.rstrip("/")
        uri = location.rstrip("/")
        if isinstance(fs, pafs.LocalFileSystem):
            uri = root
        return Lake(fs, root, uri)
    root_path = Path(location).expanduser().resolve()
    return Lake(pafs.LocalFileSystem(), root_path.as_posix(), root_path.as_posix())
