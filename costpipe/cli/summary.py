"""The cost/dependency summary the main job prints, and its reconciliation checks.

Every table is one SQL statement over the lake views, printed with the statement itself, so a
user can paste it into `costpipe sql` and get the same numbers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from costpipe.core.settings import Settings

if TYPE_CHECKING:
    from costpipe.collectors.simulator import SimulationSummary

SHARE_SQL = """\
SELECT operation, sum(requests) AS requests,
       sum(external_requests) / sum(requests) AS external_share_requests,
       sum(external_cost) / nullif(sum(cost), 0) AS external_share_cost,
       1 - sum(external_requests) / sum(requests) AS internal_share_requests,
       any_value(target_internal_share) AS target_internal_share
FROM dependency_share GROUP BY operation ORDER BY operation"""

COST_SQL = """\
SELECT operation, provider_kind, sum(requests) AS requests,
       sum(loaded_cost) AS cost,
       sum(loaded_cost) / nullif(sum(requests), 0) AS cost_per_request,
       sum(loaded_cost) * 1000 / nullif(sum(tokens), 0) AS cost_per_1k_tokens,
       sum(shadow_cost) FILTER (WHERE provider_kind = 'internal') / nullif(sum(requests), 0)
           AS shadow_price_per_request
FROM cost_per_operation GROUP BY operation, provider_kind ORDER BY operation, provider_kind"""

TOTALS_SQL = """\
SELECT count(*) FILTER (WHERE record_type <> 'idle') AS requests,
       sum(cost) AS total_cost,
       coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost,
       coalesce(sum(cost) FILTER (WHERE provider_kind = 'internal'), 0) AS own_cost,
       coalesce(sum(cost) FILTER (WHERE record_type = 'idle'), 0) AS idle_cost,
       (SELECT sum(avoided_spend) FROM avoided_spend) AS avoided_spend
FROM costs"""

VOICE_SQL = """\
SELECT c.operation,
       count(*) FILTER (WHERE c.provider_kind = 'external') AS external_requests,
       sum(c.input_characters) FILTER (WHERE c.provider_kind = 'external') AS external_characters,
       coalesce(sum(c.cost) FILTER (WHERE c.provider_kind = 'external'), 0) AS external_spend,
       count(*) FILTER (WHERE c.pricing_status = 'unpriced_unit') AS unpriced_unit,
       any_value(a.avoided_spend) AS avoided_spend
FROM costs c
LEFT JOIN (SELECT operation, sum(avoided_spend) AS avoided_spend FROM avoided_spend
           GROUP BY operation) a USING (operation)
WHERE c.record_type = 'request' AND c.operation IN (
    SELECT DISTINCT operation FROM costs WHERE input_characters IS NOT NULL
        OR input_audio_seconds IS NOT NULL OR output_audio_seconds IS NOT NULL)
GROUP BY c.operation ORDER BY c.operation"""

ALERTS_SQL = """\
SELECT timestamp, rule, key, message FROM alerts ORDER BY timestamp DESC LIMIT 10"""


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Decimal):
        return f"{value:,.6f}" if abs(value) >= 1 else f"{value:.6g}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(con: Any, title: str, sql: str, percent: set[str] | None = None) -> Table:
    result = con.execute(sql)
    names = [d[0] for d in result.description]
    statement = " ".join(sql.split())
    table = Table(title=title, title_justify="left", caption=f'costpipe sql "{statement}"',
                  caption_justify="left")
    for name in names:
        table.add_column(name, justify="left" if name in ("operation", "provider_kind", "rule",
                                                           "key", "message") else "right")
    for row in result.fetchall():
        cells = []
        for name, value in zip(names, row, strict=True):
            if percent and name in percent and value is not None:
                cells.append(f"{float(value):.1%}")
            else:
                cells.append(_fmt(value))
        table.add_row(*cells)
    return table


def print_summary(settings: Settings, console: Console,
                  simulated: SimulationSummary | None = None) -> None:
    from costpipe import analytics

    con = analytics.connect(settings)
    try:
        console.print()
        console.print(_table(
            con, f"Dependency share by operation (target: ≥ {settings.target_internal_share:.0%}"
            " of requests internal)", SHARE_SQL,
            {"external_share_requests", "external_share_cost", "internal_share_requests",
             "target_internal_share"}))
        console.print(_table(con, "Cost per operation, own (fully loaded incl. idle GPU) vs "
                                  "external (USD)", COST_SQL))
        console.print(_table(con, "Totals and avoided spend (USD)", TOTALS_SQL))
        console.print(_table(con, "Voice: external spend (priced per character / audio "
                                  "second) and avoided spend (USD)", VOICE_SQL))
        console.print(_table(con, "Recent alerts", ALERTS_SQL))
    finally:
        con.close()
    if simulated is not None:
        console.print(
            f"simulator sent {simulated.requests:,} requests "
            f"({simulated.internal_requests:,} internal) and {simulated.gpu_samples:,} GPU "
            f"samples; expected external list cost {simulated.expected_external_list_cost} USD")


def reconcile(settings: Settings, simulated: SimulationSummary) -> list[str]:
    """Check the lake against what the simulator sent; returns problems (empty = exact)."""
    from costpipe import analytics

    con = analytics.connect(settings)
    problems: list[str] = []
    try:
        window = [simulated.start, simulated.end]
        count, list_cost = con.execute(
            "SELECT count(*), coalesce(sum(list_cost) FILTER (WHERE provider_kind = 'external'),"
            " 0) FROM costs WHERE record_type <> 'idle' AND timestamp >= ? AND timestamp < ?",
            window).fetchone()
        if count != simulated.requests:
            problems.append(f"lake holds {count:,} requests of the run, simulator sent "
                            f"{simulated.requests:,}")
        if Decimal(list_cost) != simulated.expected_external_list_cost:
            problems.append(f"external list cost in the lake {list_cost} != simulator's "
                            f"expectation {simulated.expected_external_list_cost}")
        lake_cost, window_cost = con.execute(
            "SELECT (SELECT coalesce(sum(cost), 0) FROM costs), "
            "(SELECT coalesce(sum(cost), 0) FROM windows)").fetchone()
        if lake_cost != window_cost:
            problems.append(f"Σ cost in closed windows {window_cost} != Σ cost records "
                            f"{lake_cost}")
    finally:
        con.close()
    return problems
