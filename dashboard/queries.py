"""What each tab shows: one function per tab, each figure one query of the views.

Why figures come formatted from here: the page only places text, so the number a person reads
is exactly Python's formatting of the SQL result (money to the cent, shares to 0.1 %), which the
browser test recomputes from the same SQL.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import duckdb

from costpipe.analytics import charts
from costpipe.analytics.report import time_bucket
from costpipe.dashboard.filters import Filters

WINDOWS_SHOWN = 60
ALERTS_SHOWN = 50


def money(value: Decimal | float | None) -> str:
    return "–" if value is None else f"${Decimal(value):,.2f}"


def share(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _spec(rows: list[Any], make: Any) -> dict[str, Any] | None:
    """A chart's spec, or None when it has no rows: the page then says so (an empty layered
    chart lays out with an unbounded height)."""
    return charts.spec(make()) if rows else None


def _records(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None
             ) -> list[dict[str, Any]]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _rows_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: _json(v) for k, v in row.items()} for row in rows]


def totals(con: duckdb.DuckDBPyConnection, f: Filters) -> dict[str, Any]:
    return _records(con, "SELECT * FROM dashboard_totals(?, ?, ?, ?, ?, ?)", f.params())[0]


def kpis(row: dict[str, Any]) -> list[dict[str, str]]:
    """The headline tiles: (id, label, text) in page order."""
    target = row["target_internal_share"]
    return [
        {"id": "requests", "label": "Requests", "text": f"{row['requests']:,}"},
        {"id": "share-requests", "label": "Internal share of requests",
         "text": share(row["internal_share_requests"])},
        {"id": "share-tokens", "label": "Internal share of tokens",
         "text": share(row["internal_share_tokens"])},
        {"id": "share-cost", "label": "Internal share of cost",
         "text": share(row["internal_share_cost"])},
        {"id": "target", "label": "Target (internal requests)", "text": share(target)},
        {"id": "progress", "label": "Progress to target", "text": share(row["target_progress"])},
        {"id": "total-cost", "label": "Total cost", "text": money(row["total_cost"])},
        {"id": "external-cost", "label": "External cost", "text": money(row["external_cost"])},
        {"id": "own-cost", "label": "Own cost (GPU, idle included)",
         "text": money(row["own_cost"])},
        {"id": "idle-cost", "label": "Idle GPU cost", "text": money(row["idle_cost"])},
        {"id": "avoided", "label": "Avoided spend", "text": money(row["avoided_spend"])},
    ]


def _share_series(rows: list[dict[str, Any]], t: str) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        for key, name in (("internal_share_requests", "requests"),
                          ("internal_share_tokens", "tokens"), ("internal_share_cost", "cost")):
            if row[key] is not None:
                out.append({"t": row[t], "series": name, "share": row[key]})
    return out


def recent(rows: list[dict[str, Any]], span: dt.timedelta = dt.timedelta(hours=1)
           ) -> list[dict[str, Any]]:
    """The windows of the last hour before the newest (rows oldest first): the live chart
    is about now, not a line drawn across yesterday's gap."""
    if not rows:
        return rows

    def start(row: dict[str, Any]) -> dt.datetime:
        value = row["window_start"]
        return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)

    newest = start(rows[-1])
    return [row for row in rows if newest - start(row) <= span]


def windows(con: duckdb.DuckDBPyConnection, f: Filters) -> list[dict[str, Any]]:
    rows = _records(con, "SELECT * FROM dashboard_window_share(?, ?, ?, ?) "
                         f"ORDER BY window_start DESC LIMIT {WINDOWS_SHOWN}", f.window_params())
    return _rows_json(recent(rows[::-1]))


def overview(con: duckdb.DuckDBPyConnection, f: Filters) -> dict[str, Any]:
    row = totals(con, f)
    daily = _records(con, "SELECT * FROM dashboard_daily_share(?, ?, ?, ?, ?, ?) ORDER BY day",
                     f.params())
    target = row["target_internal_share"]
    alerts = _records(con, f"""
        SELECT "timestamp", rule, severity, "key", observed, threshold, message FROM alerts
        WHERE "date" >= coalesce(?, DATE '0001-01-01') AND "date" <= coalesce(?, DATE '9999-12-31')
        ORDER BY "timestamp" DESC LIMIT {ALERTS_SHOWN}""", [f.from_day, f.to_day])
    return {
        "kpis": kpis(row),
        "period": [_json(row["first_day"]), _json(row["last_day"])],
        "target": target,
        "windows": windows(con, f),
        "alerts": _rows_json(alerts),
        "charts": {
            "daily-share": _spec(daily, lambda: charts.share_over_time(
                _share_series(daily, "day"), target, "Internal share per day vs target",
                time_unit=", per day")),
        },
    }


def window_chart(rows: list[dict[str, Any]], target: float | None) -> dict[str, Any] | None:
    """The live window-share chart (the page redraws it from its own rows as windows close)."""
    rows = recent(rows)
    return _spec(rows, lambda: charts.share_over_time(
        _share_series(rows, "window_start"), target,
        "Internal share per closed window, last hour (live)"))


def costs(con: duckdb.DuckDBPyConnection, f: Filters) -> dict[str, Any]:
    """cost_per_operation and breakeven (all time: the idle allocation is per day and fleet)."""
    rows = _records(con, """
        SELECT operation, provider_kind, provider, model, requests, tokens, direct_cost,
               idle_allocated, loaded_cost, cost_per_request, cost_per_1k_tokens
        FROM cost_per_operation
        WHERE requests > 0 AND (? IS NULL OR operation = ?) AND (? IS NULL OR provider = ?)
        ORDER BY operation, provider_kind, provider, model""",
        [f.operation, f.operation, f.provider, f.provider])
    per_op = _records(con, """
        SELECT operation,
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'internal') AS DOUBLE)
            / nullif(sum(requests) FILTER (WHERE provider_kind = 'internal'), 0) AS own_req,
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE)
            / nullif(sum(requests) FILTER (WHERE provider_kind = 'external'), 0) AS ext_req,
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'internal') AS DOUBLE) * 1000
            / nullif(sum(tokens) FILTER (WHERE provider_kind = 'internal'), 0) AS own_tok,
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE) * 1000
            / nullif(sum(tokens) FILTER (WHERE provider_kind = 'external'), 0) AS ext_tok
        FROM cost_per_operation
        WHERE requests > 0 AND (? IS NULL OR operation = ?) AND (? IS NULL OR provider = ?)
        GROUP BY operation ORDER BY operation""",
        [f.operation, f.operation, f.provider, f.provider])
    be = _records(con, "SELECT * FROM breakeven WHERE (? IS NULL OR operation = ?) "
                       "ORDER BY operation", [f.operation, f.operation])

    def pairs(own: str, ext: str) -> list[dict[str, Any]]:
        return [{"operation": r["operation"], "kind": kind, "value": r[key]}
                for r in per_op for key, kind in ((own, charts.OWN), (ext, charts.EXTERNAL))
                if r[key] is not None]

    be_rows = [{"operation": r["operation"], "series": name, "value": r[key]}
               for r in be for key, name in (("measured_utilization", "measured utilisation"),
                                             ("breakeven_utilization", "break-even utilisation"))
               if r[key] is not None]
    return {
        "rows": _rows_json(rows),
        "breakeven": _rows_json(be),
        "charts": {
            "cost-per-request": _spec(per_op, lambda: charts.cost_per_operation(
                pairs("own_req", "ext_req"), "$ per request (log)",
                "Cost per request: own (fully loaded) vs external")),
            "cost-per-1k": _spec(per_op, lambda: charts.cost_per_operation(
                pairs("own_tok", "ext_tok"), "$ per 1k tokens (log)",
                "Cost per 1k tokens: own (fully loaded) vs external")),
            "breakeven": _spec(be_rows, lambda: charts.breakeven(
                be_rows, "GPU utilisation: measured vs break-even (own cheaper above it)")),
        },
    }


def gpus(con: duckdb.DuckDBPyConnection, f: Filters) -> dict[str, Any]:
    """Utilisation over time, idle cost and busy vs idle per GPU (time-range filter)."""
    days = ("\"date\" >= coalesce(?, DATE '0001-01-01') "
            "AND \"date\" <= coalesce(?, DATE '9999-12-31')")
    window = [f.from_day, f.to_day]
    every, _fmt, name = time_bucket(con, "gpu_samples")
    util = _records(con, f"""
        SELECT time_bucket(INTERVAL '{every}', "timestamp") AS t, gpu_uuid AS gpu,
               avg(utilization_pct) AS utilisation
        FROM gpu_samples WHERE {days} GROUP BY ALL ORDER BY t, gpu""", window)
    per_gpu = _records(con, f"""
        SELECT gpu_uuid AS gpu,
               coalesce(sum(cost) FILTER (WHERE record_type = 'idle'), 0) AS idle_cost,
               coalesce(sum(cost) FILTER (WHERE record_type <> 'idle'), 0) AS busy_cost
        FROM costs WHERE provider_kind = 'internal' AND gpu_uuid IS NOT NULL AND {days}
        GROUP BY gpu ORDER BY gpu""", window)
    busy_idle = [{"gpu": r["gpu"], "part": part, "cost": r[key]} for r in per_gpu
                 for key, part in (("busy_cost", "busy (allocated to requests)"),
                                   ("idle_cost", "idle"))]
    return {
        "rows": _rows_json(per_gpu),
        "charts": {
            "gpu-utilisation": _spec(util, lambda: charts.line_over_time(
                util, "utilisation", f"GPU utilisation (mean per {name})", "utilisation %",
                color="gpu", y_max=100.0)),
            "idle-per-gpu": _spec(per_gpu, lambda: charts.bars_by(
                per_gpu, "gpu", "idle_cost", "Idle cost per GPU ($)", "idle cost $",
                y_format=",.3~f")),
            "busy-idle": _spec(per_gpu, lambda: charts.bars_by(
                busy_idle, "gpu", "cost", "Busy vs idle GPU cost ($)", "cost $",
                color="part", y_format=",.3~f")),
        },
    }


def options(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Values the filter menus offer, from the rollups (the same dimensions as the rows)."""
    columns = ("team", "app", "operation", "provider")
    lists = ", ".join(f"list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL)" for c in columns)
    row = con.execute(f'SELECT {lists}, min("date"), max("date") FROM cost_rollup'
                      ).fetchall()[0]
    out: dict[str, list[str]] = {c: sorted(row[i] or [])[:500] for i, c in enumerate(columns)}
    out["days"] = [_json(d) for d in row[4:] if d is not None]
    return out
