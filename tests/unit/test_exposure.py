"""Price exposure, catalog price changes and payback over small hand-built lakes.

Every expected number is worked out by hand in the test, not by the code under test.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from costpipe import analytics
from costpipe.analytics.exposure import (
    NoInvestmentsError,
    catalog_changes,
    payback,
    price_exposure,
)
from costpipe.core.settings import (
    Investment,
    LakeSettings,
    PlanningSettings,
    PriceOverride,
    PricingSettings,
    Settings,
)
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range
from costpipe.schemas.records import COST_RECORD, REQUEST_EVENT
from costpipe.streams.costing import cost_records
from costpipe.streams.pricing import price_batch

D = Decimal
_counter = iter(range(1_000_000))


def _at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def _record(day: dt.date, provider: str, kind: str, cost: str, shadow: str | None = None,
            record_type: str = "request", model: str = "m") -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COST_RECORD.names)
    row.update(record_id=f"c{next(_counter)}", record_type=record_type, timestamp=_at(day),
               operation="chat" if record_type == "request" else "(idle)", provider=provider,
               provider_kind=kind, model=model, input_tokens=0, output_tokens=0,
               cache_read_tokens=0, cache_write_tokens=0, cost=D(cost),
               shadow_cost=None if shadow is None else D(shadow),
               pricing_status="priced" if kind == "external" else "gpu_allocated", status="ok")
    return row


def _lake(root: Path, table: pa.Table) -> Settings:
    write_range(open_lake(str(root)), "costs", table, "costpipe.costs.v1", 0, 0, 0)
    return Settings(lake=LakeSettings(location=str(root)))


def _rows_lake(root: Path, rows: list[dict[str, Any]]) -> Settings:
    return _lake(root, pa.Table.from_pylist(rows, schema=COST_RECORD))


# ------------------------------------------------------------------ price exposure

LAST = dt.date(2026, 11, 30)


@pytest.fixture
def exposure_lake(tmp_path):
    rows = [
        _record(LAST, "openai", "external", "1.234567890123"),
        _record(LAST - dt.timedelta(days=10), "openai", "external", "2.5"),
        _record(LAST - dt.timedelta(days=29), "anthropic", "external", "10.000000000001"),
        _record(LAST - dt.timedelta(days=30), "openai", "external", "100"),  # outside 30 days
        _record(LAST, "own-vllm", "internal", "1", shadow="4.2"),
        _record(LAST - dt.timedelta(days=3), "own-vllm", "internal", "0.5", shadow="0.3"),
        _record(LAST, "own-vllm", "internal", "7", record_type="idle"),
    ]
    settings = _rows_lake(tmp_path / "exposure", rows)
    return settings, analytics.connect(settings)


def test_exposure_is_the_bill_times_pct_exactly_per_provider(exposure_lake):
    settings, con = exposure_lake
    df = price_exposure(con, settings, pct=10, days=30)
    got = {r["provider"]: r for r in df.to_dicts()}
    assert set(got) == {"openai", "anthropic"}
    openai, anthropic = got["openai"], got["anthropic"]
    assert openai["external_cost"] == D("3.734567890123")  # 1.234567890123 + 2.5; not the 100
    assert openai["external_delta"] == D("0.3734567890123")  # x 10 %, not rounded
    assert anthropic["external_cost"] == D("10.000000000001")
    assert anthropic["external_delta"] == D("1.0000000000001")
    # own models are shadow-priced at openai (the default shadow provider): 4.2 + 0.3
    assert openai["shadow_cost"] == D("4.5") and openai["avoided_spend_delta"] == D("0.45")
    assert anthropic["shadow_cost"] == 0 and anthropic["avoided_spend_delta"] == 0
    assert openai["first_day"] == LAST - dt.timedelta(days=29) and openai["last_day"] == LAST


def test_exposure_window_pct_and_shadow_provider(exposure_lake):
    settings, con = exposure_lake
    one_day = {r["provider"]: r for r in price_exposure(con, settings, 25, days=1).to_dicts()}
    assert set(one_day) == {"openai"}
    assert one_day["openai"]["external_delta"] == D("0.30864197253075")  # 1.234567890123 / 4
    assert one_day["openai"]["avoided_spend_delta"] == D("1.05")  # 4.2 x 25 %
    other = settings.model_copy(deep=True)
    other.providers.shadow_provider = "anthropic"
    got = {r["provider"]: r for r in price_exposure(con, other, 10).to_dicts()}
    assert got["anthropic"]["avoided_spend_delta"] == D("0.45")
    assert got["openai"]["avoided_spend_delta"] == 0
    sql = con.sql("SELECT provider, external_delta FROM price_exposure(10) ORDER BY provider")
    assert sql.fetchall() == [("anthropic", D("1.0000000000001")),
                              ("openai", D("0.3734567890123"))]


def test_exposure_on_an_empty_lake(tmp_path):
    settings = Settings(lake=LakeSettings(location=str(tmp_path / "none")))
    con = analytics.connect(settings)
    assert price_exposure(con, settings).height == 0
    assert catalog_changes(con, settings, price_batch).height == 0


# ------------------------------------------------------------------ catalog changes


def _event(when: dt.datetime, provider: str, model: str, input_tokens: int,
           output_tokens: int) -> dict[str, Any]:
    event: dict[str, Any] = dict.fromkeys(REQUEST_EVENT.names)
    event.update(request_id=f"r{next(_counter)}", timestamp=when, operation="chat",
                 provider=provider, model=model, status="ok", input_tokens=input_tokens,
                 output_tokens=output_tokens, cache_read_tokens=0, cache_write_tokens=0)
    return event


def _priced_lake(root: Path, events: list[dict[str, Any]], settings: Settings) -> Settings:
    """A lake of the external cost records the pipeline would have written with `settings`."""
    external, _ = cost_records(pa.Table.from_pylist(events, schema=REQUEST_EVENT), settings, 0, 0)
    return _lake(root, external)


def test_contract_override_change_is_reported_with_its_delta(tmp_path):
    # two days of gpt-4o-mini at list price ($0.15 in / $0.60 out per Mtok), each request
    # 1M in + 0.5M out = 0.15 + 0.30 = $0.45
    days = [dt.date(2026, 11, 20), dt.date(2026, 11, 21)]
    events = [_event(_at(d), "openai", "gpt-4o-mini", 1_000_000, 500_000) for d in days]
    settings = _priced_lake(tmp_path, events, Settings())
    con = analytics.connect(settings)
    now = _at(dt.date(2026, 11, 25))
    unchanged = catalog_changes(con, settings, price_batch, days=30, now=now)
    assert unchanged.height == 0  # nothing changed
    contract = settings.model_copy(deep=True)
    contract.pricing = PricingSettings(overrides=[PriceOverride(
        provider="openai", model="gpt-4o-mini", input_per_mtok=D("0.10"),
        output_per_mtok=D("0.40"))])
    df = catalog_changes(con, contract, price_batch, days=30, now=now)
    assert df.height == 1
    row = df.to_dicts()[0]
    assert (row["provider"], row["model"]) == ("openai", "gpt-4o-mini")
    assert row["requests"] == 2 and row["repriced_requests"] == 2
    assert row["old_cost"] == D("0.90")  # 2 x 0.45
    assert row["new_cost"] == D("0.60")  # 2 x (0.10 + 0.20)
    assert row["delta"] == D("-0.30")
    assert row["monthly_delta"] == D("-4.50")  # -0.30 over 2 days of data, x 30 / 2


def test_discount_change_is_reported(tmp_path):
    events = [_event(_at(dt.date(2026, 11, 20)), "openai", "gpt-4o-mini", 1_000_000, 500_000)]
    settings = _priced_lake(tmp_path, events, Settings())
    con = analytics.connect(settings)
    discounted = settings.model_copy(deep=True)
    discounted.pricing = PricingSettings(discounts={"openai": D("0.2")})
    row = catalog_changes(con, discounted, price_batch,
                          now=_at(dt.date(2026, 11, 22))).to_dicts()[0]
    assert row["delta"] == D("-0.09")  # 20 % of $0.45
    assert row["monthly_delta"] == D("-2.70")  # one day of data, x 30


def test_catalog_price_change_is_reported(tmp_path):
    # genai-prices raises mistral-medium-latest from $0.40 / $2 per Mtok (in / out) to
    # $1.50 / $7.50 from 2026-06-16; traffic recorded before that date, re-priced after it
    before = [dt.date(2026, 6, 10), dt.date(2026, 6, 12)]  # 3 days of data: 10th to 12th
    events = [_event(_at(d), "mistral", "mistral-medium-latest", 1_000_000, 100_000)
              for d in before]
    openai = [_event(_at(before[0]), "openai", "gpt-4o-mini", 1_000_000, 0)]  # unchanged
    settings = _priced_lake(tmp_path, events + openai, Settings())
    con = analytics.connect(settings)
    recorded = con.sql("SELECT sum(cost) FROM costs WHERE provider = 'mistral'").fetchall()
    assert recorded[0][0] == D("1.2")  # 2 x (0.40 + 0.20)
    assert catalog_changes(con, settings, price_batch, now=_at(dt.date(2026, 6, 15))).height == 0
    df = catalog_changes(con, settings, price_batch, days=30, now=_at(dt.date(2026, 6, 20)))
    assert df["model"].to_list() == ["mistral-medium-latest"]  # gpt-4o-mini did not change
    row = df.to_dicts()[0]
    assert row["old_cost"] == D("1.2")
    assert row["new_cost"] == D("4.5")  # 2 x (1.50 + 0.75)
    assert row["delta"] == D("3.3")
    assert row["monthly_delta"] == D("33")  # 3.3 over 3 observed days, x 30 / 3
    # a window that ends before the traffic sees none of it
    late = catalog_changes(con, settings, price_batch, days=3, now=_at(dt.date(2026, 6, 20)))
    assert late.height == 0


# ------------------------------------------------------------------ payback


def _avoided_lake(root: Path, per_day: dict[dt.date, tuple[str, str]],
                  investments: list[Investment]) -> tuple[Settings, Any]:
    """One own-model request a day with (fully loaded cost, shadow cost): avoided = the gap."""
    rows = [_record(day, "own-vllm", "internal", cost, shadow=shadow)
            for day, (cost, shadow) in per_day.items()]
    settings = _rows_lake(root, rows)
    settings = settings.model_copy(update={"planning": PlanningSettings(investments=investments)})
    return settings, analytics.connect(settings)


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@pytest.fixture
def payback_lake(tmp_path):
    # avoided spend: $40 a day from 2025-12-01 to 2026-02-28, $60 a day in March 2026
    per_day = {d: ("10", "50") for d in _days(dt.date(2025, 12, 1), dt.date(2026, 2, 28))}
    per_day |= {d: ("10", "70") for d in _days(dt.date(2026, 3, 1), dt.date(2026, 3, 31))}
    investments = [Investment(name="GPU servers", amount=D("6000"), date=dt.date(2026, 1, 1)),
                   Investment(name="fine-tuning", amount=D("4000"), date=dt.date(2026, 2, 1))]
    return _avoided_lake(tmp_path / "payback", per_day, investments)


def test_payback_month_by_hand(payback_lake):
    settings, con = payback_lake
    result = payback(con, settings, today=dt.date(2026, 3, 31))
    # invested 6000 + 4000; counted from the first investment, 2026-01-01 (December's $40 a
    # day came before any investment): Jan 31 x 40 + Feb 28 x 40 + Mar 31 x 60 = 4220
    assert result.investment == D("10000")
    assert result.first_investment == dt.date(2026, 1, 1)
    assert result.avoided_to_date == D("4220")
    assert result.remaining == D("5780")
    assert result.paid_back_on is None
    # trend: the last 30 days (Mar 2 - Mar 31) average $60 a day -> $1800 a month
    assert result.trend_days == 30 and result.trend_until == dt.date(2026, 3, 31)
    assert result.trend.monthly_saving == D("1800")
    # 5780 / 60 = 96.33 -> 97 days after 2026-03-31 = 2026-07-06 (Apr 30 + May 31 + Jun 30 = 91,
    # + 6 days into July)
    assert result.trend.payback_date == dt.date(2026, 7, 6)
    assert result.trend.payback_month == "2026-07"
    assert result.trend.months_left == D("3.21")  # 5780 / 1800
    assert result.override is None
    # a plan that saves $5780 a month pays the rest back in 30 days: 2026-04-30
    planned = payback(con, settings, monthly_saving_override=D("5780"),
                      today=dt.date(2026, 3, 31))
    assert planned.override is not None
    assert planned.override.payback_date == dt.date(2026, 4, 30)
    assert planned.override.payback_month == "2026-04"
    assert planned.override.months_left == D("1.00")
    assert planned.trend == result.trend
    assert planned.as_dict()["override"]["payback_month"] == "2026-04"


def test_payback_with_a_short_history_and_already_paid_back(payback_lake):
    settings, con = payback_lake
    # on 2025-12-10 the lake holds 10 days (Dec 1 - 10): the trend averages those, and the
    # projection counts from the investment's own day (2026-01-01): 10000 / 40 = 250 days
    # from 2025-12-31 = 2026-09-07 (Jan 31 + ... + Aug 31 = 243 days, + 7 into September)
    early = payback(con, settings, today=dt.date(2025, 12, 10))
    assert early.trend_days == 10 and early.trend.monthly_saving == D("1200")  # 40 x 30
    assert early.avoided_to_date == 0 and early.remaining == D("10000")
    assert early.trend.payback_date == dt.date(2026, 9, 7)
    small = settings.model_copy(update={"planning": PlanningSettings(investments=[
        Investment(name="one GPU", amount=D("1000"), date=dt.date(2026, 1, 1))])})
    done = payback(con, small, today=dt.date(2026, 3, 31))
    assert done.paid_back_on == dt.date(2026, 1, 25)  # 25 days x 40 = 1000
    assert done.remaining == 0
    assert done.trend.payback_month == "2026-01" and done.trend.months_left == 0


def test_payback_never_when_own_models_cost_more(tmp_path):
    per_day = {d: ("30", "20") for d in _days(dt.date(2026, 3, 1), dt.date(2026, 3, 10))}
    investments = [Investment(name="GPU servers", amount=D("5000"), date=dt.date(2026, 3, 1))]
    settings, con = _avoided_lake(tmp_path, per_day, investments)
    result = payback(con, settings, today=dt.date(2026, 3, 10))
    assert result.avoided_to_date == D("-100")  # 10 days x (20 - 30)
    assert result.remaining == D("5100")
    assert result.trend_days == 10 and result.trend.monthly_saving == D("-300")
    assert result.trend.payback_date is None and result.trend.payback_month is None
    assert result.trend.months_left is None
    zero = payback(con, settings, monthly_saving_override=D("0"), today=dt.date(2026, 3, 10))
    assert zero.override is not None and zero.override.payback_month is None
    # 5100 at $1700 a month: 90 days after 2026-03-10 = 2026-06-08
    plan = payback(con, settings, monthly_saving_override=D("1700"), today=dt.date(2026, 3, 10))
    assert plan.override is not None and plan.override.payback_date == dt.date(2026, 6, 8)


def test_payback_without_investments_says_where_to_add_them(tmp_path):
    settings = Settings(lake=LakeSettings(location=str(tmp_path)))
    with pytest.raises(NoInvestmentsError, match=r"\[\[planning.investments\]\]"):
        payback(analytics.connect(settings), settings)


# ------------------------------------------------------------------ CLI


def _cli_app():
    import typer

    from costpipe.cli.commands import exposure

    app = typer.Typer()
    exposure.register(app)
    return app


def test_cli_exposure_and_payback(exposure_lake, payback_lake, monkeypatch, tmp_path):
    from costpipe.core.settings import get_settings

    def invoke(config: str, args: list[str]):
        path = tmp_path / "costpipe.toml"
        path.write_text(config, encoding="utf-8")
        monkeypatch.setenv("COSTPIPE_CONFIG", str(path))
        get_settings.cache_clear()
        try:
            return runner.invoke(app, args)
        finally:
            get_settings.cache_clear()

    monkeypatch.setenv("COLUMNS", "200")  # rich folds long names in a narrow terminal
    runner = CliRunner()
    app = _cli_app()
    lake = exposure_lake[0].lake.location
    result = invoke("", ["exposure", "--lake", lake, "--pct", "10"])
    assert result.exit_code == 0, result.output
    assert "openai" in result.output and "anthropic" in result.output
    # the hand-made records cost what no catalog says: re-priced today, they all change
    assert "Catalog changes: cost at today's prices" in result.output
    result = invoke("", ["payback", "--lake", lake])
    assert result.exit_code == 1
    assert "[[planning.investments]]" in result.output and "Traceback" not in result.output
    config = ('[[planning.investments]]\nname = "GPU servers"\namount = "10000"\n'
              "date = 2026-01-01\n")
    result = invoke(config, ["payback", "--lake", payback_lake[0].lake.location,
                             "--monthly-saving", "5780"])
    assert result.exit_code == 0, result.output
    assert "$10,000.00" in result.output and "--monthly-saving" in result.output
    assert "avoided spend to date:  $4,220.00" in result.output
    assert "at today's trend:       $1,800.00/month" in result.output
    result = invoke(config, ["payback", "--monthly-saving", "lots"])
    assert result.exit_code == 2 and "not a number" in result.output
    for command in ("exposure", "payback"):
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
