"""Nightly export: compact one day of the lake into a few large sorted files plus a manifest.

Why deterministic: finance tooling diffs exports and re-runs them; the rows are read from the
day's partition files in sorted path order and totally ordered (table sort keys, then every
other column), Parquet is written with fixed options, and the manifest holds no wall-clock
time, so exporting the same day twice gives byte-identical files and manifests.

`focus` writes FinOps FOCUS 1.x columns, one row per (hour, provider, model, operation,
record type). Cost is not split by token type: the ledger prices a request as a whole (cache
and contract discounts interact), so a per-token-type split would make BilledCost inexact.
Token counts per type are kept as x_ columns and ConsumedQuantity is input + output tokens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from costpipe.lake.files import live_files, read_files
from costpipe.lake.layout import EXPORT_DIR, TABLES, TMP_PREFIX, Lake, partition_dir
from costpipe.lake.writer import COMPRESSION, ROW_GROUP_SIZE

ROWS_PER_FILE = 5_000_000
Format = Literal["parquet", "focus"]
MONEY_SUMS = {"costs": ("cost", "list_cost", "shadow_cost"), "windows": ("cost", "shadow_cost"),
              "focus": ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")}

FOCUS_SQL = """
SELECT
    CAST(cost AS DECIMAL(38, 12)) AS BilledCost,
    CAST(cost AS DECIMAL(38, 12)) AS EffectiveCost,
    CAST(list_cost AS DECIMAL(38, 12)) AS ListCost,
    CAST(cost AS DECIMAL(38, 12)) AS ContractedCost,
    'USD' AS BillingCurrency,
    CAST(date_trunc('month', hour_start) AS TIMESTAMPTZ) AS BillingPeriodStart,
    CAST(date_trunc('month', hour_start) + INTERVAL 1 MONTH AS TIMESTAMPTZ) AS BillingPeriodEnd,
    hour_start AS ChargePeriodStart,
    hour_start + INTERVAL 1 HOUR AS ChargePeriodEnd,
    'Usage' AS ChargeCategory,
    CASE WHEN record_type = 'idle' THEN 'Idle reserved GPU time for own models'
         ELSE operation || ' on ' || model END AS ChargeDescription,
    'AI and Machine Learning' AS ServiceCategory,
    CASE WHEN provider_kind = 'internal' THEN 'Self-hosted model inference'
         ELSE provider || ' API' END AS ServiceName,
    CASE WHEN provider_kind = 'internal' THEN 'Self-hosted' ELSE provider END AS ProviderName,
    provider AS PublisherName,
    CASE WHEN provider_kind = 'internal' THEN 'Internal' ELSE provider END AS InvoiceIssuerName,
    CAST(tokens AS DECIMAL(38, 0)) AS ConsumedQuantity,  -- FOCUS: decimal quantity
    'Tokens' AS ConsumedUnit,
    provider AS x_Provider,
    provider_kind AS x_ProviderKind,
    model AS x_Model,
    operation AS x_Operation,
    'input+output' AS x_TokenType,
    record_type AS x_RecordType,
    requests AS x_Requests,
    input_tokens AS x_InputTokens,
    output_tokens AS x_OutputTokens,
    cache_read_tokens AS x_CacheReadTokens,
    cache_write_tokens AS x_CacheWriteTokens,
    CAST(shadow_cost AS DECIMAL(38, 12)) AS x_ShadowCost
FROM (
    SELECT
        time_bucket(INTERVAL 1 HOUR, "timestamp") AS hour_start,
        provider, provider_kind, model, operation, record_type,
        count(*) FILTER (WHERE record_type = 'request') AS requests,
        sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
        sum(cache_read_tokens)::BIGINT AS cache_read_tokens,
        sum(cache_write_tokens)::BIGINT AS cache_write_tokens,
        sum(input_tokens + output_tokens)::BIGINT AS tokens,
        sum(cost) AS cost, sum(coalesce(list_cost, cost)) AS list_cost,
        coalesce(sum(shadow_cost), 0) AS shadow_cost
    FROM day_rows
    GROUP BY ALL
)
ORDER BY ChargePeriodStart, x_Provider, x_Model, x_Operation, x_RecordType
"""


@dataclass(frozen=True)
class ExportResult:
    out_dir: str
    manifest: dict[str, Any]


def _day_files(lake: Lake, table_name: str, day: dt.date) -> list[str]:
    """The day's live files: after a compaction, the merged ones and not what they replaced."""
    return [f.path for f in live_files(lake, table_name, f"date={day.isoformat()}")]


def _read_day(lake: Lake, table_name: str, day: dt.date) -> pa.Table:
    return read_files(lake, table_name, _day_files(lake, table_name, day))


def _sorted(data: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Total order: the table's sort keys, then every other column (ties stay deterministic)."""
    order = [*keys, *(c for c in data.column_names if c not in keys)]
    con = duckdb.connect()
    con.register("t", data)
    columns = ", ".join(f'"{c}"' for c in order)
    result = con.sql(f"SELECT * FROM t ORDER BY {columns}").to_arrow_table()
    return result.cast(data.schema)


def _focus(data: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("day_rows", data)
    return con.sql(FOCUS_SQL).to_arrow_table()


@dataclass(frozen=True)
class _Target:
    """Where one export lands: a local folder (fsynced) or a folder on the lake's filesystem."""

    fs: pafs.FileSystem
    path: str  # inside `fs`
    shown: str  # for people: a local path or the lake's scheme://... URL

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def prepare(self) -> None:
        """Create the folder and drop an earlier export's data files: a re-export replaces,
        never mixes with, an earlier one."""
        if self.local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        else:
            self.fs.create_dir(self.path, recursive=True)
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet"):
                self.fs.delete_file(info.path)

    def put(self, name: str, payload: bytes) -> None:
        """Write under a temporary name, then rename: a reader never sees half a file."""
        tmp, final = f"{self.path}/{TMP_PREFIX}{name}", f"{self.path}/{name}"
        if self.local:
            with open(tmp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        else:  # an object appears whole when its upload completes; the move keeps one path
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(payload)
            self.fs.move(tmp, final)


def _target(lake: Lake, day: dt.date, fmt: Format, out: str | None) -> _Target:
    if out is not None:
        folder = Path(out).expanduser()
        return _Target(pafs.LocalFileSystem(), folder.resolve().as_posix(), str(folder))
    parts = (EXPORT_DIR, f"date={day.isoformat()}", fmt)
    shown = lake.path(*parts) if lake.is_local else "/".join([lake.uri, *parts])
    return _Target(lake.fs, lake.path(*parts), shown)


def _write_files(data: pa.Table, target: _Target, stem: str) -> list[dict[str, Any]]:
    files = []
    chunks = max(1, -(-data.num_rows // ROWS_PER_FILE))
    for index in range(chunks):
        part = data.slice(index * ROWS_PER_FILE, ROWS_PER_FILE)
        name = f"{stem}-{index:05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(part, sink, compression=COMPRESSION, row_group_size=ROW_GROUP_SIZE)
        payload = sink.getvalue().to_pybytes()
        target.put(name, payload)
        files.append({"name": name, "rows": part.num_rows, "bytes": len(payload),
                      "sha256": hashlib.sha256(payload).hexdigest()})
    return files


def _money_sums(data: pa.Table, columns: tuple[str, ...]) -> dict[str, str]:
    import pyarrow.compute as pc

    sums = {}
    for column in columns:
        total = pc.sum(data[column]).as_py()
        sums[column] = format(total if total is not None else 0, "f")
    return sums


def export_day(lake: Lake, day: dt.date, fmt: Format = "parquet", out: str | None = None
               ) -> ExportResult:
    """Export one UTC day into `out` (a local folder) or, by default, into the lake itself at
    <lake>/_exports/date=D/<format>/, through the lake's filesystem (local or object storage)."""
    target = _target(lake, day, fmt, out)
    target.prepare()
    tables: dict[str, Any] = {}
    names = ["costs"] if fmt == "focus" else list(TABLES)
    for table_name in names:
        data = _read_day(lake, table_name, day)
        stem = table_name
        if fmt == "focus":
            data, stem = _focus(data), "focus"
        else:
            data = _sorted(data, TABLES[table_name].sort_keys)
        entry: dict[str, Any] = {"rows": data.num_rows,
                                 "files": _write_files(data, target, stem)}
        if stem in MONEY_SUMS:
            entry["sums"] = _money_sums(data, MONEY_SUMS[stem])
        tables[stem] = entry
    manifest = {
        "costpipe_export": 1,
        "date": day.isoformat(),
        "format": fmt,
        "source": {name: partition_dir(name, day.isoformat(), 0).rsplit("/", 1)[0]
                   for name in names},
        "tables": tables,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    target.put("manifest.json", text.encode("utf-8"))  # last: it names only complete files
    return ExportResult(target.shown, manifest)
