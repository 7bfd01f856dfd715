"""A single self-contained HTML report (inline SVG, no CDN, works offline).

Why SVG rendered in Python: the report is mailed around and opened on laptops without network.
The charts are the dashboard's own Vega-Lite specs (analytics/charts.py) rendered to static SVG
by vl-convert, so page and report draw the same chart; a tiny inline script checks after load
that every chart laid out marks (non-zero bounding boxes) and stamps `data-drawn` on it, which
the browser test reads.
"""

from __future__ import annotations

import datetime as dt
import html
from decimal import Decimal
from typing import Any

import duckdb

from costpipe import analytics
from costpipe.analytics import charts

_SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var charts = document.querySelectorAll('figure.chart'); var ok = 0;
  charts.forEach(function (fig) {
    var marks = fig.querySelectorAll('svg .role-mark > *'); var drawn = 0;
    marks.forEach(function (m) { var b = m.getBBox(); if (b.width > 0 || b.height > 0) drawn++; });
    fig.setAttribute('data-drawn', String(drawn));
    if (drawn > 0) ok++;
  });
  document.body.setAttribute('data-charts-drawn', String(ok));
  document.body.setAttribute('data-charts-total', String(charts.length));
});
"""

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111;max-width:1400px}
h1{font-size:22px}h2{font-size:16px;margin:0 0 8px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(660px,1fr));gap:20px}
.card{border:1px solid #e5e7eb;border-radius:8px;padding:12px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:20px}
.tile{border:1px solid #e5e7eb;border-radius:8px;padding:8px 14px}
.tile b{display:block;font-size:18px}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid #eee;padding:4px 6px;text-align:left}
figure.chart{margin:0}figure.chart svg{width:100%;height:auto}.empty{color:#6b7280}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(chart_id: str, chart: Any) -> str:
    """A chart of analytics/charts.py as inline SVG (rendered here: the report works offline)."""
    return f'<figure class="chart" id="{chart_id}">{charts.svg(chart)}</figure>'


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


# (longest span of data, bucket, label format, name): the time axis adapts to the data, so a
# 75-second demo shows a line rather than one dot, and a month stays readable.
BUCKETS = (
    (dt.timedelta(minutes=15), "10 seconds", "%H:%M:%S", "10 s"),
    (dt.timedelta(hours=3), "1 minute", "%H:%M", "minute"),
    (dt.timedelta(days=3), "1 hour", "%m-%d %H:00", "hour"),
    (None, "1 day", "%Y-%m-%d", "day"),
)


def time_bucket(con: duckdb.DuckDBPyConnection, view: str, where: str = "TRUE"
                ) -> tuple[str, str, str]:
    """(DuckDB interval, label strftime, name) of the bucket for the span of `view`'s rows."""
    first, last = con.execute(
        f'SELECT min("timestamp"), max("timestamp") FROM {view} WHERE {where}').fetchone()
    span = (last - first) if first is not None and last is not None else dt.timedelta(0)
    for longest, interval, fmt, name in BUCKETS:
        if longest is None or span < longest:
            return interval, fmt, name
    raise AssertionError("unreachable: the last bucket has no limit")


def _outlook_section(con: duckdb.DuckDBPyConnection) -> str:
    """Forecast, price exposure and payback (analytics/forecast.py, analytics/exposure.py)."""
    from costpipe.analytics.exposure import NoInvestmentsError, payback, price_exposure
    from costpipe.analytics.forecast import forecast, share_trend
    from costpipe.core.settings import get_settings

    settings = get_settings()
    last = con.execute('SELECT max("date") FROM costs').fetchall()[0][0]
    if last is None:
        return ""
    as_of = last + dt.timedelta(days=1)  # every recorded day counts as observed ...
    if as_of.month != last.month:  # ... unless that starts the next month
        as_of = last
    totals = forecast(con, settings, today=as_of, by=("provider_kind",))
    rows = "".join(
        f"<tr><td>{_esc(r['provider_kind'])}</td><td>${float(r['month_to_date']):,.2f}</td>"
        f"<td>${r['projected']:,.2f}</td><td>"
        + ("–" if r["lower"] is None else f"${r['lower']:,.2f} – ${r['upper']:,.2f}")
        + "</td></tr>" for r in totals.iter_rows(named=True))
    trend = share_trend(con, settings, today=as_of)
    share = ("" if trend.get("projected_share") is None else
             f"<p>Internal share of requests heading for <b>{trend['projected_share']:.1%}"
             f"</b> at month end (target {settings.target_internal_share:.0%}).</p>")
    exposure = "".join(
        f"<tr><td>{_esc(r['provider'])}</td><td>${float(r['external_cost']):,.2f}</td>"
        f"<td>${float(r['external_delta']):,.2f}</td>"
        f"<td>${float(r['avoided_spend_delta'] or 0):,.2f}</td></tr>"
        for r in price_exposure(con, settings, 10).iter_rows(named=True))
    try:
        pay = payback(con, settings)
        payback_line = (f"<p>Payback of ${float(pay.investment):,.0f} invested: "
                        f"{pay.trend.payback_month or 'not at today' + chr(39) + 's trend'}"
                        " at today's trend (costpipe payback).</p>")
    except NoInvestmentsError:
        payback_line = ("<p class='empty'>Payback: no [[planning.investments]] in the "
                        "settings.</p>")
    return ("<div class='card' style='margin-top:20px'><h2>Outlook: month-end forecast "
            f"(as of the end of {last}; costpipe forecast)</h2><table><thead><tr><th>kind</th>"
            "<th>month to date</th><th>projected</th><th>95 % interval</th></tr></thead>"
            f"<tbody id='forecast'>{rows}</tbody></table>{share}"
            "<h2>Price exposure: +10 % at one provider (costpipe exposure)</h2><table><thead>"
            "<tr><th>provider</th><th>bill (30 days)</th><th>bill moves by</th>"
            "<th>avoided spend moves by</th></tr></thead><tbody id='exposure'>"
            f"{exposure}</tbody></table>{payback_line}</div>")


def _plan_section(con: duckdb.DuckDBPyConnection, target: float | None) -> str:
    """The plan to target as a table (analytics/planning.py, docs/planning.md)."""
    from costpipe.analytics.planning import plan_to_target
    from costpipe.core.settings import get_settings

    settings = get_settings()
    plan = plan_to_target(con, settings, None if target is None else float(target))
    out = plan.outcome
    hours = out.get("period_hours") or 0.0
    per_month = float(settings.planning.gpu_hours_per_month) / hours if hours else 0.0
    rows = "".join(
        f"<tr><td>{_esc(r['operation'])}</td><td>{r['pct']:.1f} %</td>"
        f"<td>{r['requests_moved'] * per_month:,.0f}</td>"
        f"<td>{r['external_cost_per_request']:.6f}</td>"
        f"<td>{r['own_marginal_cost_per_request']:.6f}</td>"
        f"<td>{'yes' if r['economic'] else 'no'}</td></tr>"
        for r in plan.moves.iter_rows(named=True)
    ) or '<tr><td colspan="6" class="empty">No moves needed or possible.</td></tr>'
    summary = ""
    if out:
        summary = (f"<p>GPUs to add: <b>{out['gpus_to_add']}</b>; resulting internal share "
                   f"<b>{(out['new_internal_share_requests'] or 0):.1%}</b>; monthly cost "
                   f"change <b>${out['monthly_cost_delta'] or 0:+,.2f}</b> (capacity-aware) vs "
                   f"${out['avg_monthly_cost_delta'] or 0:+,.2f} at average own cost.</p>")
    notes = "".join(f"<p class='empty'>{_esc(n)}</p>" for n in plan.notes)
    return ("<div class='card' style='margin-top:20px'><h2>Plan to the target "
            f"({plan.target:.0%} internal requests; costpipe plan)</h2><table><thead><tr>"
            "<th>operation</th><th>move</th><th>requests / month</th><th>external $/req</th>"
            "<th>own $/req (marginal)</th><th>economic</th></tr></thead><tbody id='plan'>"
            f"{rows}</tbody></table>{summary}{notes}</div>")


def build(con: duckdb.DuckDBPyConnection | None = None, target: float | None = None) -> str:
    """Render the whole report as one HTML string."""
    con = con or analytics.connect()
    summary = analytics.summary(con)
    target = summary["target_internal_share"] if target is None else target
    # As dependency_share: requests count request records, cost counts all but idle rows.
    share_every, _fmt, share_name = time_bucket(con, "costs", "record_type <> 'idle'")
    share = _rows(con, f"""
        SELECT time_bucket(INTERVAL '{share_every}', "timestamp") AS t,
               1 - count(*) FILTER (WHERE record_type = 'request'
                                    AND provider_kind = 'external')
                   / nullif(count(*) FILTER (WHERE record_type = 'request'), 0),
               1 - CAST(sum(cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE)
                   / nullif(CAST(sum(cost) AS DOUBLE), 0)
        FROM costs WHERE record_type <> 'idle' GROUP BY t ORDER BY t""")
    per_op = _rows(con, """
        SELECT operation,
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'internal') AS DOUBLE)
            / nullif(sum(requests) FILTER (WHERE provider_kind = 'internal'), 0),
          CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE)
            / nullif(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)
        FROM cost_per_operation WHERE requests > 0 GROUP BY operation ORDER BY operation""")
    avoided = _rows(con, "SELECT day, CAST(sum(avoided_spend) AS DOUBLE) FROM avoided_spend "
                         "GROUP BY day ORDER BY day")
    util_every, _fmt, util_name = time_bucket(con, "gpu_samples")
    util = _rows(con, f"""
        SELECT time_bucket(INTERVAL '{util_every}', "timestamp") AS t, avg(utilization_pct)
        FROM gpu_samples GROUP BY t ORDER BY t""")
    idle = _rows(con, 'SELECT "date", CAST(sum(cost) AS DOUBLE) FROM idle_cost '
                      'GROUP BY "date" ORDER BY "date"')
    alerts = _rows(con, """
        SELECT "timestamp", rule, severity, "key", observed, threshold, message
        FROM alerts ORDER BY "timestamp" DESC LIMIT 50""")

    def chart_or_empty(rows: list[Any], make) -> str:
        return make() if rows else '<p class="empty">No data in the lake yet.</p>'

    width = charts.REPORT_WIDTH
    share_rows = [{"t": r[0], "series": name, "share": r[i]}
                  for r in share for i, name in ((1, "internal share of requests"),
                                                 (2, "internal share of cost"))
                  if r[i] is not None]
    op_rows = [{"operation": r[0], "kind": kind, "value": r[i]}
               for r in per_op for i, kind in ((1, charts.OWN), (2, charts.EXTERNAL))
               if r[i] is not None]
    cards = [
        (f"Internal share over time vs target (per {share_name}, UTC)",
         chart_or_empty(share, lambda: _figure("dependency-share", charts.share_over_time(
             share_rows, None if target is None else float(target), "Internal share",
             width=width, time_unit=f", per {share_name}")))),
        ("Cost per request by operation: own (fully loaded) vs external (log scale)",
         chart_or_empty(per_op, lambda: _figure("cost-per-operation", charts.cost_per_operation(
             op_rows, "$ per request (log)", "Cost per request", width=width)))),
        ("Avoided spend per day (shadow price minus own cost, $)",
         chart_or_empty(avoided, lambda: _figure("avoided-spend", charts.bars_by(
             [{"day": r[0], "avoided": r[1]} for r in avoided], "day", "avoided",
             "Avoided spend", "avoided spend $", width=width)))),
        (f"GPU utilisation (mean per {util_name}, %, UTC)",
         chart_or_empty(util, lambda: _figure("gpu-utilisation", charts.line_over_time(
             [{"t": r[0], "utilisation": r[1]} for r in util], "utilisation",
             "GPU utilisation", "utilisation %", y_max=100.0, width=width,
             time_unit=f", per {util_name}")))),
        ("Idle GPU cost per day ($)", chart_or_empty(idle, lambda: _figure(
            "idle-cost", charts.bars_by([{"day": r[0], "idle": r[1]} for r in idle], "day",
                                        "idle", "Idle cost", "idle cost $", width=width)))),
    ]
    alert_rows = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in alerts
    ) or '<tr><td colspan="7" class="empty">No alerts.</td></tr>'

    def money(v: Decimal | None) -> str:
        return f"${float(v or 0):,.2f}"

    internal = summary["internal_share_requests"]
    tiles = [
        ("Requests", f"{summary['requests']:,}"),
        ("Total cost", money(summary["total_cost"])),
        ("External cost", money(summary["external_cost"])),
        ("Idle GPU cost", money(summary["idle_cost"])),
        ("Avoided spend", money(summary["avoided_spend"])),
        ("Internal share (requests)", "n/a" if internal is None else f"{internal:.1%}"),
        ("Target", "n/a" if target is None else f"{float(target):.0%}"),
    ]
    plan = _plan_section(con, target) + _outlook_section(con)
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    period = f"{summary['first_day'] or '-'} to {summary['last_day'] or '-'}"
    return "".join([
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>costpipe report</title><style>", _CSS, "</style></head><body>",
        f"<h1>costpipe: cost and dependency report</h1><p>Period {_esc(period)}; "
        f"generated {generated}.</p><div class='tiles'>",
        "".join(f"<div class='tile'>{_esc(k)}<b>{_esc(v)}</b></div>" for k, v in tiles),
        "</div><div class='grid'>",
        "".join(f"<div class='card'><h2>{_esc(t)}</h2>{c}</div>" for t, c in cards),
        "</div><div class='card' style='margin-top:20px'><h2>Recent alerts</h2><table><thead>"
        "<tr><th>time</th><th>rule</th><th>severity</th><th>key</th><th>observed</th>"
        "<th>threshold</th><th>message</th></tr></thead><tbody id='alerts'>", alert_rows,
        "</tbody></table></div>", plan, "<script>", _SCRIPT, "</script></body></html>",
    ])
