"""Exact hourly and daily rollups of the cost records, kept in the lake beside the raw rows.

Why: the views scanned every raw row on every query, so query time grew with history (3.7 s
and 6.6 s at 100M rows). A rollup holds one row per hour (or day) x operation x team x app x
provider_kind x provider x model x record_type with the sums the views need, and a latency
sketch per hour x operation x provider_kind x provider x model; the views read rollups for
periods that have one and raw rows only for the rest (the open tail).

Exact and never stale: a rollup file is named after a hash of the live raw file names it was
built from (`source_hash`). A period's rollup is used only while the period's live files are
exactly those; a late correction or a replay that adds a file to a rolled-up hour changes the
hash, so that hour is read raw again until the next maintenance run rebuilds its rollup (the
period is rebuilt, never patched with a delta row). Money sums are DECIMAL(38, 12) sums, the
same decimal values a raw scan gives; the raw rows are already de-duplicated by the sink, so
a re-emitted record is never counted twice. Latency quantiles come from the mergeable sketch
(`schemas.sketch`, 1 % relative error) whether the rows are raw or rolled up.

Layout: `_rollups/costs_hourly/date=D/hour=HH/{costs,latency}-<hash>.parquet` and
`_rollups/costs_daily/date=D/{costs,latency}-<hash>.parquet`; the `date`/`hour` values are
columns inside the files (hour NULL in daily rows).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from costpipe.lake.files import DataFile, live_files, read_files
from costpipe.lake.layout import Lake
from costpipe.lake.writer import write_file
from costpipe.schemas.records import COUNT_UNITS, SECONDS_UNITS
from costpipe.schemas.sketch import SQL_BUCKET

ROLLUP_DIR: Final = "_rollups"
HOURLY: Final = "costs_hourly"
DAILY: Final = "costs_daily"
GROUP: Final = ("operation", "team", "app", "provider_kind", "provider", "model",
                "record_type")
LATENCY_GROUP: Final = ("operation", "provider_kind", "provider", "model")
TOKENS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 *COUNT_UNITS)
MONEY: Final = ("cost", "list_cost", "shadow_cost")
_KINDS: Final = ("costs", "latency")
_FOLDER = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")
_ROLLUP_NAME = re.compile(r"^(costs|latency)-([0-9a-f]{16})\.parquet$")


def _quote(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def costs_sql(source: str) -> str:
    """Hourly rollup rows of raw cost records (`source` has the Hive `date` and `hour`)."""
    sums = [f'sum("{c}")::BIGINT AS "{c}"' for c in TOKENS]
    sums += [f'sum("{c}")::DOUBLE AS "{c}"' for c in SECONDS_UNITS]
    sums += [f'sum("{c}")::DECIMAL(38, 12) AS "{c}"' for c in MONEY]
    return (
        f'SELECT "date", "hour", {_quote(GROUP)}, count(*) AS "rows", '
        "count(*) FILTER (WHERE record_type = 'request') AS requests, "
        "count(*) FILTER (WHERE record_type = 'request' AND status <> 'ok') AS errors, "
        f"{', '.join(sums)} FROM {source} GROUP BY ALL")


def latency_sql(source: str) -> str:
    """Hourly latency sketch rows (bucket -> count) of raw cost records."""
    return (f'SELECT "date", "hour", {_quote(LATENCY_GROUP)}, {SQL_BUCKET} AS bucket, '
            f"count(*) AS n FROM {source} "
            "WHERE record_type <> 'idle' AND latency_ms IS NOT NULL GROUP BY ALL")


def merge_costs_sql(source: str, hour: str = '"hour"') -> str:
    """Rollup rows re-aggregated (to days with `hour` = 'NULL'); sums of sums stay exact."""
    sums = [f'sum("{c}")::BIGINT AS "{c}"' for c in ("rows", "requests", "errors", *TOKENS)]
    sums += [f'sum("{c}")::DOUBLE AS "{c}"' for c in SECONDS_UNITS]
    sums += [f'sum("{c}")::DECIMAL(38, 12) AS "{c}"' for c in MONEY]
    return (f'SELECT "date", CAST({hour} AS INTEGER) AS "hour", {_quote(GROUP)}, '
            f"{', '.join(sums)} FROM {source} GROUP BY ALL")


def merge_latency_sql(source: str, hour: str = '"hour"') -> str:
    return (f'SELECT "date", CAST({hour} AS INTEGER) AS "hour", {_quote(LATENCY_GROUP)}, '
            f"bucket, sum(n)::BIGINT AS n FROM {source} GROUP BY ALL")


def source_hash(names: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:16]


@dataclass
class _Period:
    """One hour folder of raw cost files, and what rollups exist for it."""

    date: str
    hour: int
    files: list[DataFile]
    rollups: dict[str, str] = field(default_factory=dict)  # kind -> path, matching hash only

    @property
    def hash(self) -> str:
        return source_hash([f.name for f in self.files])

    @property
    def rolled(self) -> bool:
        return all(kind in self.rollups for kind in _KINDS)

    def end(self) -> dt.datetime:
        start = dt.datetime.fromisoformat(self.date).replace(tzinfo=dt.UTC)
        return start + dt.timedelta(hours=self.hour + 1)


@dataclass
class RollupPlan:
    """What a reader reads: rollup files for covered periods, raw files for the rest."""

    costs: list[str] = field(default_factory=list)  # rollup files (daily, hourly)
    latency: list[str] = field(default_factory=list)
    tail: list[DataFile] = field(default_factory=list)  # raw files of periods not rolled up
    raw: list[DataFile] = field(default_factory=list)  # every live raw file
    stale: list[str] = field(default_factory=list)  # rollup files no period matches
    used: list[str] = field(default_factory=list)  # rollup files that match their period


def _rollup_files(lake: Lake, which: str) -> dict[str, dict[str, dict[str, str]]]:
    """folder key ('D' or 'D/HH') -> hash -> kind -> path."""
    base = lake.path(ROLLUP_DIR, which)
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for info in lake.fs.get_file_info(selector):
        match = _ROLLUP_NAME.match(info.base_name)
        if info.type != pafs.FileType.File or not match:
            continue
        folder = info.path[len(base) + 1:].rsplit("/", 1)[0]
        key = folder.replace("date=", "").replace("/hour=", "/")
        out[key][match[2]][match[1]] = info.path
    return out


def _day_hash(periods: list[_Period]) -> str:
    return source_hash([f"{p.hour:02d}:{p.hash}" for p in periods])


def plan(lake: Lake, use_rollups: bool = True) -> RollupPlan:
    """One listing of the raw files and of the rollups; rollups only where they match."""
    raw = live_files(lake, "costs")
    out = RollupPlan(raw=raw)
    days = _periods(raw)
    if not use_rollups:
        out.tail = raw
        return out
    hourly, daily = _rollup_files(lake, HOURLY), _rollup_files(lake, DAILY)
    used: set[str] = set()
    for date, periods in sorted(days.items()):
        whole_day = daily.get(date, {}).get(_day_hash(periods), {})
        day_rolled = all(kind in whole_day for kind in _KINDS)
        if day_rolled:
            out.costs.append(whole_day["costs"])
            out.latency.append(whole_day["latency"])
            used.update(whole_day.values())
        for period in periods:
            # matching hourly rollups are kept even under a daily one: a late file then
            # invalidates one hour, not the whole day
            found = hourly.get(f"{date}/{period.hour:02d}", {}).get(period.hash, {})
            complete = all(kind in found for kind in _KINDS)
            if complete:
                used.update(found.values())
            if day_rolled:
                continue
            if complete:
                out.costs.append(found["costs"])
                out.latency.append(found["latency"])
            else:
                out.tail.extend(period.files)
    every = [p for folders in (hourly, daily) for hashes in folders.values()
             for kinds in hashes.values() for p in kinds.values()]
    out.stale = sorted(set(every) - used)
    out.used = sorted(used)
    return out


def _periods(files: list[DataFile]) -> dict[str, list[_Period]]:
    by_folder: dict[str, list[DataFile]] = defaultdict(list)
    for file in files:
        by_folder[file.folder].append(file)
    days: dict[str, list[_Period]] = defaultdict(list)
    for folder, group in sorted(by_folder.items()):
        match = _FOLDER.search(folder)
        if match:
            days[match[1]].append(_Period(match[1], int(match[2]), group))
    return days


def _register(con: duckdb.DuckDBPyConnection, name: str, lake: Lake, paths: list[str]) -> str:
    """Small rollup files (an hour's or a day's groups), read with the lake's filesystem."""
    con.register(name, pa.concat_tables(pq.read_table(p, filesystem=lake.fs) for p in paths))
    return f'"{name}"'


def _raw_hour(lake: Lake, period: _Period) -> pa.Table:
    """The raw rows of one hour, with its `date` and `hour`, read with the lake's filesystem."""
    data = read_files(lake, "costs", [f.path for f in period.files])
    date = pa.scalar(dt.date.fromisoformat(period.date), pa.date32())
    data = data.append_column("date", pa.repeat(date, data.num_rows))
    return data.append_column("hour", pa.repeat(pa.scalar(period.hour, pa.int32()),
                                                data.num_rows))


def _write(lake: Lake, folder: str, kind: str, digest: str, data: pa.Table) -> None:
    write_file(lake, lake.path(ROLLUP_DIR, folder), f"{kind}-{digest}.parquet", data,
               staging_tag=f"rollup-{folder.replace('/', '-')}")


@dataclass
class RollupStats:
    hours_built: int = 0
    days_built: int = 0
    stale_deleted: int = 0


def build(lake: Lake, closed_before: dt.datetime, grace_seconds: float = 600.0,
          progress: Callable[[str, int, int], None] | None = None) -> RollupStats:
    """Roll up every hour (and day) that ended before `closed_before` and has no matching
    rollup; delete rollups no period matches any more once `grace_seconds` old."""
    stats = RollupStats()
    raw = live_files(lake, "costs")
    days = _periods(raw)
    hourly = _rollup_files(lake, HOURLY)
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    con.execute("SET TimeZone = 'UTC'")
    todo = [p for periods in days.values() for p in periods
            if p.end() <= closed_before
            and not all(k in hourly.get(f"{p.date}/{p.hour:02d}", {}).get(p.hash, {})
                        for k in _KINDS)]
    for index, period in enumerate(todo):
        data = _raw_hour(lake, period)
        con.register("raw_hour", data)
        folder = f"{HOURLY}/date={period.date}/hour={period.hour:02d}"
        _write(lake, folder, "costs", period.hash, con.sql(costs_sql("raw_hour")).to_arrow_table())
        _write(lake, folder, "latency", period.hash,
               con.sql(latency_sql("raw_hour")).to_arrow_table())
        con.unregister("raw_hour")
        stats.hours_built += 1
        if progress:
            progress("hours", index + 1, len(todo))
    if todo:
        hourly = _rollup_files(lake, HOURLY)
    daily = _rollup_files(lake, DAILY)
    for date, periods in sorted(days.items()):
        day_end = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
        digest = _day_hash(periods)
        if day_end > closed_before or all(k in daily.get(date, {}).get(digest, {})
                                          for k in _KINDS):
            continue
        found = [hourly.get(f"{date}/{p.hour:02d}", {}).get(p.hash, {}) for p in periods]
        if not all(all(k in f for k in _KINDS) for f in found):
            continue  # an hour could not be rolled up yet
        for kind, merge in (("costs", merge_costs_sql), ("latency", merge_latency_sql)):
            source = _register(con, f"day_{kind}", lake, [f[kind] for f in found])
            data = con.sql(merge(source, "NULL")).to_arrow_table()
            con.unregister(f"day_{kind}")
            _write(lake, f"{DAILY}/date={date}", kind, digest, data)
        stats.days_built += 1
    stats.stale_deleted = _delete_stale(lake, grace_seconds, time.time())
    return stats


def _delete_stale(lake: Lake, grace_seconds: float, now: float) -> int:
    """Delete a period's stale rollups once its current rollup is `grace_seconds` old: a
    connection made before the current one appeared may still read the stale one."""
    plan_now = plan(lake)
    current = {path.rsplit("/", 1)[0]: path for path in plan_now.used}
    deleted = 0
    for path in plan_now.stale:
        replacement = current.get(path.rsplit("/", 1)[0])
        if replacement is None:
            continue  # its period has no current rollup yet: readers may still use it
        info = lake.fs.get_file_info(replacement)
        if info.mtime is None or now - info.mtime.timestamp() < grace_seconds:
            continue
        try:
            lake.fs.delete_file(path)
            deleted += 1
        except FileNotFoundError:
            pass  # another maintainer deleted it first
    return deleted
