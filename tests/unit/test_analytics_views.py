"""DuckDB views over a real Parquet lake reconcile with the raw records to the pico-dollar."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.cli import app
from costpipe.core.settings import LakeSettings, Settings
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range


def _sum(table: pa.Table, column: str, mask=None) -> Decimal:
    col = table[column] if mask is None else table.filter(mask)[column]
    value = pc.sum(col).as_py()
    return Decimal(0) if value is None else value


@pytest.fixture(scope="module")
def lake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    lake = open_lake(str(root))
    costs = sample.costs(60_000, days=3)
    for i in range(3):  # three partitions' worth of files
        write_range(lake, "costs", costs.slice(i * 20_000, 20_000), "costpipe.costs.v1", i, 0, 9)
    write_range(lake, "gpu_samples", sample.gpu_samples(3_000), "costpipe.gpu.v1", 0, 0, 0)
    windows, alerts = sample.windows_and_alerts(costs)
    write_range(lake, "windows", windows, "costpipe.windows.v1", 0, 0, 0)
    write_range(lake, "alerts", alerts, "costpipe.alerts.v1", 0, 0, 0)
    settings = Settings(lake=LakeSettings(location=str(root)), target_internal_share=0.6)
    return root, costs, analytics.connect(settings)


def test_costs_and_idle_views_reconcile_exactly(lake_data):
    _, costs, con = lake_data
    total, rows = con.execute("SELECT sum(cost), count(*) FROM costs").fetchall()[0]
    assert rows == costs.num_rows
    assert total == _sum(costs, "cost")
    idle = con.execute("SELECT sum(cost) FROM idle_cost").fetchall()[0][0]
    assert idle == _sum(costs, "cost", pc.equal(costs["record_type"], "idle"))


def test_dependency_share_reconciles(lake_data):
    _, costs, con = lake_data
    df = analytics.dependency_share(con)
    not_idle = pc.not_equal(costs["record_type"], "idle")
    external = pc.and_(not_idle, pc.equal(costs["provider_kind"], "external"))
    assert sum(df["cost"].to_list()) == _sum(costs, "cost", not_idle)
    assert sum(df["external_cost"].to_list()) == _sum(costs, "cost", external)
    assert df["requests"].sum() == pc.sum(not_idle.cast(pa.int64())).as_py()
    assert set(df["target_internal_share"].to_list()) == {0.6}
    assert df["external_share_requests"].min() >= 0 and df["external_share_requests"].max() <= 1


def test_cost_per_operation_is_fully_loaded(lake_data):
    _, costs, con = lake_data
    df = analytics.cost_per_operation(con)
    idle_total = _sum(costs, "cost", pc.equal(costs["record_type"], "idle"))
    direct = sum(df["direct_cost"].to_list())
    allocated = sum(df["idle_allocated"].to_list())
    assert direct == _sum(costs, "cost", pc.not_equal(costs["record_type"], "idle"))
    assert abs(allocated - idle_total) < Decimal("1e-9") * len(df)  # pro-rata rounding only
    internal = df.filter(df["provider_kind"] == "internal")
    assert (internal["idle_allocated"] > 0).all()
    assert (df.filter(df["provider_kind"] == "external")["idle_allocated"] == 0).all()
    assert df["latency_p95_ms"].drop_nulls().min() > 0


def test_avoided_spend_breakeven_and_whatif(lake_data):
    _, costs, con = lake_data
    avoided = analytics.avoided_spend(con)
    own = pc.and_(pc.equal(costs["provider_kind"], "internal"),
                  pc.not_equal(costs["record_type"], "idle"))
    assert sum(avoided["shadow_cost"].to_list()) == _sum(costs, "shadow_cost", own)
    breakeven = analytics.breakeven(con)
    assert breakeven.height == len(sample.OPERATIONS)
    assert (breakeven["breakeven_utilization"] > 0).all()
    same = con.execute("SELECT sum(new_total_cost - total_cost) FROM whatif_external_price(0)")
    assert abs(same.fetchall()[0][0]) < 1e-9
    up = con.execute("SELECT sum(new_external_cost) / sum(external_cost) "
                     "FROM whatif_external_price(20)").fetchall()[0][0]
    assert up == pytest.approx(1.2)
    [(moved, new_share, share)] = con.execute(
        "SELECT requests_moved_in, new_internal_share_requests, internal_share_requests "
        "FROM whatif_shift('chat', 30)").fetchall()
    assert moved > 0 and new_share > share
    summary = analytics.summary(con)
    assert summary["total_cost"] == _sum(costs, "cost")
    assert summary["target_internal_share"] == pytest.approx(0.6)


def test_views_exist_on_an_empty_lake(tmp_path):
    con = analytics.connect(Settings(lake=LakeSettings(location=str(tmp_path / "none"))))
    for view in ("costs", "gpu_samples", "idle_cost", "windows", "alerts", "dependency_share",
                 "cost_per_operation", "avoided_spend", "breakeven"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0] == 0
    [(moved, gpus)] = con.execute("SELECT requests_moved_in, gpus_to_add "
                                  "FROM whatif_shift('chat', 10)").fetchall()
    assert (moved or 0, gpus) == (0, 0)
    for view in ("capacity_by_operation", "own_gpu_seconds", "hourly_load"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0] == 0
    assert analytics.summary(con)["requests"] == 0


def test_read_only_refuses_writes():
    analytics.check_read_only("SELECT 1; EXPLAIN SELECT 2")
    for statement in ("CREATE TABLE t AS SELECT 1", "DROP VIEW costs",
                      "COPY (SELECT 1) TO '/tmp/x.csv'", "SELECT 1; DELETE FROM costs",
                      "INSTALL httpfs", "ATTACH 'x.db'"):
        with pytest.raises(analytics.ReadOnlyError):
            analytics.check_read_only(statement)


def test_sql_command(lake_data, tmp_path):
    root, costs, _ = lake_data
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "--lake", str(root), "DROP VIEW costs"])
    assert result.exit_code == 2
    assert "refusing DROP statement" in result.output and "--write" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["sql", "--lake", str(root), "-f", "csv",
                                 "SELECT count(*) AS n FROM costs"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["n", str(costs.num_rows)]
    out = tmp_path / "share.parquet"
    result = runner.invoke(app, ["sql", "--lake", str(root), "-f", "parquet", "-o", str(out),
                                 "SELECT * FROM dependency_share"])
    assert result.exit_code == 0 and out.stat().st_size > 0
    result = runner.invoke(app, ["sql", "--lake", str(root), "SELECT * FROM nope"])
    assert result.exit_code == 1 and "query failed" in result.output
    result = runner.invoke(app, ["sql", "--lake", str(root), "--write",
                                 "CREATE TABLE t AS SELECT 1 AS x"])
    assert result.exit_code == 0
