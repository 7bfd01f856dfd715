"""Two-stage tumbling-window aggregation with exact totals under replay.

Stage 1 (`partials`): one pyarrow group_by per cost-record batch, per
(window, operation, provider_kind, provider, model): requests, errors, tokens, cost and shadow
cost as exact decimals, and the latency sketch as (bucket, count) lists. Stage 2 keeps money as
Python integers of pico-dollars, so no sum has a 64-bit limit.

Stage 2 (`WindowMerger`): merges partials into entries keyed by (window, key) in a mapping (a
Faust table in the worker). Idempotence: every partial message names its source (the topic and
partition of the message that produced it) and that message's offset; each entry remembers the
highest offset applied per source and skips anything at or below it, so at-least-once
redelivery never double counts. The partials topic is keyed by window key (operation,
provider_kind, provider, model), so merging scales with its partitions; one merger per partition.

Closing: every requests partition's costing stage sends each merger partition its watermark
(the event time it has reached) with every message, rows or not. A window closes when the
minimum of those watermarks passes window_end + windows.allowed_lateness_seconds, so one
partition (or one host whose clock runs ahead) cannot close windows that others still fill; a
requests partition caught up and silent for IDLE_SECONDS of wall time stops holding windows
back. The GPU allocators report too (how far their buckets are closed, at most once a second),
so a window also waits for its own-model costs; an allocator whose mark stops for IDLE_SECONDS
of wall time stops holding windows back. All keys of the window on this partition are emitted
with `revision` 0. The share of a window over all its keys is computed
where all keys meet (the alerting stage, the `window_share` view), not here.

A partial arriving for an already closed window is the correction path: it is
emitted at once as a further row for that window and key with the next `revision`, holding only
the late delta (so summing rows stays exact). Re-emission after a crash repeats the same
(window, key, revision) with the same content: consumers de-duplicate on that triple.

Eviction keeps state bounded: once window_end + lateness + windows.correction_horizon_seconds
is behind the watermark, the window's entries are deleted (tombstones in the changelog) and one
persisted marker `m|closed_through` (the newest evicted window start) remembers it. A partial
for a window at or before that marker still takes the correction path, without an entry: it is
emitted at once as a late-delta row with revision LATE_REVISION_BASE + (partials message offset
mod LATE_REVISION_BASE). That offset is unique in the key's partials partition, so the
revision cannot collide with the small counter revisions of the live entry or with another
late delta (unless 2**30 partial messages apart for the same window and key), and a replay of
that same partials message after a crash repeats the same triple. Replays of evicted windows are
recognised by `m|applied`, the highest offset applied per source (stored once, not per entry):
each source (one topic partition) sends its partials in offset order, so an offset at or below
it was applied before. Live entries keep their own `applied` map, which stays exact when a crash
persisted only some entries of a message.
"""

from __future__ import annotations

import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.money import MONEY
from costpipe.core.settings import Settings
from costpipe.schemas import sketch
from costpipe.schemas.records import COST_RECORD, TIMESTAMP, WINDOW_AGGREGATE

KEY_COLUMNS = ("window_start", "operation", "provider_kind", "provider", "model")
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cost_pico", "shadow_pico")
COUNTS = ("requests", "errors", "input_tokens", "output_tokens")  # int64 sums in Arrow
_US = 1_000_000
LATE_REVISION_BASE = 1 << 30  # revisions of late deltas for evicted windows (int32 column)
IDLE_SECONDS = 300  # a caught-up requests partition silent this long does not hold windows


def partials(costs: pa.Table | pa.RecordBatch, window_seconds: int) -> pa.Table:
    """Stage 1: partial aggregates of one batch of cost records.

    Money is summed as decimal128(38, 12), never as int64 pico-dollars: a key's sum may pass
    $9.2M (int64's limit) and totals must stay exact far beyond it.
    """
    if costs.num_rows == 0:  # most allocator messages close nothing: no group_by for them
        return _no_partials()
    return _partials(costs, window_seconds)


@functools.cache
def _no_partials() -> pa.Table:
    """The partials of no rows, computed once (1.6 ms a time; Arrow tables are immutable)."""
    return _partials(COST_RECORD.empty_table(), 60)


def _partials(costs: pa.Table | pa.RecordBatch, window_seconds: int) -> pa.Table:
    if isinstance(costs, pa.RecordBatch):
        costs = pa.Table.from_batches([costs])
    window_us = window_seconds * _US
    ts = costs.column("timestamp").cast(pa.int64())
    window = pc.multiply(pc.divide(ts, window_us), window_us)
    is_request = pc.not_equal(costs.column("record_type"), "idle")
    latency = costs.column("latency_ms").to_numpy(zero_copy_only=False)
    latency = np.where(np.asarray(is_request.to_numpy(zero_copy_only=False)), latency, np.nan)
    table = pa.table({
        "window_start": window,
        "operation": costs.column("operation"),
        "provider_kind": costs.column("provider_kind"),
        "provider": costs.column("provider"),
        "model": costs.column("model"),
        "requests": pc.cast(is_request, pa.int64()),
        "errors": pc.cast(pc.and_(is_request, pc.equal(costs.column("status"), "error")),
                          pa.int64()),
        "input_tokens": costs.column("input_tokens"),
        "output_tokens": costs.column("output_tokens"),
        "cost": pc.fill_null(costs.column("cost"), pa.scalar(0, MONEY)).cast(MONEY),
        "shadow": pc.fill_null(costs.column("shadow_cost"), pa.scalar(0, MONEY)).cast(MONEY),
        "sk": pa.array(sketch.bucket_index(latency)),
    })
    money = ("cost", "shadow")
    fine = table.group_by([*KEY_COLUMNS, "sk"], use_threads=False).aggregate(
        [(c, "sum") for c in (*COUNTS, *money)] + [("sk", "count")])
    fine = fine.rename_columns([c.removesuffix("_sum") for c in fine.column_names])
    out = fine.group_by(list(KEY_COLUMNS), use_threads=False).aggregate(
        [(c, "sum") for c in (*COUNTS, *money)] + [("sk", "list"), ("sk_count", "list")])
    return out.rename_columns([c.removesuffix("_sum") for c in out.column_names])


def partial_keys(part: pa.Table) -> pa.Array:
    """The window key of each partial row as one string (its home partition's routing value)."""
    return pc.binary_join_element_wise(
        *(part.column(c).cast(pa.string()) for c in KEY_COLUMNS[1:]), "|")


class WindowMerger:
    """Stage 2: merges partial messages; returns closed window rows (WINDOW_AGGREGATE)."""

    def __init__(self, settings: Settings, store: MutableMapping[str, Any],
                 requests_partitions: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_us = settings.windows.seconds * _US
        self.lateness_us = settings.windows.allowed_lateness_seconds * _US
        self.horizon_us = settings.windows.correction_horizon_seconds * _US
        self.requests_partitions = requests_partitions or settings.topics.partitions
        self.store = store
        self._clock = clock
        self._started = clock()
        self._heard: dict[str, float] = {}  # source -> wall time of its last message
        self._moved: dict[str, float] = {}  # allocator source -> wall time its mark last moved
        self._open: dict[int, set[str]] | None = None
        self._closed: dict[int, set[str]] = defaultdict(set)  # kept until evicted

    def _index(self) -> dict[int, set[str]]:
        """Open keys per window (built from the store once, after a restart)."""
        if self._open is None:
            self._open = defaultdict(set)
            for key in list(self.store.keys()):
                if key.startswith("k|"):
                    entry = _load(self.store[key])
                    index = self._closed if entry.get("closed") else self._open
                    index[_window_of(key)].add(key)
        return self._open

    @property
    def watermark(self) -> int | None:
        """Min over the requests partitions' watermarks (all must have reported; a caught-up
        partition silent for IDLE_SECONDS of wall time does not hold windows back); never
        moves back. Stored as a decimal string."""
        raw = self.store.get("m|watermark")
        return None if raw is None else int(raw)

    def _advance(self, source: str, watermark_us: int | None, caught_up: bool,
                  allocator: bool = False) -> None:
        if watermark_us is None:
            return
        now = self._clock()
        if allocator:  # how far a GPU allocator has closed buckets: its costs are all sent
            alloc = dict(self.store.get("m|alloc") or {})
            if watermark_us > alloc.get(source, -(2**62)):
                alloc[source] = watermark_us
                self.store["m|alloc"] = alloc
                self._moved[source] = now
            self._close_mark()
            return
        self._heard[source] = now
        marks = dict(self.store.get("m|marks") or {})
        backlog = dict(self.store.get("m|backlog") or {})
        changed = False
        if watermark_us > marks.get(source, -(2**62)):
            marks[source] = watermark_us
            changed = True
        if backlog.get(source, False) != (not caught_up):
            backlog[source] = not caught_up
            self.store["m|backlog"] = backlog
        if changed:
            self.store["m|marks"] = marks
        self._close_mark()

    def _close_mark(self) -> None:
        """Move the closing watermark: min over the requests partitions (all must have
        reported; a caught-up one silent for IDLE_SECONDS of wall time does not count) and
        over the GPU allocators that report (so a window waits for its own-model costs; one
        whose mark has not moved for IDLE_SECONDS of wall time does not count)."""
        marks = dict(self.store.get("m|marks") or {})
        if len(marks) < self.requests_partitions:
            return
        backlog = dict(self.store.get("m|backlog") or {})
        now = self._clock()
        live = [v for k, v in marks.items()
                if backlog.get(k, False) or now - self._heard.get(k, self._started) < IDLE_SECONDS]
        mark = min(live) if live else max(marks.values())
        alloc = dict(self.store.get("m|alloc") or {})
        waiting = [v for k, v in alloc.items()
                   if now - self._moved.get(k, self._started) < IDLE_SECONDS]
        mark = min([mark, *waiting])
        if mark > (self.watermark or -(2**62)):
            self.store["m|watermark"] = str(mark)

    @property
    def closed_through(self) -> int | None:
        """Start of the newest evicted window: every window at or before it is evicted."""
        raw = self.store.get("m|closed_through")
        return None if raw is None else int(raw)

    def apply(self, part: pa.Table, source: str, offset: int, watermark_us: int | None,
              position: int | None = None, final: bool = True,
              caught_up: bool = True, allocator: bool = False) -> pa.Table:
        """Apply one partial message; returns late-delta rows plus newly closed windows.

        `position` is the offset of the partial message in the partials topic: it names the
        revision of late deltas for evicted windows (see the module docstring). Without it a
        persisted counter is used (pure callers, benches). `final` is False for all but the
        last part of a source message sent in parts: the source offset counts as applied
        only after the last one, so the parts after the first are not taken for replays.
        `watermark_us` (with `caught_up`) comes from requests partitions' costing, or, with
        `allocator`, from a GPU allocator (how far its costs are complete).
        """
        late_rows: list[dict[str, Any]] = []
        columns = {name: part.column(name).to_pylist() for name in part.column_names}
        index = self._index()
        closed_through = self.closed_through
        applied = dict(self.store.get("m|applied") or {})
        seen_before = offset <= applied.get(source, -1)
        for i in range(part.num_rows):  # one row per (window, key) of the batch: small
            window = int(columns["window_start"][i])
            key = "k|" + "|".join(str(columns[c][i]) for c in KEY_COLUMNS)
            evicted = closed_through is not None and window <= closed_through
            if evicted and seen_before:
                continue  # replay of a partial for a window evicted since
            entry = None
            if not evicted:
                raw = self.store.get(key)
                entry = _load(raw) if raw is not None else _new_entry()
                if entry["applied"].get(source, -1) >= offset:
                    continue  # replay of something already merged
            delta = {c: int(columns[c][i] or 0) for c in COUNTS}
            delta["cost_pico"] = _pico(columns["cost"][i])
            delta["shadow_pico"] = _pico(columns["shadow"][i])
            sk = {}
            if columns.get("sk_list") and columns["sk_list"][i]:
                sk = sketch.merge({}, columns["sk_list"][i], columns["sk_count_list"][i])
                sk.pop(-1, None)  # rows without latency (idle lines)
            if entry is None:
                late_rows.append(_row(key, delta, sk, self._late_revision(position)))
                continue
            if entry["closed"]:
                entry["revision"] += 1
                late_rows.append(_row(key, delta, sk, entry["revision"]))
            for c in SUMS:
                entry["sums"][c] += delta[c]
            merged = sketch.merge({int(k): v for k, v in entry["sketch"].items()},
                                  list(sk), list(sk.values()))
            entry["sketch"] = {str(k): v for k, v in merged.items()}
            entry["applied"][source] = offset
            self.store[key] = entry
            if not entry["closed"]:
                index[window].add(key)
        if not seen_before and final:
            applied[source] = offset
            self.store["m|applied"] = applied
        if final:
            self._advance(source, watermark_us, caught_up, allocator)
        closed = self.close_ready()
        self.evict()
        if late_rows:
            late = _to_table(late_rows, self.window_us)
            return pa.concat_tables([late, closed]) if closed.num_rows else late
        return closed

    def _late_revision(self, position: int | None) -> int:
        if position is None:
            position = int(self.store.get("m|late_seq") or 0) + 1
            self.store["m|late_seq"] = str(position)
        return LATE_REVISION_BASE + position % LATE_REVISION_BASE

    def close_ready(self) -> pa.Table:
        watermark = self.watermark
        if watermark is None:
            return WINDOW_AGGREGATE.empty_table()
        index = self._index()
        ready = sorted(w for w in index if w + self.window_us + self.lateness_us <= watermark)
        rows: list[dict[str, Any]] = []
        for window in ready:
            keys = sorted(index.pop(window))
            entries = {k: _load(self.store[k]) for k in keys}
            rows.extend(_row(k, e["sums"], {int(b): c for b, c in e["sketch"].items()}, 0)
                        for k, e in entries.items())
            for k, e in entries.items():
                e["closed"] = True
                self.store[k] = e
            self._closed[window].update(keys)
        return _to_table(rows, self.window_us) if rows else WINDOW_AGGREGATE.empty_table()

    def evict(self) -> int:
        """Delete entries of windows past end + lateness + horizon; returns how many.

        Runs after close_ready with the same watermark, so every such window is closed
        (close_ready needs only end + lateness).
        """
        watermark = self.watermark
        if watermark is None:
            return 0
        self._index()
        span = self.window_us + self.lateness_us + self.horizon_us
        through = (watermark - span) // self.window_us * self.window_us
        if self.closed_through is not None and through <= self.closed_through:
            return 0
        gone = 0
        for window in [w for w in self._closed if w <= through]:
            for key in self._closed.pop(window):
                del self.store[key]
                gone += 1
        self.store["m|closed_through"] = str(through)
        return gone


def _window_of(key: str) -> int:
    return int(key.split("|", 2)[1])


def _load(raw: Any) -> dict[str, Any]:
    """A fresh copy of a stored entry (JSON-native dict; text/bytes from older states)."""
    if isinstance(raw, bytes | str):
        return json.loads(raw)
    return json.loads(json.dumps(raw))


def _new_entry() -> dict[str, Any]:
    return {"sums": dict.fromkeys(SUMS, 0), "sketch": {}, "applied": {}, "closed": False,
            "revision": 0}


def _row(key: str, sums: dict[str, int], sk: dict[int, int], revision: int) -> dict[str, Any]:
    _, window, operation, kind, provider, model = key.split("|", 5)
    return {
        "window_start": int(window), "operation": operation, "provider_kind": kind,
        "provider": provider, "model": model, "revision": revision, **sums,
        "latency_p50_ms": sketch.quantile(sk, 0.50),
        "latency_p95_ms": sketch.quantile(sk, 0.95),
        "latency_p99_ms": sketch.quantile(sk, 0.99),
        "external_share_cost": None, "external_share_requests": None,
    }


def _pico(amount: Decimal | None) -> int:
    """Exact pico-dollars of a decimal amount, as a Python int (no 64-bit limit)."""
    return 0 if amount is None else int(amount.scaleb(12))


def _to_table(rows: list[dict[str, Any]], window_us: int) -> pa.Table:
    cost = pa.array([Decimal(r.pop("cost_pico")).scaleb(-12) for r in rows], MONEY)
    shadow = pa.array([Decimal(r.pop("shadow_pico")).scaleb(-12) for r in rows], MONEY)
    starts = [r["window_start"] for r in rows]
    for r in rows:
        r.pop("window_start")
    table = pa.Table.from_pylist(rows)
    table = table.append_column("window_start", pa.array(starts, pa.int64()).cast(TIMESTAMP))
    ends = [s + window_us for s in starts]
    table = table.append_column("window_end", pa.array(ends, pa.int64()).cast(TIMESTAMP))
    table = table.append_column("cost", cost)
    table = table.append_column("shadow_cost", shadow)
    return table.select(WINDOW_AGGREGATE.names).cast(WINDOW_AGGREGATE)
