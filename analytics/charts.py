"""Every chart of the report and the dashboard, defined once as a Vega-Lite spec (altair).

Why one module: the offline report renders these specs to inline SVG in Python (vl-convert,
no browser, no network) and the dashboard hands the very same specs to the Vega JavaScript it
serves itself, so a chart cannot look or compute differently in the two places. Data goes in
as plain rows (`alt.Data(values=...)`): no pandas, and the spec is self-contained JSON.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import altair as alt

Rows = Sequence[dict[str, Any]]
WIDTH_CONTAINER = "container"
REPORT_WIDTH = 820
HEIGHT = 240
OWN, EXTERNAL = "own (fully loaded)", "external"
PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2"]


def _plain(value: Any) -> Any:
    """JSON-safe: Decimal -> float, datetimes -> ISO 8601 (UTC) strings."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _data(rows: Rows) -> alt.Data:
    return alt.Data(values=[{k: _plain(v) for k, v in row.items()} for row in rows])


def _base(rows: Rows, title: str, width: int | str) -> alt.Chart:
    return alt.Chart(_data(rows), title=title).properties(width=width, height=HEIGHT)


def share_over_time(rows: Rows, target: float | None, title: str,
                    width: int | str = WIDTH_CONTAINER, time_unit: str = "") -> alt.LayerChart:
    """Internal share per time bucket (rows: t, series, share) with the target as a rule."""
    x = alt.X("t:T", title=f"time (UTC){time_unit}")
    lines = _base(rows, title, width).mark_line(point=True).encode(
        x=x, y=alt.Y("share:Q", title="internal share", axis=alt.Axis(format=".0%"),
                     scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("series:N", title=None, scale=alt.Scale(range=PALETTE),
                        legend=alt.Legend(orient="bottom")),
        tooltip=[alt.Tooltip("t:T", format="%Y-%m-%d %H:%M:%S"), "series:N",
                 alt.Tooltip("share:Q", format=".1%")])
    layers: list[alt.Chart] = [lines]
    if target is not None:
        rule = alt.Chart(alt.Data(values=[{"target": float(target)}])).mark_rule(
            color="#dc2626", strokeDash=[6, 4]).encode(y="target:Q")
        layers.append(rule)
    return alt.layer(*layers).properties(width=width, height=HEIGHT)


def cost_per_operation(rows: Rows, measure: str, title: str,
                       width: int | str = WIDTH_CONTAINER) -> alt.Chart:
    """Own vs external per operation (rows: operation, kind, value) as dots on a log axis.

    Log scale: own models are often 100x cheaper per request, so on a linear axis the own value
    is invisible; on a log axis both are readable and the distance between the dots is the
    ratio. Dots, not bars: a bar on a log axis has no zero to start from.
    """
    return _base([r for r in rows if r.get("value")], title, width).mark_point(
        filled=True, size=120, opacity=1).encode(
        y=alt.Y("operation:N", title=None),
        x=alt.X("value:Q", title=measure, scale=alt.Scale(type="log")),
        color=alt.Color("kind:N", title=None, scale=alt.Scale(domain=[OWN, EXTERNAL],
                                                              range=PALETTE[:2]),
                        legend=alt.Legend(orient="bottom")),
        shape=alt.Shape("kind:N", title=None, scale=alt.Scale(domain=[OWN, EXTERNAL],
                                                              range=["circle", "square"])),
        tooltip=["operation:N", "kind:N", alt.Tooltip("value:Q", format=".6g")])


def breakeven(rows: Rows, title: str, width: int | str = WIDTH_CONTAINER) -> alt.LayerChart:
    """Measured vs break-even GPU utilisation per operation (rows: operation, series, value)."""
    bars = _base(rows, title, width).mark_bar().encode(
        x=alt.X("operation:N", title=None), xOffset=alt.XOffset("series:N"),
        y=alt.Y("value:Q", title="GPU utilisation", axis=alt.Axis(format=".0%")),
        color=alt.Color("series:N", title=None, scale=alt.Scale(range=PALETTE[2:]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["operation:N", "series:N", alt.Tooltip("value:Q", format=".1%")])
    return alt.layer(bars).properties(width=width, height=HEIGHT)


def bars_by(rows: Rows, x: str, y: str, title: str, y_title: str, *, x_type: str = "N",
            y_format: str = ",.2f", color: str | None = None,
            width: int | str = WIDTH_CONTAINER) -> alt.Chart:
    """Bars of `y` per `x` (optionally stacked by `color`)."""
    encoding: dict[str, Any] = {
        "x": alt.X(f"{x}:{x_type}", title=None),
        "y": alt.Y(f"{y}:Q", title=y_title, axis=alt.Axis(format=y_format)),
        "tooltip": [f"{x}:{x_type}", alt.Tooltip(f"{y}:Q", format=y_format)],
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N", title=None,
                                      scale=alt.Scale(range=PALETTE),
                                      legend=alt.Legend(orient="bottom"))
        encoding["tooltip"].append(f"{color}:N")
    else:
        encoding["color"] = alt.value(PALETTE[0])
    return _base(rows, title, width).mark_bar().encode(**encoding)


def line_over_time(rows: Rows, y: str, title: str, y_title: str, *, y_format: str = ".0f",
                   color: str | None = None, y_max: float | None = None,
                   width: int | str = WIDTH_CONTAINER, time_unit: str = "") -> alt.Chart:
    """A value over time (rows: t, y[, color])."""
    scale = alt.Scale(domain=[0, y_max]) if y_max is not None else alt.Scale(zero=True)
    encoding: dict[str, Any] = {
        "x": alt.X("t:T", title=f"time (UTC){time_unit}"),
        "y": alt.Y(f"{y}:Q", title=y_title, axis=alt.Axis(format=y_format), scale=scale),
        "tooltip": [alt.Tooltip("t:T", format="%Y-%m-%d %H:%M:%S"),
                    alt.Tooltip(f"{y}:Q", format=y_format)],
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N", title=None, scale=alt.Scale(range=PALETTE),
                                      legend=alt.Legend(orient="bottom"))
    else:
        encoding["color"] = alt.value(PALETTE[0])
    return _base(rows, title, width).mark_line(point=True).encode(**encoding)


def spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart as a Vega-Lite JSON spec (what the dashboard page embeds)."""
    return chart.to_dict()


def svg(chart: alt.TopLevelMixin) -> str:
    """The chart as a static SVG string (what the offline report inlines); no network."""
    import vl_convert

    return vl_convert.vegalite_to_svg(chart.to_dict())
