"""Small shared helpers of the reliability suite: lake totals read straight with DuckDB."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb

from costpipe import analytics


def scaled(env: str, default: int) -> int:
    """An event count the CI default keeps small; `env` (e.g. for a soak) may raise it."""
    return int(os.environ.get(env, default))


@dataclass(frozen=True)
class LakeCosts:
    rows: int
    distinct_ids: int
    input_tokens: int
    output_tokens: int
    cost: Decimal


def lake_costs(root: Path, record_type: str = "request") -> LakeCosts:
    """Totals of the analytics `costs` view over the lake (what every query and report sees)."""
    con = analytics.connect(location=str(root))
    row = con.execute(
        "SELECT count(*), count(DISTINCT record_id), coalesce(sum(input_tokens), 0), "
        "coalesce(sum(output_tokens), 0), coalesce(sum(cost), 0) "
        "FROM costs WHERE record_type = ?", [record_type]).fetchall()[0]
    con.close()
    return LakeCosts(int(row[0]), int(row[1]), int(row[2]), int(row[3]), Decimal(row[4]))


def lake_raw_rows(root: Path) -> int:
    """Rows in the costs Parquet files themselves (duplicates from replays included)."""
    if not any((root / "costs").rglob("*.parquet")):
        return 0
    return int(duckdb.sql(f"SELECT count(*) FROM read_parquet('{root}/costs/**/*.parquet')")
               .fetchall()[0][0])


def lake_raw_duplicates(root: Path) -> int:
    """Rows in the costs Parquet files whose (record_id, record_type) another row already has."""
    if not any((root / "costs").rglob("*.parquet")):
        return 0
    return int(duckdb.sql(
        "SELECT count(*) - count(DISTINCT (record_id, record_type)) "
        f"FROM read_parquet('{root}/costs/**/*.parquet')").fetchall()[0][0])


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
