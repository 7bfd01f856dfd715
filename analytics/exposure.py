"""Price risk and payback: what a provider's price move costs us, what the catalog changed, and
when the money put into own models comes back.

Why here, beside the views: all three are questions about the lake asked with the settings in
hand (the shadow provider, contract prices, the investments), which the SQL files cannot read.
`price_exposure` is also a SQL macro (`analytics/sql/60_exposure.sql`) for `costpipe sql`.
The payback method is written down, with a worked example, in docs/payback.md.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.money import MONEY_QUANTUM
from costpipe.core.settings import Settings
from costpipe.schemas.records import BILLED_UNITS, TIMESTAMP

__all__ = [
    "NoInvestmentsError",
    "Payback",
    "Projection",
    "catalog_changes",
    "payback",
    "price_exposure",
]

DAYS_PER_MONTH = 30  # "monthly" everywhere here: 30 days, so a month is the same length always
TREND_DAYS = 30
_BATCH_ROWS = 1_000_000
# What pricing reads from a cost record (it carries the request's usage); timestamp is replaced.
_PRICING_COLUMNS = ("provider", "provider_kind", "model", "status", "input_tokens",
                    "output_tokens", "cache_read_tokens", "cache_write_tokens", *BILLED_UNITS)
_CHANGES_SCHEMA = {
    "provider": pl.String, "model": pl.String, "requests": pl.Int64,
    "repriced_requests": pl.Int64, "old_cost": pl.Decimal(38, 12),
    "new_cost": pl.Decimal(38, 12), "delta": pl.Decimal(38, 12),
    "monthly_delta": pl.Decimal(38, 12),
}


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


# ------------------------------------------------------------------ price exposure


def price_exposure(con: duckdb.DuckDBPyConnection, settings: Settings, pct: float = 10,
                   days: int = 30) -> pl.DataFrame:
    """Per external provider: the last `days` days' bill and what +pct % of its prices adds.

    Why: a provider's price rise is the risk a hybrid stack hedges. `external_delta` is the bill
    moving (paid cost x pct / 100); `avoided_spend_delta` is what the own models shadow-priced
    at that provider (providers.shadow_provider) become worth on top (shadow_cost x pct / 100).
    The window ends at the lake's last day, so an old lake answers for its own last month.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    sql = ("SELECT * FROM price_exposure(?, days := ?, shadow_provider := ?) "
           "ORDER BY external_cost DESC, provider")
    params = [float(pct), int(days), settings.providers.shadow_provider]
    return con.sql(sql, params=params).pl()


# ------------------------------------------------------------------ catalog changes


@dataclass
class _ModelChange:
    requests: int = 0
    repriced: int = 0
    old: Decimal = Decimal(0)
    new: Decimal = Decimal(0)


def _external_batches(con: duckdb.DuckDBPyConnection, start: dt.datetime, end: dt.datetime
                      ) -> Iterator[pa.RecordBatch]:
    """External request records in (start, end], usage and recorded cost, in bounded batches."""
    columns = ", ".join(f'"{name}"' for name in (*_PRICING_COLUMNS, "cost", "date", "timestamp"))
    sql = (f"SELECT {columns} FROM costs WHERE provider_kind = 'external' "
           "AND record_type = 'request' AND \"date\" BETWEEN ? AND ? "
           "AND \"timestamp\" > ? AND \"timestamp\" <= ?")
    params = [start.date(), end.date(), start, end]
    reader = con.sql(sql, params=params).to_arrow_reader(_BATCH_ROWS)
    yield from reader


# streams.pricing.price_batch: the query layer may not import the stream processors, so the
# caller (the CLI) hands the pricing function in.
PriceBatch = Callable[[pa.Table, Settings], tuple[pa.Array, pa.Array, pa.Array]]


def _reprice(batch: pa.RecordBatch, settings: Settings, now: dt.datetime,
             price_batch: PriceBatch) -> pa.Array:
    """The batch's cost at the prices in force at `now` (the catalog and the settings today).

    Each row keeps its time of day (off-peak prices depend on it), moved to the last day
    ending at or before `now`."""
    day_us = 86_400_000_000
    now_us = int(now.timestamp() * 1_000_000)
    ts = pc.cast(batch.column("timestamp"), pa.int64()).to_numpy()
    moved = now_us - now_us % day_us + ts % day_us
    moved = np.where(moved > now_us, moved - day_us, moved)
    table = pa.Table.from_batches([batch])
    at = table.column_names.index("timestamp")
    table = table.set_column(at, "timestamp", pa.array(moved).cast(TIMESTAMP))
    cost, _, _ = price_batch(table, settings)
    return cost


def _add_batch(totals: dict[tuple[str, str], _ModelChange], batch: pa.RecordBatch,
               new_cost: pa.Array) -> None:
    old_cost = batch.column("cost")
    changed = pc.fill_null(pc.not_equal(old_cost, new_cost), True).cast(pa.int64())
    grouped = pa.table({
        "provider": batch.column("provider"), "model": batch.column("model"),
        "old": old_cost, "new": new_cost, "changed": changed,
    }).group_by(["provider", "model"], use_threads=False).aggregate(
        [("old", "sum"), ("new", "sum"), ("changed", "sum"), ("changed", "count")])
    for row in grouped.to_pylist():
        entry = totals.setdefault((row["provider"], row["model"]), _ModelChange())
        entry.requests += row["changed_count"]
        entry.repriced += row["changed_sum"]
        entry.old += row["old_sum"] or Decimal(0)
        entry.new += row["new_sum"] or Decimal(0)


def _observed_days(first: dt.date | None, last: dt.date | None, days: int) -> int:
    """Days the window really holds data for: a lake younger than the window is not scaled
    as if the missing days had cost nothing."""
    if first is None or last is None:
        return days
    return max(1, min(days, (last - first).days + 1))


def catalog_changes(con: duckdb.DuckDBPyConnection, settings: Settings,
                    price_batch: PriceBatch, days: int = 30,
                    now: dt.datetime | None = None) -> pl.DataFrame:
    """Provider x model rows whose cost changes when re-priced at today's prices.

    Why: a new genai-prices release, a contract override or a discount changes what the same
    traffic costs, silently. The last `days` days of external request records carry all the
    usage pricing needs; they are re-priced with `streams.pricing.price_batch` with every
    timestamp set to `now` and compared with their recorded `cost`. `delta` = new - old over
    the window; `monthly_delta` scales it to 30 days over the days the window holds data for.
    A change that took effect inside the window only shows on the rows priced before it.
    An empty frame means no price the fleet used has changed.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    totals: dict[tuple[str, str], _ModelChange] = {}
    first: dt.date | None = None
    last: dt.date | None = None
    for batch in _external_batches(con, now - dt.timedelta(days=days), now):
        if batch.num_rows == 0:
            continue
        low, high = pc.min_max(batch.column("date")).values()
        first = low.as_py() if first is None else min(first, low.as_py())
        last = high.as_py() if last is None else max(last, high.as_py())
        _add_batch(totals, batch, _reprice(batch, settings, now, price_batch))
    scale = Decimal(DAYS_PER_MONTH) / _observed_days(first, last, days)
    rows = [
        {"provider": provider, "model": model, "requests": t.requests,
         "repriced_requests": t.repriced, "old_cost": _money(t.old), "new_cost": _money(t.new),
         "delta": _money(t.new - t.old), "monthly_delta": _money((t.new - t.old) * scale)}
        for (provider, model), t in totals.items() if t.repriced or t.new != t.old
    ]
    rows.sort(key=lambda r: (-abs(r["monthly_delta"]), r["provider"], r["model"]))
    return pl.DataFrame(rows, schema=_CHANGES_SCHEMA)


# ------------------------------------------------------------------ payback


class NoInvestmentsError(ValueError):
    """No `[[planning.investments]]` in the settings: nothing to pay back."""


@dataclass(frozen=True)
class Projection:
    """When cumulative avoided spend reaches the investment, at one monthly saving.

    `payback_date` / `payback_month` ('YYYY-MM') are None when it never does (saving <= 0);
    `months_left` is the remaining amount over the monthly saving (0 once paid back).
    """

    monthly_saving: Decimal
    payback_date: dt.date | None
    payback_month: str | None
    months_left: Decimal | None


@dataclass(frozen=True)
class Payback:
    """The payback answer: where we stand today and the projections (docs/payback.md)."""

    investment: Decimal
    first_investment: dt.date
    as_of: dt.date
    avoided_to_date: Decimal
    remaining: Decimal
    paid_back_on: dt.date | None
    trend_days: int
    trend_until: dt.date | None
    trend: Projection
    override: Projection | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _daily_avoided(con: duckdb.DuckDBPyConnection, as_of: dt.date) -> list[tuple[dt.date, Decimal]]:
    sql = ("SELECT day, sum(avoided_spend) FROM avoided_spend WHERE day <= ? "
           "GROUP BY day ORDER BY day")
    return [(day, value or Decimal(0)) for day, value in con.execute(sql, [as_of]).fetchall()]


def _trend(daily: list[tuple[dt.date, Decimal]]) -> tuple[Decimal, int, dt.date | None]:
    """(monthly saving, days averaged, last of them): the mean daily avoided spend of the last
    30 days up to the last day with data (fewer when the lake is younger; a day without rows
    counts 0)."""
    if not daily:
        return Decimal(0), 0, None
    end = daily[-1][0]
    start = max(daily[0][0], end - dt.timedelta(days=TREND_DAYS - 1))
    n = (end - start).days + 1
    total = sum((value for day, value in daily if day >= start), Decimal(0))
    return _money(total * DAYS_PER_MONTH / n), n, end


def _paid_back_on(daily: list[tuple[dt.date, Decimal]], since: dt.date,
                  investment: Decimal) -> dt.date | None:
    """The first day the avoided spend summed from `since` reached the investment."""
    running = Decimal(0)
    for day, value in daily:
        if day < since:
            continue
        running += value
        if running >= investment:
            return day
    return None


def _projection(monthly: Decimal, remaining: Decimal, start: dt.date,
                paid_back_on: dt.date | None) -> Projection:
    """Days after `start` until `remaining` is covered at monthly / 30 a day (rounded up)."""
    if paid_back_on is not None:
        return Projection(monthly, paid_back_on, f"{paid_back_on:%Y-%m}", Decimal(0))
    if monthly <= 0:
        return Projection(monthly, None, None, None)
    days = math.ceil(remaining * DAYS_PER_MONTH / monthly)
    when = start + dt.timedelta(days=days)
    months = (remaining / monthly).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return Projection(monthly, when, f"{when:%Y-%m}", months)


def payback(con: duckdb.DuckDBPyConnection, settings: Settings,
            monthly_saving_override: Decimal | None = None,
            today: dt.date | None = None) -> Payback:
    """When do the investments in own models pay back, at today's trend (and at a given saving)?

    Why: the own GPUs are justified by avoided spend (shadow price minus fully loaded own cost,
    the avoided_spend view). Cumulative avoided spend counts from the first investment's date;
    the trend is the last 30 days' mean x 30; `monthly_saving_override` (the saving a plan
    promises) gives the same projection at that saving. Raises NoInvestmentsError when
    `[[planning.investments]]` is empty.
    """
    investments = settings.planning.investments
    if not investments:
        raise NoInvestmentsError(
            "no investments configured: add [[planning.investments]] with name, amount and "
            "date to the settings to compute the payback")
    as_of = today or dt.datetime.now(dt.UTC).date()
    total = sum((i.amount for i in investments), Decimal(0))
    since = min(i.date for i in investments)
    daily = _daily_avoided(con, as_of)
    to_date = sum((v for day, v in daily if day >= since), Decimal(0))
    paid_on = _paid_back_on(daily, since, total)
    monthly, trend_days, trend_until = _trend(daily)
    start = max(as_of, since - dt.timedelta(days=1))  # a future investment counts from its day
    remaining = max(total - to_date, Decimal(0))
    override = None
    if monthly_saving_override is not None:
        override = _projection(Decimal(monthly_saving_override), remaining, start, paid_on)
    return Payback(
        investment=total, first_investment=since, as_of=as_of, avoided_to_date=to_date,
        remaining=remaining, paid_back_on=paid_on, trend_days=trend_days,
        trend_until=trend_until, trend=_projection(monthly, remaining, start, paid_on),
        override=override,
    )
