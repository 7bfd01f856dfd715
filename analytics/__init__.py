"""DuckDB over the Parquet lake: views, macros and helpers that return polars DataFrames.

Why an in-memory DuckDB: the lake is the source of truth; every connection builds views from
the SQL files in `analytics/sql/` (applied in name order), so Trino/Spark users can read the
same files and the SQL is reviewed as SQL, not as Python strings.

A local lake is read with DuckDB's read_parquet; a remote one (s3://...) through pyarrow
datasets on the lake's own filesystem, so DuckDB never needs its httpfs extension. Connections
never install or load an extension on their own: nothing is downloaded at run time.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from importlib import resources
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from costpipe.core.settings import Settings, get_settings
from costpipe.lake import rollup
from costpipe.lake.files import DataFile, live_files
from costpipe.lake.layout import TABLES, Lake, open_lake
from costpipe.schemas import sketch

__all__ = [
    "ReadOnlyError",
    "avoided_spend",
    "check_read_only",
    "connect",
    "cost_per_operation",
    "dependency_share",
    "summary",
]

_READ_ONLY_TYPES = {"SELECT", "EXPLAIN", "PRAGMA", "SET", "VARIABLE_SET"}
_DUCK_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.binary(): "BLOB",
}


# raw tail up to this size (about 2M cost records) is aggregated once per connection; a bigger
# one (a lake no worker maintains) stays lazy, so `connect` never scans a large lake by itself
MATERIALIZE_TAIL_BYTES = 64 * 1024 * 1024
_PARTITION_SCHEMA = pa.schema([("date", pa.date32()), ("hour", pa.int32())])  # Hive, UTC
# no surprise downloads: DuckDB would otherwise fetch and load a known extension (httpfs, ...)
# the first time a query needs one
_NO_DOWNLOADS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


class ReadOnlyError(ValueError):
    """A statement that would change something, in read-only mode."""


def _duck_type(type_: pa.DataType) -> str:
    if pa.types.is_decimal(type_):
        return f"DECIMAL({type_.precision}, {type_.scale})"
    if pa.types.is_timestamp(type_):
        return "TIMESTAMPTZ" if type_.tz else "TIMESTAMP"
    return _DUCK_TYPES[type_]


def _empty(table_name: str) -> str:
    schema = TABLES[table_name].schema
    columns = [f'CAST(NULL AS {_duck_type(f.type)}) AS "{f.name}"' for f in schema]
    columns += ['CAST(NULL AS DATE) AS "date"', 'CAST(NULL AS INTEGER) AS "hour"']
    return f"(SELECT {', '.join(columns)} WHERE false)"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _local_files(paths: list[str]) -> str:
    return (f"read_parquet({_sql_list(paths)}, hive_partitioning = true, union_by_name = true, "
            "hive_types = {'date': DATE, 'hour': INTEGER})")


def _source(con: duckdb.DuckDBPyConnection, lake: Lake, table_name: str,
            files: list[DataFile]) -> str:
    """A table's live files (lake/files.py) as one relation with the whole schema.

    Local: read_parquet over the listed files, unioned by name with the empty typed relation,
    so a column no file has yet (files written before it was added) reads as NULL.
    Remote (s3://...): a pyarrow dataset on the lake's filesystem registered in `con`, since
    DuckDB's read_parquet('s3://...') needs the httpfs extension, which DuckDB downloads at run
    time (docs/decisions/2026-12-01-object-storage-lake.md); the table's schema makes missing
    columns NULL there too. Either way the list is a snapshot taken at `connect`: files
    committed later are seen by the next connection, and files compaction replaces are kept
    for `lake.compaction_grace_seconds`, so a connection's snapshot stays readable that long.
    """
    if not files:
        return _empty(table_name)
    if lake.is_local:
        return f"({_empty(table_name)} UNION ALL BY NAME SELECT * FROM " \
               f"{_local_files([f.path for f in files])})"
    schema = TABLES[table_name].schema
    for part in _PARTITION_SCHEMA:
        schema = schema.append(part)
    dataset = ds.dataset([f.path for f in files], filesystem=lake.fs, format="parquet",
                         schema=schema,
                         partitioning=ds.partitioning(_PARTITION_SCHEMA, flavor="hive"),
                         partition_base_dir=lake.path(table_name))
    name = f"_lake_{table_name}_{uuid.uuid4().hex[:12]}"
    con.register(name, dataset)
    return f'"{name}"'


def _rollup_source(con: duckdb.DuckDBPyConnection, lake: Lake, plan: rollup.RollupPlan,
                   kind: str) -> str:
    """Rollup rows: the files of rolled-up periods plus the raw tail aggregated the same way."""
    build = rollup.costs_sql if kind == "costs" else rollup.latency_sql
    parts = [build(_empty("costs"))]  # typed, even with nothing to read
    files = plan.costs if kind == "costs" else plan.latency
    if files:
        if lake.is_local:
            parts.append(f"SELECT * FROM read_parquet({_sql_list(files)})")
        else:
            name = f"_rollup_files_{kind}"
            con.register(name, ds.dataset(files, filesystem=lake.fs, format="parquet"))
            parts.append(f'SELECT * FROM "{name}"')
    if plan.tail:
        parts.append(build(_source(con, lake, "costs", plan.tail)))
    return "(" + " UNION ALL BY NAME ".join(f"({p})" for p in parts) + ")"


def sql_files() -> list[tuple[str, str]]:
    folder = resources.files("costpipe.analytics") / "sql"
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text(encoding="utf-8")) for name in names]


def _double(value: object) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"  # type: ignore[arg-type]


def _setting_placeholders(settings: Settings) -> dict[str, str]:
    """`{{name}}` in the SQL files -> the setting's value as a SQL literal."""
    movable = ", ".join("'" + op.replace("'", "''") + "'"
                        for op in settings.planning.movable_operations)
    return {
        "{{target_internal_share}}": _double(settings.target_internal_share),
        "{{gpu_bucket_seconds}}": _double(settings.gpu.bucket_seconds),
        "{{gpu_dollars_per_gpu_hour}}": _double(settings.gpu.dollars_per_gpu_hour),
        "{{gpu_dollars_per_kwh}}": _double(settings.gpu.dollars_per_kwh),
        "{{gpu_pue}}": _double(settings.gpu.pue),
        "{{planning_target_utilization}}": _double(settings.planning.target_utilization),
        "{{planning_gpu_hours_per_month}}": _double(settings.planning.gpu_hours_per_month),
        "{{planning_movable_operations}}": f"CAST([{movable}] AS VARCHAR[])",
        "{{shadow_provider}}": "'" + settings.providers.shadow_provider.replace("'", "''") + "'",
    }


def connect(
    settings: Settings | None = None, read_only: bool = True, location: str | None = None,
    rollups: bool = True,
) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with the lake views and macros.

    `read_only` is enforced by `check_read_only` in the `sql` command and `query`; the views
    themselves never write. Pass `location` to point at another lake than settings.lake.
    `rollups=False` makes the aggregate views scan raw rows only (the reference the rollups
    are tested against; same answers, slower).
    """
    settings = settings or get_settings()
    lake = open_lake(location or settings.lake.location, settings.lake)
    con = duckdb.connect(":memory:", config=_NO_DOWNLOADS)
    con.execute("SET TimeZone = 'UTC'")
    # every view over a table binds its file list again, and without the cache each binding
    # re-reads every file's footer (docs/decisions/2026-12-02-rollups-and-compaction.md)
    con.execute("SET parquet_metadata_cache = true")
    plan = rollup.plan(lake, use_rollups=rollups)
    replacements = {"{{source:costs}}": _source(con, lake, "costs", plan.raw)}
    for name in TABLES:
        if name != "costs":
            replacements[f"{{{{source:{name}}}}}"] = _source(con, lake, name,
                                                             live_files(lake, name))
    for kind in ("costs", "latency"):
        relation = _rollup_source(con, lake, plan, kind)
        if sum(f.size for f in plan.tail) <= MATERIALIZE_TAIL_BYTES:
            # a maintained lake: rollups plus an hour or two of raw rows, aggregated once here
            # instead of in every query (a query then reads a few thousand rows)
            con.execute(f"CREATE TEMP TABLE _rollup_{kind} AS SELECT * FROM {relation}")
            relation = f"_rollup_{kind}"
        replacements[f"{{{{rollup:{kind}}}}}"] = relation
    replacements["{{sketch_value}}"] = sketch.SQL_VALUE
    replacements.update(_setting_placeholders(settings))
    for _name, text in sql_files():
        for placeholder, value in replacements.items():
            text = text.replace(placeholder, value)
        con.execute(text)
    return con


def check_read_only(sql: str) -> None:
    """Raise ReadOnlyError naming the first statement that is not a query."""
    for statement in duckdb.extract_statements(sql):
        kind = statement.type.name
        if kind not in _READ_ONLY_TYPES:
            first_words = " ".join(statement.query.split()[:3])
            raise ReadOnlyError(
                f"refusing {kind} statement '{first_words} ...' in read-only mode "
                "(add --write to allow changes)"
            )


def query(sql: str, con: duckdb.DuckDBPyConnection | None = None, write: bool = False
          ) -> pl.DataFrame:
    if not write:
        check_read_only(sql)
    con = con or connect()
    return con.sql(sql).pl()


def _view(name: str, con: duckdb.DuckDBPyConnection | None, order: str) -> pl.DataFrame:
    con = con or connect()
    return con.sql(f"SELECT * FROM {name} ORDER BY {order}").pl()


def dependency_share(con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    return _view("dependency_share", con, "day, operation, team")


def cost_per_operation(con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    return _view("cost_per_operation", con, "operation, provider_kind, provider, model")


def avoided_spend(con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    return _view("avoided_spend", con, "day, operation")


def breakeven(con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
    return _view("breakeven", con, "operation")


def summary(con: duckdb.DuckDBPyConnection | None = None) -> dict[str, Any]:
    """Headline numbers for the main job's printout; money as Decimal, shares as floats."""
    con = con or connect()
    row = con.execute(
        """
        SELECT
            count(*) FILTER (WHERE record_type = 'request') AS requests,
            coalesce(sum(cost), 0) AS total_cost,
            coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost,
            coalesce(sum(cost) FILTER (WHERE provider_kind = 'internal'
                                       AND record_type <> 'idle'), 0) AS own_direct_cost,
            coalesce(sum(cost) FILTER (WHERE record_type = 'idle'), 0) AS idle_cost,
            count(*) FILTER (WHERE record_type = 'request' AND provider_kind = 'external')
                / nullif(count(*) FILTER (WHERE record_type = 'request'), 0)
                AS external_share_requests,
            min("date") AS first_day, max("date") AS last_day
        FROM costs
        """
    ).fetchall()[0]
    assert row is not None
    keys = ["requests", "total_cost", "external_cost", "own_direct_cost", "idle_cost",
            "external_share_requests", "first_day", "last_day"]
    out = dict(zip(keys, row, strict=True))
    avoided = con.execute("SELECT coalesce(sum(avoided_spend), 0) FROM avoided_spend").fetchall()[0]
    out["avoided_spend"] = avoided[0] if avoided else Decimal(0)
    share = out["external_share_requests"]
    out["internal_share_requests"] = None if share is None else 1 - share
    target = con.execute("SELECT any_value(target_internal_share) FROM dependency_share")
    out["target_internal_share"] = target.fetchall()[0][0]
    return out
