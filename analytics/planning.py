"""Plan to target: the cheapest set of moves in-house that reaches a target internal share.

Every candidate is priced by the capacity-aware `whatif_moves` SQL macro
(`analytics/sql/50_whatif.sql`, method in docs/planning.md), so the plan and the what-if can
never disagree. Candidates: fill the needed requests greedily in the order of saving per busy
GPU-second (economic operations first: those whose own cost on new capacity is below their
external price), the same by saving per request, and every single operation that can reach the
target alone; the cheapest wins. GPUs come in whole units, so greedy alone is not optimal; with
the single-operation candidates the plan is never dearer than any one-operation move.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl

from costpipe.core.settings import Settings


@dataclass
class Plan:
    """A plan's moves and what they cost; `reachable` False means the target is out of reach."""

    target: float
    current_share: float | None
    reachable: bool
    already_met: bool
    moves: pl.DataFrame  # operation, pct, requests_moved, economic
    outcome: dict[str, Any] = field(default_factory=dict)  # one whatif_moves row
    notes: list[str] = field(default_factory=list)


def _whatif(con: duckdb.DuckDBPyConnection, moves: dict[str, float]) -> dict[str, Any]:
    ops, pcts = list(moves), [float(p) for p in moves.values()]
    result = con.execute("SELECT * FROM whatif_moves(?::VARCHAR[], ?::DOUBLE[])", [ops, pcts])
    names = [d[0] for d in result.description]
    rows = result.fetchall()
    return dict(zip(names, rows[0], strict=True)) if rows else {}


def _candidates(ops: pl.DataFrame, needed: float) -> list[dict[str, float]]:
    """Moves (operation -> pct of its external requests) that each reach `needed` requests."""
    orders = [
        ops.sort(["economic", "saving_per_gpu_second", "operation"],
                 descending=[True, True, False]),
        ops.sort(["economic", "saving_per_request", "operation"],
                 descending=[True, True, False]),
    ]
    out: list[dict[str, float]] = []
    for ordered in orders:
        out.append(_fill(ordered, needed))
    for row in ops.iter_rows(named=True):
        if row["external_requests"] >= needed:
            out.append({row["operation"]: 100.0 * needed / row["external_requests"]})
    return out


def _fill(ordered: pl.DataFrame, needed: float) -> dict[str, float]:
    moves: dict[str, float] = {}
    left = needed
    for row in ordered.iter_rows(named=True):
        if left <= 0:
            break
        take = min(left, row["external_requests"])
        moves[row["operation"]] = 100.0 * take / row["external_requests"]
        left -= take
    return moves


def plan_to_target(con: duckdb.DuckDBPyConnection, settings: Settings,
                   target: float | None = None) -> Plan:
    """The cheapest measured way to reach `target` (default: settings.target_internal_share)."""
    target = settings.target_internal_share if target is None else target
    capacity = con.sql("SELECT * FROM move_ranking ORDER BY operation").pl()
    requests = int(capacity["external_requests"].sum() + capacity["own_requests"].sum()) \
        if capacity.height else 0
    own = int(capacity["own_requests"].sum()) if capacity.height else 0
    empty = pl.DataFrame(schema={"operation": pl.Utf8, "pct": pl.Float64,
                                 "requests_moved": pl.Float64, "economic": pl.Boolean})
    if requests == 0:
        return Plan(target, None, False, False, empty, notes=["the lake holds no requests"])
    share = own / requests
    needed = target * requests - own
    if needed <= 0:
        return Plan(target, share, True, True, empty, _whatif(con, {}),
                    [f"the internal share is {share:.1%}, already at or above {target:.1%}"])
    movable = capacity.filter(pl.col("movable") & pl.col("gpu_seconds_per_request").is_not_null()
                              & (pl.col("external_requests") > 0))
    notes = _unmovable_notes(capacity)
    if movable.height == 0 or movable["external_requests"].sum() < needed:
        most = (own + (movable["external_requests"].sum() if movable.height else 0)) / requests
        notes.append(f"target {target:.1%} cannot be reached with the movable operations "
                     f"(planning.movable_operations): moving all of them gives {most:.1%}")
        moves = _fill(movable.sort("operation"), float("inf")) if movable.height else {}
        return Plan(target, share, False, False, _moves_table(movable, moves),
                    _whatif(con, moves), notes)
    best: tuple[dict[str, float], dict[str, Any]] | None = None
    for moves in _candidates(movable, needed):
        outcome = _whatif(con, moves)
        if best is None or outcome["new_total_cost"] < best[1]["new_total_cost"]:
            best = (moves, outcome)
    assert best is not None
    table = _moves_table(movable, best[0])
    dear = sorted(table.filter(~pl.col("economic"))["operation"].to_list())
    if dear:
        notes.append("the target needs moving operations whose own cost on new GPUs exceeds "
                     f"their external price: {', '.join(dear)}")
    return Plan(target, share, True, False, table, best[1], notes)


def _moves_table(movable: pl.DataFrame, moves: dict[str, float]) -> pl.DataFrame:
    rows = movable.filter(pl.col("operation").is_in(list(moves)))
    pct = pl.Series("pct", [moves[op] for op in rows["operation"]], dtype=pl.Float64)
    return rows.with_columns(pct).select(
        pl.col("operation"), pl.col("pct"),
        (pl.col("external_requests") * pl.col("pct") / 100).alias("requests_moved"),
        pl.col("economic"),
        pl.col("external_cost_per_request"), pl.col("own_marginal_cost_per_request"),
        pl.col("own_on_new_capacity_cost_per_request"),
    ).sort("operation")


def _unmovable_notes(capacity: pl.DataFrame) -> list[str]:
    notes = []
    kept = sorted(capacity.filter(~pl.col("movable"))["operation"].to_list())
    if kept:
        notes.append(f"kept external (not in planning.movable_operations): {', '.join(kept)}")
    blind = capacity.filter(pl.col("movable") & pl.col("gpu_seconds_per_request").is_null()
                            & (pl.col("external_requests") > 0))["operation"].to_list()
    blind.sort()
    if blind:
        notes.append("no own model measured yet, so no GPU-seconds per request: "
                     f"{', '.join(blind)}")
    return notes
