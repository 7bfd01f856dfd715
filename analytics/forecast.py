"""Month-end forecast of spend and of the internal share, and the alerts it raises.

Why: budgets are per calendar month, but the stream alerts (streams/alerts.py) only see an
hour or a day. Planning needs to know on the 10th whether the month will end above
`planning.external_budget_per_month`, and whether the share of requests served by own models
is heading for `target_internal_share`, while there is still time to move traffic.

Method (docs/forecast.md walks through it), for each provider_kind x provider x operation:

1. As of the start of `today` (UTC): days before it are actuals; `today` and the rest of the
   month are predicted, so a partly recorded day is never fitted as a whole one.
2. Series: cost per day (the `daily_spend` view, analytics/sql/70_forecast.sql) from the
   series' first day with records, at most 8 weeks before the 1st, to yesterday; a day
   without records counts as 0.
3. Trend x weekday: a least-squares line over the day index (0 = the 1st), times a factor per
   weekday = mean cost on that weekday / mean of the line on those same days (so a rising
   month does not read as a weekday effect), scaled to average 1.0; all 1.0 below 14 days.
   The line is then refitted to the cost divided by its weekday factor.
4. Projection = month-to-date actual + the predictions for the remaining days (each at
   least 0).
5. Interval (95 %) = projection ± t x sqrt(remaining days x s^2 + line error + factor
   error). s is the residual standard deviation of a day (residual sum of squares /
   (days - 2, or days - 8 with weekday factors)) and the remaining days' residuals are
   taken as independent: that part is the plain "1.96 x s x sqrt(remaining days)". The
   other two are the error of the fitted line and of the weekday factors, which every
   predicted day shares; without them the interval held the true month-end total only 16 %
   of the time on the 8th in simulation (docs/forecast.md). t is Student's t for the days
   left over (1.96 from about 60 days). The lower bound is never below what is already
   spent. Below 3 days: no interval.

Money: month_to_date is the exact DECIMAL sum from the lake; the fit and the projection
are float (a forecast has no pico-dollars to keep).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from costpipe.core.settings import Settings
from costpipe.schemas.records import ALERT

__all__ = [
    "KEYS",
    "Trend",
    "alert_id",
    "fit_trend",
    "forecast",
    "forecast_alerts",
    "month_bounds",
    "share_trend",
    "t95",
    "unsent",
    "weekday_factors",
]

KEYS: tuple[str, ...] = ("provider_kind", "provider", "operation")
HISTORY_DAYS = 56  # 8 weeks before the 1st: enough weekdays for the factors, still recent
WEEKDAY_MIN_DAYS = 14  # two of each weekday before a weekday factor means anything
Z95 = 1.959964  # two-sided 95 % quantile of the normal
_MONEY = pl.Decimal(38, 12)
_FLOAT_COLUMNS = ("projected", "lower", "upper", "slope_per_day", "slope_lower", "slope_upper",
                  "residual_sd")


@dataclass(frozen=True)
class Trend:
    """A line over the day index times a factor per weekday (Monday = 0), as fitted."""

    level: float  # value of the line at day index 0 (the 1st of the month)
    slope: float  # change per day
    factors: tuple[float, ...]  # 7 weekday factors averaging 1.0
    days: int  # days in the series
    sigma: float | None  # residual standard deviation of a day; None without spare days
    line_sigma: float | None  # the same around the line, of the weekday-adjusted values
    x_mean: float  # mean day index and sum of squared deviations of the days the line
    sxx: float  # was fitted on (a weekday whose factor is 0 is left out)
    fitted: int
    factor_se: tuple[float, ...] = (0.0,) * 7  # standard error of each weekday factor

    def predict(self, x: np.ndarray, weekday: np.ndarray) -> np.ndarray:
        return (self.level + self.slope * x) * np.asarray(self.factors)[weekday]

    @property
    def weekday_adjusted(self) -> bool:
        return len(set(self.factors)) > 1

    @property
    def dof(self) -> int:
        """Days left over for `sigma`: 2 go to the line, 6 more to the weekday factors."""
        return self.days - 2 - (6 if self.weekday_adjusted else 0)

    @property
    def slope_se(self) -> float | None:
        """Standard error of the slope: line_sigma / sqrt(Sxx)."""
        if self.line_sigma is None or self.sxx == 0:
            return None
        return self.line_sigma / math.sqrt(self.sxx)

    def slope_bounds(self) -> tuple[float | None, float | None]:
        """95 % interval of the slope (Student's t), or (None, None)."""
        se = self.slope_se
        if se is None:
            return None, None
        half = t95(self.fitted - 2) * se
        return self.slope - half, self.slope + half

    def total_sd(self, x: np.ndarray, weekday: np.ndarray) -> float | None:
        """Standard deviation of (actual - predicted) summed over the days `x`.

        Three parts taken as independent: each day's own residual (sigma^2 per day, days
        independent); the error of the fitted line, which every predicted day shares,
        line_sigma^2 x ((sum f)^2 / n + (sum f (x - mean x))^2 / Sxx) with f the weekday
        factors; and the error of each weekday factor, shared by the days on that weekday,
        (sum of the line over those days)^2 x factor_se^2.
        """
        if self.sigma is None or self.line_sigma is None or self.sxx == 0:
            return None
        f = np.asarray(self.factors)[weekday]
        line = self.line_sigma**2 * (float(f.sum()) ** 2 / self.fitted
                                     + float((f * (x - self.x_mean)).sum()) ** 2 / self.sxx)
        on_line = self.level + self.slope * x
        factor = sum(float(on_line[weekday == day].sum()) ** 2 * se**2
                     for day, se in enumerate(self.factor_se))
        return math.sqrt(len(x) * self.sigma**2 + line + factor)


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    """First and last day of `day`'s calendar month."""
    first = day.replace(day=1)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    return first, following - dt.timedelta(days=1)


def alert_id(rule: str, key: str, month: dt.date) -> str:
    """Same form as the stream alerts' ids (rule|key|period): one alert per rule, key, month."""
    return hashlib.sha1(f"{rule}|{key}|{month:%Y-%m}".encode()).hexdigest()[:20]


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (intercept at x = 0, slope); a flat line through the mean below 2 x's."""
    if len(y) == 0:
        return 0.0, 0.0
    x_mean, y_mean = float(x.mean()), float(y.mean())
    sxx = float(((x - x_mean) ** 2).sum())
    if sxx == 0:
        return y_mean, 0.0
    slope = float(((x - x_mean) * (y - y_mean)).sum()) / sxx
    return y_mean - slope * x_mean, slope


def weekday_factors(x: np.ndarray, y: np.ndarray, weekday: np.ndarray) -> tuple[float, ...]:
    """Mean of each weekday over the first line's mean on the same days, averaging 1.0.

    Why against the line, not the overall mean: in a rising month the last weekday of the
    data sits higher on the trend, which a plain ratio of means would call a weekday effect.
    """
    ones = (1.0,) * 7
    if len(y) < WEEKDAY_MIN_DAYS:
        return ones
    level, slope = _ols(x, y)
    line = level + slope * x
    factors = np.ones(7)
    for day in range(7):
        on = weekday == day
        base = float(line[on].mean())
        if base > 0:
            factors[day] = float(y[on].mean()) / base
    mean = float(factors.mean())
    return tuple(float(f) for f in factors / mean) if mean > 0 else ones


def fit_trend(x: np.ndarray, y: np.ndarray, weekday: np.ndarray) -> Trend:
    """Fit the line x weekday model to daily values `y` at day indexes `x`."""
    factors = weekday_factors(x, y, weekday)
    per_day = np.asarray(factors)[weekday]
    use = per_day > 0  # a weekday that never has spend says nothing about the level
    xs, ys = x[use], y[use] / per_day[use]
    level, slope = _ols(xs, ys)
    residual = y - (level + slope * x) * per_day
    spare = len(y) - 2 - (6 if len(set(factors)) > 1 else 0)  # Trend.dof
    sigma = math.sqrt(float((residual**2).sum()) / spare) if spare > 0 else None
    line_sigma = None
    if len(xs) > 2:
        line_sigma = math.sqrt(float(((ys - level - slope * xs) ** 2).sum()) / (len(xs) - 2))
    x_mean = float(xs.mean()) if len(xs) else 0.0
    return Trend(level, slope, factors, len(y), sigma, line_sigma, x_mean,
                 float(((xs - x_mean) ** 2).sum()), len(xs),
                 _factor_se(level + slope * x, weekday, sigma, factors))


def _factor_se(line: np.ndarray, weekday: np.ndarray, sigma: float | None,
               factors: tuple[float, ...]) -> tuple[float, ...]:
    """Standard error of each weekday factor: sigma / (sqrt(days on it) x its line mean).

    Why: with two or three weeks each factor rests on two or three days; leaving its error
    out made the interval miss the month-end total about 1 time in 7 in simulation.
    """
    if sigma is None or len(set(factors)) == 1:
        return (0.0,) * 7
    out = []
    for day in range(7):
        on = weekday == day
        base = float(line[on].mean()) if on.any() else 0.0
        out.append(sigma / (math.sqrt(int(on.sum())) * base) if base > 0 else 0.0)
    return tuple(out)


def _slope_se(x: np.ndarray, y: np.ndarray, level: float, slope: float) -> float | None:
    """Standard error of a least-squares slope: s / sqrt(sum (x - mean x)^2)."""
    sxx = float(((x - x.mean()) ** 2).sum()) if len(x) else 0.0
    if len(x) < 3 or sxx == 0:
        return None
    s2 = float(((y - level - slope * x) ** 2).sum()) / (len(x) - 2)
    return math.sqrt(s2 / sxx)


def t95(dof: int) -> float:
    """Two-sided 95 % quantile of Student's t (Cornish-Fisher; exact to 0.001 from 3 dof).

    Why not 1.96: with two or three weeks of days the standard deviations are estimates, and
    the normal quantile then gives intervals that miss far more often than 1 in 20.
    """
    if dof <= 2:
        return (12.706, 4.303)[max(dof, 1) - 1]
    z = Z95
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(term / dof ** (power + 1) for power, term in enumerate(terms))


def _daily(con: duckdb.DuckDBPyConnection, by: Sequence[str], start: dt.date, end: dt.date
           ) -> pl.DataFrame:
    """Cost per day and per `by` key, days in [start, end)."""
    keys = ", ".join(by)
    return con.sql(
        f"SELECT day, {keys}, sum(cost) AS cost FROM daily_spend "
        f"WHERE day >= ? AND day < ? GROUP BY ALL ORDER BY {keys}, day",
        params=[start, end],
    ).pl()


def _project(days: list[dt.date], costs: list[Decimal], today: dt.date) -> dict[str, Any]:
    """One series' month-to-date, projection, interval and slope (see the module docstring)."""
    month_start, month_end = month_bounds(today)
    first = min(days)
    y = np.zeros((today - first).days)
    for day, cost in zip(days, costs, strict=True):
        y[(day - first).days] += float(cost)
    x = np.arange(len(y)) + (first - month_start).days
    trend = fit_trend(x, y, (first.weekday() + np.arange(len(y))) % 7)
    remaining = (month_end - today).days + 1
    future_x = np.arange(remaining) + (today - month_start).days
    future_weekday = (today.weekday() + np.arange(remaining)) % 7
    future = trend.predict(future_x, future_weekday)
    mtd = sum((c for d, c in zip(days, costs, strict=True) if d >= month_start), Decimal(0))
    projected = float(mtd) + float(np.clip(future, 0, None).sum())
    total_sd = trend.total_sd(future_x, future_weekday)
    half = None if total_sd is None else t95(trend.dof) * total_sd
    slope_lower, slope_upper = trend.slope_bounds()
    return {
        "month_to_date": mtd, "projected": projected,
        "lower": None if half is None else max(projected - half, float(mtd)),
        "upper": None if half is None else projected + half,
        "days_observed": trend.days, "days_remaining": remaining,
        "slope_per_day": trend.slope, "slope_lower": slope_lower, "slope_upper": slope_upper,
        "residual_sd": trend.sigma, "weekday_adjusted": trend.weekday_adjusted,
    }


def _forecast_schema(by: Sequence[str]) -> dict[str, Any]:
    return {"month": pl.Date, "as_of": pl.Date, **dict.fromkeys(by, pl.String),
            "month_to_date": _MONEY, **dict.fromkeys(_FLOAT_COLUMNS[:3], pl.Float64),
            "days_observed": pl.Int64, "days_remaining": pl.Int64,
            **dict.fromkeys(_FLOAT_COLUMNS[3:], pl.Float64), "weekday_adjusted": pl.Boolean}


def forecast(con: duckdb.DuckDBPyConnection, settings: Settings, today: dt.date | None = None,
             by: Sequence[str] = KEYS) -> pl.DataFrame:
    """Month-to-date spend and the month-end projection with a 95 % interval, per `by` key.

    One row per series with records in the 8 weeks before the month or in the month before
    `today` (default: the current UTC day); `by` is a non-empty subset of KEYS, e.g.
    ("provider_kind",) for the external and own totals, each fitted on its summed series.
    `settings` is taken for symmetry with the other forecast functions (the method has no
    setting). An empty lake gives an empty frame with the same columns.
    """
    if not by or not set(by) <= set(KEYS):
        raise ValueError(f"by must be a non-empty subset of {KEYS}, got {tuple(by)}")
    today = today or _utc_today()
    month_start, _ = month_bounds(today)
    daily = _daily(con, by, month_start - dt.timedelta(days=HISTORY_DAYS), today)
    rows = []
    for key, series in daily.group_by(list(by), maintain_order=True):
        row = _project(series["day"].to_list(), series["cost"].to_list(), today)
        rows.append({"month": month_start, "as_of": today, **dict(zip(by, key, strict=True)),
                     **row})
    return pl.DataFrame(rows, schema=_forecast_schema(by))


def share_trend(con: duckdb.DuckDBPyConnection, settings: Settings,
                today: dt.date | None = None) -> dict[str, Any]:
    """Daily internal share of requests, its line, and where the line is at month end.

    Returns month, as_of, target_internal_share, days_observed, share_to_date (this month's
    requests so far), slope_per_day with slope_lower/slope_upper, projected_share (the line
    on the last day of the month) with lower/upper (95 % interval of the line there:
    t x s x sqrt(1/n + (x_end - mean x)^2 / Sxx), days independent), meets_target (projected
    share >= target; None without data) and `daily` (day, requests, internal_requests,
    internal_share, trend). Shares are clipped to [0, 1]. The line is fitted on days with
    requests, from up to 8 weeks before the 1st to yesterday; no weekday factor (a share, not
    an amount, moves little with the weekday). Intervals use Student's t with n - 2 dof.
    """
    today = today or _utc_today()
    month_start, month_end = month_bounds(today)
    daily = con.sql(
        "SELECT day, requests, internal_requests, internal_share FROM daily_internal_share "
        "WHERE day >= ? AND day < ? ORDER BY day",
        params=[month_start - dt.timedelta(days=HISTORY_DAYS), today],
    ).pl()
    x = np.array([(d - month_start).days for d in daily["day"].to_list()], dtype=float)
    y = daily["internal_share"].to_numpy().astype(float)
    level, slope = _ols(x, y)
    out: dict[str, Any] = {"month": month_start, "as_of": today,
                           "target_internal_share": settings.target_internal_share,
                           "days_observed": len(y), **_share_to_date(daily, month_start),
                           **_share_line(x, y, level, slope, float((month_end - month_start).days))}
    target = settings.target_internal_share
    projected = out["projected_share"]
    out["meets_target"] = None if projected is None else projected >= target
    out["daily"] = daily.with_columns(trend=pl.Series(level + slope * x if len(y) else [],
                                                      dtype=pl.Float64))
    return out


def _share_to_date(daily: pl.DataFrame, month_start: dt.date) -> dict[str, float | None]:
    month = daily.filter(pl.col("day") >= month_start)
    requests = int(month["requests"].sum())
    share = int(month["internal_requests"].sum()) / requests if requests else None
    return {"share_to_date": share}


def _share_line(x: np.ndarray, y: np.ndarray, level: float, slope: float, x_end: float
                ) -> dict[str, float | None]:
    """Slope with its interval and the line's value at x_end with its interval, or Nones."""
    if len(y) == 0:
        return dict.fromkeys(("slope_per_day", "slope_lower", "slope_upper", "projected_share",
                              "lower", "upper"))
    projected = _clip01(level + slope * x_end)
    se = _slope_se(x, y, level, slope)
    if se is None:
        return {"slope_per_day": slope, "slope_lower": None, "slope_upper": None,
                "projected_share": projected, "lower": None, "upper": None}
    s = math.sqrt(float(((y - level - slope * x) ** 2).sum()) / (len(y) - 2))
    sxx = float(((x - x.mean()) ** 2).sum())
    t = t95(len(y) - 2)
    half = t * s * math.sqrt(1 / len(y) + (x_end - float(x.mean())) ** 2 / sxx)
    return {"slope_per_day": slope, "slope_lower": slope - t * se,
            "slope_upper": slope + t * se, "projected_share": projected,
            "lower": _clip01(level + slope * x_end - half),
            "upper": _clip01(level + slope * x_end + half)}


def _clip01(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def forecast_alerts(con: duckdb.DuckDBPyConnection, settings: Settings,
                    today: dt.date | None = None) -> pa.Table:
    """Alerts (ALERT schema) the forecast raises for the month of `today`.

    forecast_budget: projected month-end external spend > planning.external_budget_per_month
    (critical when even the lower bound is above it); forecast_share: the internal share's
    line at month end below target_internal_share (critical when even its upper bound is).
    Ids are rule|key|month: re-running in the same month gives the same ids, which the lake
    sink and the webhook sender keep once; `unsent` drops those already in the lake.
    """
    today = today or _utc_today()
    rows = [*_budget_alert(con, settings, today), *_share_alert(con, settings, today)]
    return pa.Table.from_pylist(rows, schema=ALERT)


def _alert(rule: str, key: str, today: dt.date, severity: str, observed: float,
           threshold: float, message: str) -> dict[str, Any]:
    month_start, _ = month_bounds(today)
    midnight = dt.time(tzinfo=dt.UTC)
    return {"alert_id": alert_id(rule, key, month_start),
            "timestamp": dt.datetime.combine(today, midnight),  # the forecast's "as of"
            "rule": rule, "severity": severity, "key": key,
            "window_start": dt.datetime.combine(month_start, midnight),
            "observed": observed, "threshold": threshold, "message": message}


def _budget_alert(con: duckdb.DuckDBPyConnection, settings: Settings, today: dt.date
                  ) -> list[dict[str, Any]]:
    budget = settings.planning.external_budget_per_month
    if budget is None:
        return []
    totals = forecast(con, settings, today, by=("provider_kind",))
    external = totals.filter(pl.col("provider_kind") == "external").to_dicts()
    if not external or external[0]["projected"] <= float(budget):
        return []
    row = external[0]
    lower, upper = row["lower"], row["upper"]
    severity = "critical" if lower is not None and lower > float(budget) else "warning"
    interval = "" if lower is None else f" (95 % interval ${lower:,.2f} to ${upper:,.2f})"
    message = (f"external spend for {row['month']:%Y-%m} projected at "
               f"${row['projected']:,.2f}{interval} at month end, above "
               f"planning.external_budget_per_month ${budget:,.2f}; "
               f"${row['month_to_date']:,.2f} spent before {today}")
    return [_alert("forecast_budget", "external", today, severity, row["projected"],
                   float(budget), message)]


def _share_alert(con: duckdb.DuckDBPyConnection, settings: Settings, today: dt.date
                 ) -> list[dict[str, Any]]:
    trend = share_trend(con, settings, today)
    target = settings.target_internal_share
    projected = trend["projected_share"]
    if projected is None or projected >= target:
        return []
    upper = trend["upper"]
    severity = "critical" if upper is not None and upper < target else "warning"
    interval = "" if upper is None else \
        f" (95 % interval {trend['lower']:.2%} to {upper:.2%})"
    message = (f"internal share of requests heading for {projected:.2%}{interval} at the end "
               f"of {trend['month']:%Y-%m} (trend {trend['slope_per_day'] * 100:+.2f} points "
               f"a day), below target_internal_share {target:.2%}")
    return [_alert("forecast_share", "internal_share", today, severity, projected, target,
                   message)]


def unsent(con: duckdb.DuckDBPyConnection, alerts: pa.Table) -> pa.Table:
    """The alerts whose id is not in the lake's alerts table yet.

    Why: the webhook sender remembers posted ids for 7 days only, so a forecast run daily
    would post the same month's alert again each week without this check.
    """
    if alerts.num_rows == 0:
        return alerts
    ids = alerts["alert_id"].to_pylist()
    seen = {row[0] for row in con.execute(
        "SELECT DISTINCT alert_id FROM alerts WHERE alert_id IN (SELECT unnest(?))", [ids]
    ).fetchall()}
    keep = pa.array([i not in seen for i in ids])
    return alerts.filter(keep)
