"""Bounded merger/alert state: eviction must not change any total, replays stay idempotent.

The merger is driven with hand-made partial tables (the stage-1 shape) so hypothesis can
explore orders cheaply: per-source offsets rise (as each source sends), replays come later.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from costpipe.core.money import MONEY
from costpipe.core.settings import Settings
from costpipe.schemas.records import WINDOW_AGGREGATE
from costpipe.streams.alerts import AlertEngine
from costpipe.streams.windows import COUNTS, KEY_COLUMNS, LATE_REVISION_BASE, WindowMerger

W = 10_000_000  # 10 s windows, in µs
SOURCES = ("requests:0", "requests:1", "gpuwork:0")
KEYS = (("chat", "external", "openai", "gpt-4o"), ("chat", "internal", "own", "llama"),
        ("embed", "external", "openai", "e3"))


def _settings(horizon: int, requests_partitions: int = 2) -> Settings:
    return Settings.model_validate({
        "windows": {"seconds": 10, "allowed_lateness_seconds": 5,
                    "correction_horizon_seconds": horizon},
        "topics": {"partitions": requests_partitions}})


def _partial(rows: list[tuple[int, int, int]]) -> pa.Table:
    """rows: (window index, key index, amount) -> a stage-1 partial table."""
    cols: dict[str, list[Any]] = {c: [] for c in (*KEY_COLUMNS, *COUNTS, "cost", "shadow",
                                                  "sk_list", "sk_count_list")}
    for window, k, amount in rows:
        cols["window_start"].append(window * W)
        for name, value in zip(KEY_COLUMNS[1:], KEYS[k], strict=True):
            cols[name].append(value)
        for i, c in enumerate(COUNTS):
            cols[c].append(amount * (i + 1))
        cols["cost"].append(Decimal(amount * 5).scaleb(-12))
        cols["shadow"].append(Decimal(amount * 6).scaleb(-12))
        cols["sk_list"].append([100 + amount % 7])
        cols["sk_count_list"].append([amount])
    return pa.table({**cols, "cost": pa.array(cols["cost"], MONEY),
                     "shadow": pa.array(cols["shadow"], MONEY)})


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[str, int, int, pa.Table, bool]]:
    """(source, source offset, watermark µs, partial, restart before) in delivery order."""
    sent: list[tuple[str, int, int, pa.Table]] = []
    offsets = dict.fromkeys(SOURCES, 0)
    now = 0
    for _ in range(draw(st.integers(5, 60))):
        now += draw(st.integers(0, 8_000_000))
        source = draw(st.sampled_from(SOURCES))
        offsets[source] += draw(st.integers(1, 3))
        keys = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2)), min_size=1,
                             max_size=4, unique=True))  # (lag in windows, key): late ones too
        rows = [(max(now // W - lag, 0), k, draw(st.integers(1, 10**6))) for lag, k in keys]
        rows = list({(w, k): (w, k, a) for w, k, a in rows}.values())
        sent.append((source, offsets[source], now, _partial(rows)))
    order = [(i, 0, m) for i, m in enumerate(sent)]
    for i, message in enumerate(sent):
        if draw(st.booleans()):  # replayed later (upstream restart, at-least-once)
            order.append((draw(st.integers(i, len(sent))), 1, message))
    order.sort(key=lambda o: o[:2])
    return [(*m, draw(st.booleans()) and draw(st.booleans())) for _, _, m in order]


def _run(horizon: int, plan: list[tuple[str, int, int, pa.Table, bool]],
         ) -> tuple[pa.Table, dict[str, Any]]:
    store: dict[str, Any] = {}
    merger = WindowMerger(_settings(horizon), store)
    out = []
    for position, (source, offset, watermark, part, restart) in enumerate(plan):
        if restart:  # a new worker: indexes rebuilt from the persisted state
            merger = WindowMerger(_settings(horizon), store)
        mark = None if source.startswith("gpuwork") else watermark  # allocators send none
        out.append(merger.apply(part, source, offset, mark, position))
    return pa.concat_tables(out), store


def _sums(table: pa.Table) -> dict[tuple[Any, ...], tuple[int, ...]]:
    group = [*KEY_COLUMNS]
    agg = table.group_by(group).aggregate([(c, "sum") for c in
                                           ("requests", "errors", "input_tokens",
                                            "output_tokens", "cost", "shadow_cost")])
    return {tuple(r[c] for c in group): tuple(v for k, v in r.items() if k.endswith("_sum"))
            for r in agg.to_pylist()}


@settings(max_examples=80, deadline=None)
@given(plan=deliveries())
def test_eviction_keeps_every_total_and_replays_idempotent(plan: list[Any]) -> None:
    kept, _ = _run(30 * 86_400, plan)
    evicted, store = _run(20, plan)
    assert _sums(evicted) == _sums(kept)
    # (window, key, revision) never repeats: consumers de-duplicate on it.
    triples = Counter(zip(*(evicted.column(c).to_pylist() for c in
                            (*KEY_COLUMNS, "revision")), strict=True))
    assert max(triples.values(), default=1) == 1
    closed_through = store.get("m|closed_through")
    if closed_through is not None:  # nothing at or before the marker is still stored
        assert all(int(k.split("|")[1]) > int(closed_through) for k in store
                   if k.startswith("k|"))


@settings(max_examples=60, deadline=None)
@given(plan=deliveries(), data=st.data())
def test_partials_sent_in_parts_merge_like_whole_messages(plan: list[Any],
                                                           data: st.DataObject) -> None:
    """The worker splits a large partials message (same source and offset, watermark on the
    last part only, `final` on the last): totals and (window, key, revision) stay as whole."""
    whole, _ = _run(20, plan)
    store: dict[str, Any] = {}
    merger = WindowMerger(_settings(20), store)
    out = []
    position = 0
    for source, offset, watermark, part, restart in plan:
        if restart:
            merger = WindowMerger(_settings(20), store)
        cuts = sorted(data.draw(st.sets(st.integers(1, part.num_rows - 1), max_size=3))
                      ) if part.num_rows > 1 else []
        bounds = list(zip([0, *cuts], [*cuts, part.num_rows], strict=True))
        for number, (start, end) in enumerate(bounds, start=1):
            last = number == len(bounds)
            mark = None if source.startswith("gpuwork") else watermark
            out.append(merger.apply(part.slice(start, end - start), source, offset,
                                    mark if last else None, position, final=last))
            position += 1
    split = pa.concat_tables(out)
    assert _sums(split) == _sums(whole)
    triples = Counter(zip(*(split.column(c).to_pylist() for c in
                            (*KEY_COLUMNS, "revision")), strict=True))
    assert max(triples.values(), default=1) == 1


def test_late_partial_for_evicted_window_is_a_delta_not_revision_zero() -> None:
    merger = WindowMerger(_settings(0, requests_partitions=1), {})
    first = merger.apply(_partial([(0, 0, 5)]), "requests:0", 1, 0, position=0)
    assert first.num_rows == 0
    closed = merger.apply(_partial([(10, 0, 1)]), "requests:0", 2, 10 * W, position=1)
    assert closed.column("revision").to_pylist() == [0]  # window 0 closed and evicted
    assert not [k for k in merger.store if k.startswith("k|0|")]
    late = merger.apply(_partial([(0, 0, 7)]), "requests:1", 1, 10 * W, position=2)
    assert late.column("revision").to_pylist() == [LATE_REVISION_BASE + 2]
    assert late.column("requests").to_pylist() == [7]
    replay = merger.apply(_partial([(0, 0, 7)]), "requests:1", 1, 10 * W, position=3)
    assert replay.num_rows == 0  # recognised by the per-source applied marker


def test_state_stays_bounded_over_many_windows() -> None:
    store: dict[str, Any] = {}
    merger = WindowMerger(_settings(30, requests_partitions=1), store)
    sizes = []
    for window in range(500):
        rows = [(window, k, 1) for k in range(3)] + [(max(window - 1, 0), 0, 1)]
        merger.apply(_partial(rows), "requests:0", window, window * W + W // 2, window)
        sizes.append(len(store))
    # (lateness + horizon) / window + 2 windows of 3 keys, plus 5 markers.
    assert max(sizes[100:]) <= 3 * 7 + 5
    assert len(merger._closed) <= 7


def _row(start: dt.datetime, model: str, kind: str, cost: str, share: float | None,
         revision: int = 0) -> dict[str, Any]:
    return {"window_start": start, "window_end": start + dt.timedelta(minutes=1),
            "operation": "chat", "provider_kind": kind, "provider": "p", "model": model,
            "requests": 1, "errors": 0, "input_tokens": 1, "output_tokens": 1,
            "cost": Decimal(cost), "shadow_cost": Decimal(0), "external_share_cost": share,
            "external_share_requests": share, "revision": revision}


def _alerts_settings() -> Settings:
    return Settings.model_validate({
        "windows": {"seconds": 60, "correction_horizon_seconds": 600},
        "target_internal_share": 0.8,
        "alerts": {"external_budget_per_hour": "50", "cooldown_seconds": 0}})


def _window_rows(start: dt.datetime, share: float) -> list[dict[str, Any]]:
    rows = [_row(start, f"ext{i}", "external", "3", share) for i in range(10)]
    rows += [_row(start, f"own{i}", "internal", "1", share) for i in range(10)]
    return rows


def test_chunked_windows_fire_like_one_message() -> None:
    t0 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    rows = [r for m in range(3) for r in _window_rows(t0 + dt.timedelta(minutes=m), 0.75)]
    table = pa.Table.from_pylist(rows, schema=WINDOW_AGGREGATE)
    end = t0 + dt.timedelta(minutes=3)
    whole = AlertEngine(_alerts_settings())
    want = whole.on_windows(table, complete_through=end)
    chunked = AlertEngine(_alerts_settings())
    got = [a for batch in table.to_batches(max_chunksize=7)
           for a in chunked.on_windows(pa.Table.from_batches([batch]))]
    got += chunked.on_windows(table.slice(0, 0), complete_through=end)  # the last marker
    key = sorted((a["rule"], a["key"], a["window_start"]) for a in want)
    assert key == sorted((a["rule"], a["key"], a["window_start"]) for a in got)
    # 3 windows over the 20 % external target, and $90 external spend > $50 once per hour.
    assert Counter(a["rule"] for a in got) == {"dependency_share": 3, "budget_hour": 1}
    assert chunked.spend == whole.spend
    # A replay of any chunk changes nothing.
    again = [a for batch in table.to_batches(max_chunksize=7)
             for a in chunked.on_windows(pa.Table.from_batches([batch]))]
    assert again == [] and chunked.spend == whole.spend


def test_late_delta_rows_do_not_hide_the_window_share() -> None:
    t0 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    rows = [*_window_rows(t0, 0.75), _row(t0, "zz", "external", "1", None, revision=1)]
    fired = AlertEngine(_alerts_settings()).on_windows(
        pa.Table.from_pylist(rows, schema=WINDOW_AGGREGATE),
        complete_through=t0 + dt.timedelta(minutes=1))
    assert "dependency_share" in {a["rule"] for a in fired}


def test_the_share_waits_for_every_merger_partition_and_survives_a_restart() -> None:
    """A window's keys arrive from several merger partitions: its share is judged only once
    it is complete, and a saved engine continues without firing anything twice."""
    t0 = dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)
    rows = _window_rows(t0, 0.0)  # shares in rows are ignored: 30 of 40 dollars external
    first, second = rows[:12], rows[12:]
    engine = AlertEngine(_alerts_settings())
    assert engine.on_windows(pa.Table.from_pylist(first, schema=WINDOW_AGGREGATE)) == []
    saved = engine.to_state()
    restored = AlertEngine.from_state(_alerts_settings(), saved)
    fired = restored.on_windows(pa.Table.from_pylist(second, schema=WINDOW_AGGREGATE),
                                complete_through=t0 + dt.timedelta(minutes=1))
    shares = [a for a in fired if a["rule"] == "dependency_share"]
    assert [round(a["observed"], 4) for a in shares] == [0.75]
    again = AlertEngine.from_state(_alerts_settings(), restored.to_state())
    assert again.on_windows(pa.Table.from_pylist(second, schema=WINDOW_AGGREGATE),
                            complete_through=t0 + dt.timedelta(minutes=2)) == []


def test_alert_state_is_bounded_by_the_horizon() -> None:
    engine = AlertEngine(_alerts_settings())
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for m in range(300):  # five hours of one-minute windows
        engine.on_windows(pa.Table.from_pylist(
            _window_rows(t0 + dt.timedelta(minutes=m), 0.75), schema=WINDOW_AGGREGATE),
            complete_through=t0 + dt.timedelta(minutes=m + 1))
    assert sum(len(v) for v in engine.seen_windows.values()) <= 20 * 12
    assert len(engine.seen_ids) <= 15 and len(engine.last_fired) <= 15
    assert len(engine.spend) <= 4 and len(engine.window_costs) <= 1
    # A row older than the horizon is ignored (its period is gone), not double counted.
    old = _window_rows(t0, 0.75)
    assert engine.on_windows(pa.Table.from_pylist(old, schema=WINDOW_AGGREGATE)) == []
