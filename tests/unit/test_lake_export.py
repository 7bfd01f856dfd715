"""Nightly export: compacted, deterministic, FOCUS totals equal the lake's."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from costpipe.analytics import sample
from costpipe.cli import app
from costpipe.lake.export import export_day
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range

DAY = dt.date(2026, 11, 2)
FOCUS_COLUMNS = {
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ChargePeriodStart",
    "ChargePeriodEnd", "ChargeCategory", "ServiceCategory", "ServiceName", "ProviderName",
    "PublisherName", "InvoiceIssuerName", "BillingCurrency", "ConsumedQuantity", "ConsumedUnit",
    "x_Provider", "x_Model", "x_Operation", "x_TokenType",
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    lake = open_lake(str(root))
    costs = sample.costs(40_000, days=3)
    for i in range(4):
        write_range(lake, "costs", costs.slice(i * 10_000, 10_000), "costpipe.costs.v1", i, 0, 5)
    write_range(lake, "gpu_samples", sample.gpu_samples(2_000), "costpipe.gpu.v1", 0, 0, 0)
    windows, alerts = sample.windows_and_alerts(costs)
    write_range(lake, "windows", windows, "costpipe.windows.v1", 0, 0, 0)
    write_range(lake, "alerts", alerts, "costpipe.alerts.v1", 0, 0, 0)
    return lake


def _lake_day_cost(lake) -> tuple:
    glob = f"{lake.uri}/costs/date={DAY.isoformat()}/**/*.parquet"
    return duckdb.sql(f"SELECT sum(cost), count(*) FROM read_parquet('{glob}')").fetchall()[0]


def test_export_twice_is_identical(lake, tmp_path):
    first = export_day(lake, DAY, "parquet", str(tmp_path / "a"))
    second = export_day(lake, DAY, "parquet", str(tmp_path / "b"))
    assert first.manifest == second.manifest
    for name in ("costs", "gpu_samples", "windows", "alerts"):
        assert (tmp_path / "a" / f"{name}-00000.parquet").read_bytes() == (
            tmp_path / "b" / f"{name}-00000.parquet").read_bytes()
    again = export_day(lake, DAY, "parquet", str(tmp_path / "a"))  # in place, over itself
    assert again.manifest == first.manifest
    cost, rows = _lake_day_cost(lake)
    entry = first.manifest["tables"]["costs"]
    assert entry["rows"] == rows and entry["sums"]["cost"] == format(cost, "f")
    exported = pq.read_table(tmp_path / "a" / "costs-00000.parquet")
    ts = exported["timestamp"].to_pylist()
    assert ts == sorted(ts)
    assert {t.date() for t in ts} == {DAY}


def test_focus_columns_and_billed_cost(lake, tmp_path):
    result = export_day(lake, DAY, "focus", str(tmp_path / "focus"))
    table = pq.read_table(tmp_path / "focus" / "focus-00000.parquet")
    assert set(table.column_names) >= FOCUS_COLUMNS
    cost, _ = _lake_day_cost(lake)
    billed = duckdb.sql(f"SELECT sum(BilledCost) FROM read_parquet("
                        f"'{tmp_path}/focus/focus-00000.parquet')").fetchall()[0][0]
    assert billed == cost
    assert result.manifest["tables"]["focus"]["sums"]["BilledCost"] == format(cost, "f")
    assert set(table["ServiceCategory"].to_pylist()) == {"AI and Machine Learning"}
    assert set(table["ChargeCategory"].to_pylist()) == {"Usage"}
    assert set(table["ConsumedUnit"].to_pylist()) == {"Tokens"}
    manifest = json.loads((tmp_path / "focus" / "manifest.json").read_text())
    assert manifest == result.manifest


def test_export_command(lake, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--lake", lake.uri, "--date", "2026-11-02",
                                 "--format", "focus", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "BilledCost=" in result.output and (tmp_path / "manifest.json").exists()
    result = runner.invoke(app, ["export", "--lake", lake.uri, "--date", "yesterday"])
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output
