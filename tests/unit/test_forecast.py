"""Month-end forecast (analytics/forecast.py) on a simulated lake with a known trend.

External spend per day = 100 + 2 x day + a weekday effect + seeded noise; the internal share
of requests rises 0.4 points a day. The forecast, made as of the 20th, must hold the true
month-end total in its interval and the true slope in the slope's interval.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from costpipe import analytics
from costpipe.analytics import forecast as fc
from costpipe.cli.commands import forecast as forecast_command
from costpipe.core.settings import LakeSettings, PlanningSettings, Settings, get_settings
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range
from costpipe.schemas.records import ALERT, COST_RECORD

MONTH = dt.date(2026, 11, 1)  # 30 days, starts on a Sunday
TODAY = dt.date(2026, 11, 20)  # as of: the 1st..19th are actuals
WEEKDAY_EFFECT = (6.0, 6.0, 6.0, 6.0, 6.0, -15.0, -15.0)  # Monday..Sunday, mean 0
SLOPE = 2.0
NOISE_SD = 8.0
REQUESTS_PER_DAY = 200
SHARE_START, SHARE_SLOPE = 0.30, 0.004  # internal share of requests on the 1st, per day
OWN_COST = Decimal("0.010000000000")  # per own-model request


def _external_cost(day: dt.date, rng: np.random.Generator) -> Decimal:
    index = (day - MONTH).days
    value = 100 + SLOPE * index + WEEKDAY_EFFECT[day.weekday()] + rng.normal(0, NOISE_SD)
    return Decimal(f"{value:.6f}")


def _share(day: dt.date) -> float:
    return SHARE_START + SHARE_SLOPE * (day - MONTH).days


def _day_rows(day: dt.date, cost: Decimal) -> list[dict[str, Any]]:
    """REQUESTS_PER_DAY request records at noon; the first external one carries the day's
    external spend, own-model ones OWN_COST each."""
    internal = round(REQUESTS_PER_DAY * _share(day))
    noon = dt.datetime.combine(day, dt.time(12, tzinfo=dt.UTC))
    rows = []
    for i in range(REQUESTS_PER_DAY):
        own = i < internal
        rows.append({
            "record_id": f"{day}-{i}", "record_type": "request", "timestamp": noon,
            "operation": "chat", "provider": "own-vllm" if own else "openai",
            "provider_kind": "internal" if own else "external",
            "model": "llama-3.1-8b" if own else "gpt-4o-mini",
            "input_tokens": 10, "output_tokens": 10, "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cost": OWN_COST if own else (cost if i == internal else Decimal(0)),
            "pricing_status": "gpu_allocated" if own else "priced", "status": "ok"})
    return rows


def _build_lake(root: Path, seed: int, history_days: int) -> dict[str, Any]:
    """Write the month (and `history_days` before it) to a lake; return the true totals."""
    rng = np.random.default_rng(seed)
    days = [MONTH + dt.timedelta(days=i) for i in range(-history_days, 30)]
    costs = {day: _external_cost(day, rng) for day in days}
    rows = [row for day in days for row in _day_rows(day, costs[day])]
    lake = open_lake(str(root))
    write_range(lake, "costs", pa.Table.from_pylist(rows, schema=COST_RECORD),
                "costpipe.costs.v1", 0, 0, len(rows) - 1)
    month = [day for day in days if day >= MONTH]
    return {"external_total": float(sum(costs[d] for d in month)),
            "external_to_date": sum((costs[d] for d in month if d < TODAY), Decimal(0)),
            "own_to_date": sum(OWN_COST * round(REQUESTS_PER_DAY * _share(d))
                               for d in month if d < TODAY)}


def _settings(root: Path, budget: float | None = None, target: float = 0.5) -> Settings:
    planning = PlanningSettings(
        external_budget_per_month=None if budget is None else Decimal(str(round(budget, 2))))
    return Settings(lake=LakeSettings(location=str(root)), planning=planning,
                    target_internal_share=target)


@pytest.fixture(scope="module")
def month_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("forecast-lake")
    return root, _build_lake(root, seed=1, history_days=28)


def _external(con: Any, settings: Settings) -> dict[str, Any]:
    totals = fc.forecast(con, settings, TODAY, by=("provider_kind",))
    return totals.filter(totals["provider_kind"] == "external").to_dicts()[0]


@pytest.mark.parametrize(("seed", "history_days"), [(1, 0), (2, 0), (1, 28), (2, 56)])
def test_interval_holds_the_true_month_end_total_and_slope(tmp_path: Path, seed: int,
                                                           history_days: int) -> None:
    truth = _build_lake(tmp_path, seed, history_days)
    settings = _settings(tmp_path)
    row = _external(analytics.connect(settings), settings)
    assert row["month_to_date"] == truth["external_to_date"]  # exact, from the lake
    assert row["lower"] <= truth["external_total"] <= row["upper"]
    assert row["lower"] >= float(row["month_to_date"])
    assert row["slope_lower"] <= SLOPE <= row["slope_upper"]
    assert row["weekday_adjusted"] is True
    assert row["days_observed"] == 19 + history_days and row["days_remaining"] == 11


def test_forecast_rows_per_series(month_lake: tuple[Path, dict[str, Any]]) -> None:
    root, truth = month_lake
    settings = _settings(root)
    frame = fc.forecast(analytics.connect(settings), settings, TODAY)
    assert frame.columns[:5] == ["month", "as_of", "provider_kind", "provider", "operation"]
    assert frame.select("provider_kind", "provider", "operation").rows() == [
        ("external", "openai", "chat"), ("internal", "own-vllm", "chat")]
    own = frame.row(1, named=True)
    assert own["month_to_date"] == truth["own_to_date"]
    assert own["projected"] > float(own["month_to_date"])
    assert str(frame.schema["month_to_date"]) == "Decimal(precision=38, scale=12)"
    with pytest.raises(ValueError, match="subset"):
        fc.forecast(analytics.connect(settings), settings, TODAY, by=("team",))


def test_share_trend_recovers_the_rise(month_lake: tuple[Path, dict[str, Any]]) -> None:
    root, _ = month_lake
    settings = _settings(root, target=0.5)
    share = fc.share_trend(analytics.connect(settings), settings, TODAY)
    end = SHARE_START + SHARE_SLOPE * 29
    assert share["slope_lower"] <= SHARE_SLOPE <= share["slope_upper"]
    assert share["lower"] <= end <= share["upper"]
    assert share["projected_share"] == pytest.approx(end, abs=0.01)
    assert share["meets_target"] is False
    assert share["daily"].height == 19 + 28 and "trend" in share["daily"].columns
    lower = _settings(root, target=0.35)
    assert fc.share_trend(analytics.connect(lower), lower, TODAY)["meets_target"] is True


def test_budget_alert_fires_below_the_projection_only(
        month_lake: tuple[Path, dict[str, Any]]) -> None:
    root, _ = month_lake
    base = _settings(root)
    row = _external(analytics.connect(base), base)
    cases = {row["lower"] * 0.9: "critical",  # even the lower bound crosses it
             (row["lower"] + row["projected"]) / 2: "warning",
             row["upper"] * 1.1: None}
    for budget, severity in cases.items():
        settings = _settings(root, budget=budget, target=0.2)  # share meets 0.2: no alert
        alerts = fc.forecast_alerts(analytics.connect(settings), settings, TODAY)
        assert alerts.schema.equals(ALERT)
        fired = alerts.to_pylist()
        if severity is None:
            assert fired == []
            continue
        (alert,) = fired
        assert (alert["rule"], alert["key"], alert["severity"]) == (
            "forecast_budget", "external", severity)
        assert alert["observed"] == pytest.approx(row["projected"])
        assert "planning.external_budget_per_month" in alert["message"]
        assert f"${row['projected']:,.2f}" in alert["message"]


def test_share_alert_names_the_target(month_lake: tuple[Path, dict[str, Any]]) -> None:
    root, _ = month_lake
    settings = _settings(root, target=0.6)
    (alert,) = fc.forecast_alerts(analytics.connect(settings), settings, TODAY).to_pylist()
    assert (alert["rule"], alert["severity"]) == ("forecast_share", "critical")
    assert "target_internal_share 60.00%" in alert["message"]
    assert alert["threshold"] == 0.6 and alert["observed"] < 0.6


def test_alert_ids_are_stable_and_unsent_skips_the_lake(
        month_lake: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = month_lake
    settings = _settings(root, budget=100.0, target=0.6)
    first = fc.forecast_alerts(analytics.connect(settings), settings, TODAY)
    later = fc.forecast_alerts(analytics.connect(settings), settings, TODAY + dt.timedelta(3))
    assert first.num_rows == 2
    assert first["alert_id"].to_pylist() == later["alert_id"].to_pylist()
    assert first["alert_id"].to_pylist() == [fc.alert_id("forecast_budget", "external", MONTH),
                                             fc.alert_id("forecast_share", "internal_share",
                                                         MONTH)]
    assert fc.alert_id("forecast_budget", "external", dt.date(2026, 12, 1)) not in \
        first["alert_id"].to_pylist()
    # once the alerts are in the lake, a re-run has nothing new to send
    lake_root = tmp_path / "lake"
    _build_lake(lake_root, seed=1, history_days=0)
    lake_settings = _settings(lake_root, budget=100.0, target=0.6)
    con = analytics.connect(lake_settings)
    alerts = fc.forecast_alerts(con, lake_settings, TODAY)
    assert fc.unsent(con, alerts).num_rows == 2
    write_range(open_lake(str(lake_root)), "alerts", alerts.slice(0, 1),
                "costpipe.alerts.v1", 0, 0, 0)
    con = analytics.connect(lake_settings)
    assert fc.unsent(con, alerts)["rule"].to_pylist() == ["forecast_share"]


def test_empty_lake_gives_an_empty_forecast(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "none", budget=0.0, target=1.0)
    con = analytics.connect(settings)
    frame = fc.forecast(con, settings, TODAY)
    assert frame.is_empty() and "month_to_date" in frame.columns
    share = fc.share_trend(con, settings, TODAY)
    assert share["projected_share"] is None and share["meets_target"] is None
    alerts = fc.forecast_alerts(con, settings, TODAY)
    assert alerts.num_rows == 0 and alerts.schema.equals(ALERT)
    assert con.execute("SELECT count(*) FROM daily_spend").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM daily_internal_share").fetchall() == [(0,)]


def test_fit_recovers_an_exact_line_and_weekday_factors() -> None:
    x = np.arange(-28, 21, dtype=float)
    weekday = (MONTH.weekday() + x.astype(int)) % 7
    factors = np.array([1.1, 1.1, 1.1, 1.1, 1.1, 0.75, 0.75])
    trend = fc.fit_trend(x, (50 + 3 * x + 200) * factors[weekday], weekday)
    # the factors are measured against a first line fitted before them: close, not exact
    assert trend.level == pytest.approx(250, rel=1e-4) and trend.slope == pytest.approx(3, 1e-4)
    assert trend.factors == pytest.approx(tuple(factors / factors.mean()), rel=1e-4)
    short = fc.fit_trend(x[:10], 5 + x[:10], weekday[:10])
    assert short.factors == (1.0,) * 7 and short.slope == pytest.approx(1)
    assert fc.t95(6) == pytest.approx(2.447, abs=1e-3) and fc.t95(1000) == pytest.approx(1.962,
                                                                                       abs=1e-3)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A one-command app (independent of the CLI's module list) with a budget set."""
    monkeypatch.setenv("COSTPIPE_PLANNING__EXTERNAL_BUDGET_PER_MONTH", "100")
    get_settings.cache_clear()
    app = typer.Typer()
    app.callback()(lambda: None)
    forecast_command.register(app)
    yield lambda *args: CliRunner().invoke(app, ["forecast", *args])
    get_settings.cache_clear()


def test_forecast_command(cli: Any, month_lake: tuple[Path, dict[str, Any]],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = month_lake
    base = ["--lake", str(root), "--today", str(TODAY)]
    result = cli(*base, "-f", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("month,as_of,provider_kind,provider,operation,month_to_date")
    assert len(lines) == 3
    result = cli(*base, "-f", "json", "--totals")
    payload = json.loads(result.stdout)
    assert [r["provider_kind"] for r in payload["forecast"]] == ["external", "internal"]
    assert [a["rule"] for a in payload["alerts"]] == ["forecast_budget", "forecast_share"]
    result = cli(*base)
    assert result.exit_code == 0 and "[critical] forecast_budget" in result.stdout
    assert "target_internal_share" in result.stdout
    assert cli(*base[:2], "--today", "20/11/2026").exit_code == 2
    empty = cli("--lake", str(root / "none"), "--today", str(TODAY))
    assert empty.exit_code == 0 and "no cost records" in empty.stdout

    sent: list[tuple[str, bytes]] = []

    class FakeProducer:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def produce(self, topic: str, key: bytes, value: bytes, headers: Any) -> None:
            sent.append((topic, value))

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr("confluent_kafka.Producer", FakeProducer)
    result = cli(*base, "-f", "csv", "--alert")
    assert result.exit_code == 0, result.output
    assert "sent 2 forecast alert(s)" in result.stderr
    (topic, value), = sent
    assert topic == get_settings().topics.alerts
    table = pa.ipc.open_stream(pa.py_buffer(value)).read_all()
    assert table.schema.equals(ALERT) and table.num_rows == 2
