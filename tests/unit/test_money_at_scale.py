"""Money stays exact far past int64 pico-dollars ($9.2M): windows, SQL views, exports, FOCUS.

One day of cost records whose amounts sum to about $2 x 10^12 (a pico-dollar in every amount so
any rounding or float shows) goes through the window stages and into a lake; every total that
a user reads back must equal the exact sum.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.money import MONEY
from costpipe.core.settings import Settings
from costpipe.lake.export import export_day
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range
from costpipe.streams.windows import WindowMerger, partials

DAY = dt.date(2026, 11, 1)
AMOUNT = Decimal("999999999.999999999999")  # just under $1e9, down to the pico-dollar
ROWS = 2_000
EXPECTED = AMOUNT * ROWS  # 1,999,999,999,999.999999998000: > $10^12


def _costs() -> pa.Table:
    costs = sample.costs(ROWS, days=0.9, idle_share=0.0,
                         start=dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    index = costs.schema.get_field_index("cost")
    return costs.set_column(index, costs.schema.field("cost"),
                            pa.array([AMOUNT] * costs.num_rows, MONEY))


def test_windows_sum_beyond_int64_exactly() -> None:
    settings = Settings.model_validate({"windows": {"seconds": 3600,
                                                    "allowed_lateness_seconds": 0},
                                        "topics": {"partitions": 1}})
    merger = WindowMerger(settings, {})
    costs = _costs()
    closed = [merger.apply(partials(costs.slice(i, 500), 3600), "requests:0", i, None)
              for i in range(0, costs.num_rows, 500)]
    far = int(dt.datetime(2026, 11, 3, tzinfo=dt.UTC).timestamp() * 1_000_000)
    closed.append(merger.apply(partials(costs.slice(0, 0), 3600), "requests:0", 10_000, far))
    windows = pa.concat_tables([t for t in closed if t.num_rows])
    assert pc.sum(windows.column("requests")).as_py() == ROWS
    assert sum(windows.column("cost").to_pylist(), Decimal(0)) == EXPECTED


def test_sql_views_exports_and_focus_beyond_int64_exactly(tmp_path: Path) -> None:
    lake = open_lake(str(tmp_path / "lake"))
    write_range(lake, "costs", _costs(), "costpipe.costs.v1", 0, 0, ROWS - 1)
    con = analytics.connect(location=str(tmp_path / "lake"))
    try:
        assert con.execute("SELECT sum(cost) FROM costs").fetchone()[0] == EXPECTED
        assert con.execute("SELECT sum(cost) FROM cost_daily").fetchone()[0] == EXPECTED
        assert con.execute("SELECT sum(cost) FROM dependency_share").fetchone()[0] == EXPECTED
        assert con.execute("SELECT sum(direct_cost) FROM cost_per_operation"
                           ).fetchone()[0] == EXPECTED
    finally:
        con.close()
    parquet = export_day(lake, DAY, "parquet", str(tmp_path / "export"))
    assert Decimal(parquet.manifest["tables"]["costs"]["sums"]["cost"]) == EXPECTED
    focus = export_day(lake, DAY, "focus", str(tmp_path / "focus"))
    assert Decimal(focus.manifest["tables"]["focus"]["sums"]["BilledCost"]) == EXPECTED
    billed = duckdb.sql(f"SELECT sum(BilledCost) FROM read_parquet("
                        f"'{tmp_path}/focus/focus-00000.parquet')").fetchall()[0][0]
    assert billed == EXPECTED
