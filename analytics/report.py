"""A single self-contained HTML report (inline SVG drawn here, no CDN, works offline).

Why SVG from Python: the report is mailed around and opened on laptops without network; the
charts are plain SVG elements, and a tiny inline script checks after load that every chart laid
out marks (non-zero bounding boxes) and stamps `data-drawn` on it, which the browser test reads.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import duckdb

from costpipe import analytics

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 900, 300, 56, 16, 16, 44
COLORS = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2")

_SCRIPT = """
document.addEventListener('DOMContentLoaded', function () {
  var charts = document.querySelectorAll('svg.chart'); var ok = 0;
  charts.forEach(function (svg) {
    var marks = svg.querySelectorAll('.mark'); var drawn = 0;
    marks.forEach(function (m) { var b = m.getBBox(); if (b.width > 0 || b.height > 0) drawn++; });
    svg.setAttribute('data-drawn', String(drawn));
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
svg text{font-size:11px;fill:#374151}.empty{color:#6b7280}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (float(v) - lo) / span * (out_hi - out_lo)


def _axes(y_max: float, y_fmt: str, labels: Sequence[str], x_at, y_min: float = 0.0
          ) -> list[str]:
    parts = [f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" '
             'stroke="#9ca3af"/>']
    y = _scale(y_min, y_max, H - PAD_B, PAD_T)
    for i in range(5):
        value = y_min + (y_max - y_min) * i / 4
        parts.append(f'<line x1="{PAD_L}" y1="{y(value):.1f}" x2="{W - PAD_R}" '
                     f'y2="{y(value):.1f}" stroke="#f3f4f6"/>')
        parts.append(f'<text x="{PAD_L - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f'{_esc(format(value, y_fmt))}</text>')
    step = max(1, len(labels) // 8)
    for i, label in enumerate(labels):
        if i % step == 0:
            anchor = "end" if x_at(i) > W - PAD_R - 40 else "middle"  # keep the last one inside
            parts.append(f'<text x="{x_at(i):.1f}" y="{H - PAD_B + 16}" '
                         f'text-anchor="{anchor}">{_esc(label)}</text>')
    return parts


def _legend(names: Sequence[str], colors: Sequence[str] = COLORS) -> str:
    items = [f'<rect x="{PAD_L + i * 200}" y="{H - 14}" width="10" height="10" '
             f'fill="{colors[i % len(colors)]}"/><text x="{PAD_L + i * 200 + 14}" y="{H - 5}">'
             f'{_esc(n)}</text>' for i, n in enumerate(names)]
    return "".join(items)


def _svg(chart_id: str, title: str, body: list[str]) -> str:
    # viewBox + width 100%: the chart scales to the card's full width, keeping its proportions
    return (f'<svg class="chart" id="{chart_id}" viewBox="0 0 {W} {H}" width="100%" '
            f'preserveAspectRatio="xMidYMid meet" role="img" aria-label="{_esc(title)}">'
            f'{"".join(body)}</svg>')


def line_chart(chart_id: str, title: str, labels: Sequence[str],
               series: dict[str, Sequence[float | None]], y_fmt: str = ".2f",
               y_max: float | None = None, target: float | None = None) -> str:
    values = [v for ys in series.values() for v in ys if v is not None]
    top = y_max if y_max is not None else max([*values, target or 0, 1e-12]) * 1.1
    x_at = _scale(0, max(len(labels) - 1, 1), PAD_L + 10, W - PAD_R - 10)
    y = _scale(0, top, H - PAD_B, PAD_T)
    body = _axes(top, y_fmt, labels, x_at)
    for i, (name, ys) in enumerate(series.items()):
        points = " ".join(f"{x_at(j):.1f},{y(v):.1f}" for j, v in enumerate(ys) if v is not None)
        color = COLORS[i % len(COLORS)]
        body.append(f'<polyline class="mark" data-series="{_esc(name)}" points="{points}" '
                    f'fill="none" stroke="{color}" stroke-width="2"/>')
        body += [f'<circle class="mark" cx="{x_at(j):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                 f'<title>{_esc(labels[j])}: {_esc(format(v, y_fmt))}</title></circle>'
                 for j, v in enumerate(ys) if v is not None]
    names, colors = list(series), list(COLORS[: len(series)])
    if target is not None:
        body.append(f'<line class="target" x1="{PAD_L}" y1="{y(target):.1f}" x2="{W - PAD_R}" '
                    f'y2="{y(target):.1f}" stroke="#dc2626" stroke-dasharray="6 4"/>')
        names.append(f"target {target:.0%}")
        colors.append("#dc2626")
    body.append(_legend(names, colors))
    return _svg(chart_id, title, body)


def bar_chart(chart_id: str, title: str, labels: Sequence[str],
              series: dict[str, Sequence[float | None]], y_fmt: str = ".4f") -> str:
    values = [v for ys in series.values() for v in ys if v is not None]
    top = max([*values, 0.0]) * 1.1 or 1e-12
    bottom = min([*values, 0.0]) * 1.1
    n_series = max(len(series), 1)
    slot = (W - PAD_L - PAD_R) / max(len(labels), 1)
    bar_w = min(max(2.0, slot * 0.8 / n_series), 120.0)  # one day alone is not a wall
    x_at = lambda i: PAD_L + slot * (i + 0.5)  # noqa: E731
    y = _scale(bottom, top, H - PAD_B, PAD_T)
    body = _axes(top, y_fmt, labels, x_at, bottom)
    zero = y(0)
    for s, (name, ys) in enumerate(series.items()):
        for i, v in enumerate(ys):
            if v is None:
                continue
            x = PAD_L + slot * (i + 0.5) + (s - n_series / 2) * bar_w
            top_y = min(y(v), zero)
            body.append(f'<rect class="mark" x="{x:.1f}" y="{top_y:.1f}" width="{bar_w:.1f}" '
                        f'height="{max(abs(y(v) - zero), 0.5):.1f}" '
                        f'fill="{COLORS[s % len(COLORS)]}"><title>{_esc(labels[i])} {_esc(name)}: '
                        f'{_esc(format(v, y_fmt))}</title></rect>')
    body.append(_legend(list(series)))
    return _svg(chart_id, title, body)


def _f(value: Any) -> float | None:
    return None if value is None else float(value)


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
    share_every, share_fmt, share_name = time_bucket(con, "costs", "record_type <> 'idle'")
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
    util_every, util_fmt, util_name = time_bucket(con, "gpu_samples")
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

    cards = [
        (f"Internal share over time vs target (per {share_name}, UTC)",
         chart_or_empty(share, lambda: line_chart(
            "dependency-share", "Internal share", [r[0].strftime(share_fmt) for r in share],
            {"internal share of requests": [_f(r[1]) for r in share],
             "internal share of cost": [_f(r[2]) for r in share]},
            y_fmt=".0%", y_max=1.0, target=target))),
        ("Cost per request by operation: own (fully loaded) vs external",
         chart_or_empty(per_op, lambda: bar_chart(
             "cost-per-operation", "Cost per request", [r[0] for r in per_op],
             {"own, fully loaded $/request": [_f(r[1]) for r in per_op],
              "external $/request": [_f(r[2]) for r in per_op]}, y_fmt=".5f"))),
        ("Avoided spend per day (shadow price minus own cost, $)",
         chart_or_empty(avoided, lambda: bar_chart(
             "avoided-spend", "Avoided spend", [str(r[0]) for r in avoided],
             {"avoided spend $": [_f(r[1]) for r in avoided]}, y_fmt=",.2f"))),
        (f"GPU utilisation (mean per {util_name}, %, UTC)", chart_or_empty(util, lambda: line_chart(
            "gpu-utilisation", "GPU utilisation", [r[0].strftime(util_fmt) for r in util],
            {"utilisation %": [_f(r[1]) for r in util]}, y_fmt=".0f", y_max=100.0))),
        ("Idle GPU cost per day ($)", chart_or_empty(idle, lambda: bar_chart(
            "idle-cost", "Idle cost", [str(r[0]) for r in idle],
            {"idle cost $": [_f(r[1]) for r in idle]}, y_fmt=",.2f"))),
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
