"""`costpipe forecast`: month-end spend and internal-share projection, and its alerts.

Why a command of its own: budgets are monthly and the stream alerts see an hour or a day;
this reads the lake (no Kafka) and, with --alert only, publishes to the alerts topic like the
workers' alerting agent, so the lake sink and the webhook sender take it from there.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

from costpipe.cli.commands._edges import fail

if TYPE_CHECKING:  # imported when run: `costpipe --help` stays fast
    import polars as pl
    import pyarrow as pa

    from costpipe.core.settings import Settings


class ForecastFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _settings(lake: str | None) -> Settings:
    from costpipe.core.settings import get_settings

    settings = get_settings()
    if lake:
        settings = settings.model_copy(deep=True)
        settings.lake.location = lake
    return settings


def _day(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail("forecast", f"--today must be a day such as 2026-11-20 (got {value!r})")


def publish(settings: Settings, alerts: pa.Table, timeout: float = 15.0) -> int:
    """Produce the alerts (ALERT schema, one Arrow message) to settings.topics.alerts.

    The same message the alerting agent sends (streams/agents.py): the lake sink writes each
    alert id once and the webhook agent posts it to alerts.webhook_url. Returns how many.
    """
    from confluent_kafka import Producer

    from costpipe.core.kafka_clients import confluent_producer
    from costpipe.schemas.codec import encode_arrow
    from costpipe.schemas.envelope import ARROW, headers_for

    if alerts.num_rows == 0:
        return 0
    producer = Producer(confluent_producer(settings))
    producer.produce(settings.topics.alerts, key=b"alerts", value=encode_arrow(alerts),
                     headers=headers_for(ARROW, "alert"))
    if producer.flush(timeout):
        raise RuntimeError(f"not delivered to {settings.topics.alerts} within {timeout:.0f} s")
    return alerts.num_rows


def _share_line(share: dict[str, Any]) -> str:
    if share["projected_share"] is None:
        return "internal share of requests: no requests before this day"
    bounds = "" if share["lower"] is None else \
        f" (95 % {share['lower']:.1%} to {share['upper']:.1%})"
    verdict = "meets" if share["meets_target"] else "below"
    return (f"internal share of requests: {share['share_to_date'] or 0:.1%} this month so far, "
            f"heading for {share['projected_share']:.1%}{bounds} at month end; {verdict} "
            f"target_internal_share {share['target_internal_share']:.1%}")


def _print_table(frame: pl.DataFrame, share: dict[str, Any], alerts: pa.Table) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    keys = [c for c in ("provider_kind", "provider", "operation") if c in frame.columns]
    table = Table(*keys, "month to date", "projected", "95 % interval", "days", "slope/day",
                  title=f"Month-end forecast as of {_as_of(frame, share)}")
    for row in frame.iter_rows(named=True):
        bounds = "-" if row["lower"] is None else f"{row['lower']:,.2f} - {row['upper']:,.2f}"
        table.add_row(*(row[k] for k in keys), f"{row['month_to_date']:,.2f}",
                      f"{row['projected']:,.2f}", bounds,
                      f"{row['days_observed']}+{row['days_remaining']}",
                      f"{row['slope_per_day']:+,.4f}")
    if frame.is_empty():
        console.print("no cost records in this month or the 8 weeks before it, before "
                      f"{_as_of(frame, share)}", markup=False)
    else:
        console.print(table)
    console.print(_share_line(share), markup=False)
    for alert in alerts.to_pylist():
        console.print(f"[{alert['severity']}] {alert['rule']}: {alert['message']}",
                      markup=False)


def _as_of(frame: pl.DataFrame, share: dict[str, Any]) -> str:
    return str(share["as_of"]) if frame.is_empty() else str(frame["as_of"][0])


def _json(frame: pl.DataFrame, share: dict[str, Any], alerts: pa.Table) -> str:
    share = {**share, "daily": share["daily"].to_dicts()}
    out = {"forecast": frame.to_dicts(), "internal_share": share,
           "alerts": alerts.to_pylist()}
    return json.dumps(out, default=str, indent=2)


def register(app: typer.Typer) -> None:
    @app.command()
    def forecast(
        lake: str | None = typer.Option(None, "--lake", help="Lake folder/URL (else settings)"),
        today: str | None = typer.Option(
            None, "--today", metavar="YYYY-MM-DD",
            help="Forecast as of the start of this UTC day (default: today): days before it "
            "are actuals, it and the rest of its month are predicted"),
        format: ForecastFormat = typer.Option(
            ForecastFormat.table, "--format", "-f",
            help="table (forecast, share, alerts), csv (the forecast rows) or json (all)"),
        totals: bool = typer.Option(
            False, "--totals", help="One row per provider_kind (external, internal), fitted "
            "on the summed series, instead of per provider x operation"),
        alert: bool = typer.Option(
            False, "--alert", help="Also send the forecast alerts (forecast_budget, "
            "forecast_share) to the alerts topic (needs Kafka); the workers write them to "
            "the lake and post them to alerts.webhook_url. One alert per rule and month: "
            "one already in the lake is not sent again"),
    ) -> None:
        """Project this month's spend to month end with a 95 % interval, per provider_kind x
        provider x operation (external spend against planning.external_budget_per_month),
        and the internal share of requests against target_internal_share.

        Method: a least-squares line over the days times a weekday factor, fitted on the
        month and up to 8 weeks before it (docs/forecast.md)."""
        from costpipe import analytics
        from costpipe.analytics import forecast as fc

        settings = _settings(lake)
        day = _day(today) or dt.datetime.now(dt.UTC).date()
        con = analytics.connect(settings)
        by = ("provider_kind",) if totals else fc.KEYS
        frame = fc.forecast(con, settings, day, by=by)
        share = fc.share_trend(con, settings, day)
        alerts = fc.forecast_alerts(con, settings, day)
        if format is ForecastFormat.table:
            _print_table(frame, share, alerts)
        elif format is ForecastFormat.csv:
            sys.stdout.write(frame.write_csv())
        else:
            sys.stdout.write(_json(frame, share, alerts) + "\n")
        if alert:
            _send(settings, fc.unsent(con, alerts))


def _send(settings: Settings, alerts: pa.Table) -> None:
    try:
        sent = publish(settings, alerts)
    except Exception as exc:  # an unreachable broker: one line, not a traceback
        fail("forecast", f"alerts not delivered ({exc})", 1)
    typer.echo(f"sent {sent} forecast alert(s) to {settings.topics.alerts}", err=True)
