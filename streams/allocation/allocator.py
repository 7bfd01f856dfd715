"""The stateful GPU allocator: buffers own-model requests and GPU samples and closes each
(GPU, bucket) into cost records with the rule in `costpipe.streams.allocation.rule`.

One allocator per partition of the `gpuwork` topic, which is keyed by GPU: a GPU's samples and
the own-model requests it served meet in one partition, so allocation scales with partitions.

When a (GPU, bucket) closes: when *that GPU's* samples and *every* requests partition have
passed bucket_end + gpu.allowed_lateness_seconds in event time. Per GPU, so a host whose clock
runs ahead (within `ingest.max_future_seconds`; further ahead is dead-lettered) only moves its
own GPUs' mark, and the requests side (a minimum over partitions) keeps every bucket open until
the requests that fill it have arrived. A requests partition that has been caught up and silent
for IDLE_SECONDS of wall time stops holding buckets back (one still draining a backlog never
does); a GPU whose samples stopped for IDLE_SECONDS of wall time (its host gone) follows the
fleet's mark. GPU heartbeats (`costpipe gpu` idle, or
`costpipe heartbeat`) count as samples of every GPU up to their time once *every* GPU topic
partition has carried one: a heartbeat is ordered only behind its own partition's samples, so
one partition's heartbeat must not close buckets whose samples still queue in another (seen
after a broker outage: a late sample dropped and its energy charged to the next bucket).

A request for an already closed (GPU, bucket) is the correction path: record_type
"correction", cost 0, pricing_status "gpu_unattributed" (the bucket's idle line already holds
that money, so totals stay exact), counted in `costpipe_late_internal_requests_total`. Requests
whose GPU had no samples in their bucket are emitted with cost 0 and status "gpu_unattributed",
counted, never dropped.

MIG: each sample row stands for `gpu_fraction` of a physical GPU (null = all of it); the
sampler gives each MIG instance its share and the parent the unpartitioned rest, so one GPU is
charged once, split over its instances.

State lives in a mapping (a partition's view of a Faust table in the worker, a dict in tests):
each input message's pending rows or samples as one Arrow IPC chunk keyed by its source, so
re-applying a replayed message overwrites the same key (idempotent), and duplicates by
request_id are dropped at close. The chunks are also kept decoded in memory; the store is read
back only after a restart or a rebalance (docs/decisions/2026-11-30-allocator-state-per-message.md).
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.metrics import GPU_UNATTRIBUTED, LATE_INTERNAL
from costpipe.core.money import pico_to_money
from costpipe.core.settings import Settings
from costpipe.schemas.codec import conform, encode_arrow
from costpipe.schemas.records import COST_RECORD, GPU_SAMPLE
from costpipe.streams.allocation.rule import (
    allocate,
    bucket_energy_mj,
    busy_pico,
    gpu_bucket_cost_pico,
)

IDLE_OPERATION = "_gpu_idle"
IDLE_PROVIDER = "gpu"
_US = 1_000_000
IDLE_SECONDS = 300  # silent this long: a requests partition (wall) or a GPU (event time)
REQUESTS = "requests:"  # stream names: requests:<topic>:<partition>
GPU = "gpu:"  # gpu:<uuid>, from that GPU's samples
GPU_SOURCE = "gpusrc:"  # gpusrc:<topic>:<partition>, the newest sample forwarded from it
HEARTBEAT = "gpuhb:"  # gpuhb:<topic>:<partition>, a heartbeat forwarded from that partition
NO_LIMIT = 2**62

_STORED_SCHEMAS = {"r": COST_RECORD, "s": GPU_SAMPLE}
_PENDING_KINDS = {"pr": "r", "ps": "s", "r": "r", "s": "s"}  # r|, s|: per-(bucket, GPU) keys
# written before 2026-11-30, still read after an upgrade


@dataclass
class _Chunk:
    """One input message's pending rows: own-model requests ("r") or GPU samples ("s")."""

    kind: str
    table: pa.Table
    buckets: np.ndarray  # bucket start (µs) per row
    codes: np.ndarray  # GPU per row, as an index into `gpus`
    gpus: list[str]  # the chunk's distinct GPUs ("" when unknown)
    open: set[tuple[str, int]] = field(default_factory=set)  # (gpu, bucket) not yet closed

    def rows_of(self, gpu: str, bucket: int) -> pa.Table:
        mask = (self.buckets == bucket) & (self.codes == self.gpus.index(gpu))
        return self.table if mask.all() else self.table.filter(pa.array(mask))


class GpuAllocator:
    """Buffers own-model records and GPU samples per (GPU, bucket); closes them into costs."""

    def __init__(self, settings: Settings, store: MutableMapping[str, Any],
                 requests_partitions: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 gpu_partitions: int | None = None) -> None:
        self.settings = settings
        self.store = store
        self.requests_partitions = requests_partitions or settings.topics.partitions
        self.gpu_partitions = gpu_partitions or settings.topics.partitions
        self.bucket_us = settings.gpu.bucket_seconds * _US
        self.lateness_us = settings.gpu.allowed_lateness_seconds * _US
        self._clock = clock
        self._heard: dict[str, float] = {}  # stream -> wall time of its last message
        self._waiting: dict[str, float] = {}  # GPU without samples -> since when (wall)
        self._started = clock()
        self.reset()

    def reset(self) -> None:
        """Forget what is cached in memory; the next call rebuilds it from the store (after a
        rebalance another worker may have closed buckets or buffered rows in between)."""
        self._index: dict[tuple[str, int], set[str]] | None = None
        self._chunks: dict[str, _Chunk] = {}
        self._wm: dict[str, int] | None = None
        self._beats: dict[str, int] = {}  # the heartbeat marks of _wm, rebuilt with it
        self._backlog: dict[str, bool] | None = None
        self._closed: dict[str, int] | None = None

    # -- state helpers
    def _meta(self, name: str, default: int | None) -> int | None:
        raw = self.store.get(f"m|{name}")
        return default if raw is None else int(raw)

    def _set_meta(self, name: str, value: int) -> None:
        self.store[f"m|{name}"] = str(value)

    def closed_through(self, gpu: str) -> int | None:
        """Start of the newest closed bucket of `gpu` (all older ones are closed too)."""
        return self._closed_map().get(gpu, self._legacy_closed())

    def _closed_per_row(self, gpus: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """closed_through per row (a very old time where nothing is closed), vectorised."""
        codes, names = _gpu_codes(gpus)
        never = -(2**62)
        per_gpu = np.array([c if (c := self.closed_through(g)) is not None else never
                            for g in names] or [never], dtype=np.int64)
        return per_gpu[codes]

    def _legacy_closed(self) -> int | None:
        return self._meta("closed_through", None)  # one global mark, before 2026-12-01

    def _closed_map(self) -> dict[str, int]:
        if self._closed is None:
            self._closed = {k[len("m|closed|"):]: int(v) for k, v in list(self.store.items())
                            if k.startswith("m|closed|")}
        return self._closed

    def _set_closed(self, gpu: str, bucket: int) -> None:
        self._closed_map()[gpu] = bucket
        self._set_meta(f"closed|{gpu}", bucket)

    def _index_map(self) -> dict[tuple[str, int], set[str]]:
        """(gpu, bucket) -> keys of the pending chunks holding rows of it."""
        if self._index is None:
            self._index = defaultdict(set)
            for key in list(self.store.keys()):
                kind = _PENDING_KINDS.get(key.split("|", 1)[0])
                raw = self.store.get(key)
                if kind is None or raw is None:
                    continue
                table = pa.ipc.open_stream(base64.b64decode(raw)).read_all()
                chunk = self._chunk(kind, conform(table, _STORED_SCHEMAS[kind]))
                if not chunk.open:
                    self.store.pop(key, None)  # closed before the restart; delete was lost
                    continue
                self._remember(key, chunk)
        return self._index

    def _chunk(self, kind: str, table: pa.Table) -> _Chunk:
        column = "bucket_start" if kind == "r" else "timestamp"
        ts = table.column(column).cast(pa.int64()).to_numpy()
        buckets = ts - ts % self.bucket_us
        codes, gpus = _gpu_codes(table.column("gpu_uuid"))
        chunk = _Chunk(kind, table, buckets, codes, gpus)
        chunk.open = {(gpus[c], b) for c, b in _distinct_pairs(codes, buckets)
                      if (closed := self.closed_through(gpus[c])) is None or b > closed}
        return chunk

    def _remember(self, key: str, chunk: _Chunk) -> None:
        self._chunks[key] = chunk
        index = self._index_map()  # already built: _put builds it before writing its key
        for pair in chunk.open:
            index[pair].add(key)

    def _put(self, kind: str, source: str, table: pa.Table) -> None:
        """One store key per input message (replaying the message overwrites it)."""
        key = f"p{kind}|{source}"
        self._index_map()
        # zstd inside the IPC stream: base64 and the changelog's JSON run in Python per byte,
        # and the stream is 6x smaller (9 ms -> 2.4 ms per 4,000-row put).
        stored = encode_arrow(_without_empty_columns(table), "zstd")
        self.store[key] = base64.b64encode(stored).decode()
        self._remember(key, self._chunk(kind, table))

    # -- input
    def is_replay(self, source: str) -> bool:
        """True when `source` ("topic:partition:offset" of the original message) was already
        applied: a restarted upstream agent re-forwards what it had sent before."""
        stream, _, offset = source.rpartition(":")
        if not stream or not offset.isdigit():
            return False
        last = self._meta(f"hwm|{stream}", None)
        return last is not None and int(offset) <= last

    def mark_applied(self, source: str) -> None:
        """Record `source` as applied; call after its state changes (written last)."""
        stream, _, offset = source.rpartition(":")
        if stream and offset.isdigit():
            self._set_meta(f"hwm|{stream}", int(offset))

    def add_requests(self, pending: pa.Table, source: str) -> pa.Table:
        """Buffer pending own-model records; returns the late ones (correction records)."""
        if pending.num_rows == 0:
            return pending
        bucket = pending.column("bucket_start").cast(pa.int64()).to_numpy()
        late_mask = bucket <= self._closed_per_row(pending.column("gpu_uuid")) \
            if self._any_closed() else np.zeros(pending.num_rows, dtype=bool)
        on_time = pending.filter(pa.array(~late_mask))
        late = pending.filter(pa.array(late_mask))
        if on_time.num_rows:
            self._put("r", source, on_time)
        if late.num_rows:
            LATE_INTERNAL.inc(late.num_rows)
            n = late.num_rows
            late = late.set_column(late.schema.get_field_index("record_type"), "record_type",
                                   pa.repeat(pa.scalar("correction"), n))
            late = late.set_column(late.schema.get_field_index("pricing_status"),
                                   "pricing_status", pa.repeat(pa.scalar("gpu_unattributed"), n))
            late = conform(late, COST_RECORD)
        return late

    def _any_closed(self) -> bool:
        return bool(self._closed_map()) or self._legacy_closed() is not None

    def add_samples(self, samples: pa.RecordBatch | pa.Table, source: str,
                    stream: str | None = None) -> None:
        """Buffer GPU samples (of GPUs whose home is this partition); `stream` names the GPU
        topic partition they came from."""
        if samples.num_rows == 0:
            return
        table = pa.Table.from_batches([samples]) if isinstance(samples, pa.RecordBatch) \
            else samples
        ts = table.column("timestamp").cast(pa.int64()).to_numpy()
        newest = pa.table({"g": pc.fill_null(table.column("gpu_uuid"), ""), "t": ts}).group_by(
            "g", use_threads=False).aggregate([("t", "max")])
        if self._any_closed():  # samples of a closed bucket cannot change a final GPU cost
            keep = ts >= self._closed_per_row(table.column("gpu_uuid")) + self.bucket_us
            table = table.filter(pa.array(keep))
        if table.num_rows:
            self._put("s", source, table)
        now = self._clock()
        for gpu, t in zip(newest.column("g").to_pylist(), newest.column("t_max").to_pylist(),
                          strict=True):
            self._advance(t, GPU + gpu)
            self._heard[GPU + gpu] = now
        if stream is not None:
            self._advance(int(ts.max()), GPU_SOURCE + stream)

    def note_gpu_source(self, max_ts: int | None, stream: str) -> None:
        """The GPU topic partition `stream` has forwarded samples up to `max_ts` (sent to every
        allocator partition, so partitions without GPUs still know how far the fleet is)."""
        self._advance(max_ts, GPU_SOURCE + stream)

    def note_samples_until(self, max_ts: int, stream: str) -> None:
        """A GPU heartbeat from GPU topic partition `stream`: the samples sent to it before the
        heartbeat are all that partition will carry up to `max_ts`."""
        self._advance(max_ts, HEARTBEAT + stream)

    def heartbeat_mark(self) -> int | None:
        """How far every GPU has reported by heartbeats: the min over the GPU topic partitions,
        None until each has carried one."""
        self._marks()  # builds self._beats
        beats = self._beats
        return min(beats.values()) if len(beats) >= self.gpu_partitions else None

    def note_requests(self, max_ts: int | None, stream: str, caught_up: bool = True) -> None:
        """Requests partition `stream` has reached `max_ts` (sent even with no own-model rows).

        `caught_up`: the message was the partition's last one when it was costed. Only then may
        the partition count as idle: a worker draining a backlog sees the small GPU stream race
        ahead of event time, and calling the busy partitions idle would close every bucket
        before its requests arrive (they would all become uncosted corrections)."""
        stream = stream if stream.startswith(REQUESTS) else REQUESTS + stream
        self._heard[stream] = self._clock()
        self._advance(max_ts, stream)
        if self._backlogged().get(stream, False) != (not caught_up):
            self._backlogged()[stream] = not caught_up
            self._set_meta(f"backlog|{stream}", 0 if caught_up else 1)  # "1": more was queued

    def _advance(self, max_ts: int | None, stream: str) -> None:
        """Track the max event time per input stream."""
        if max_ts is None:
            return
        marks = self._marks()
        if max_ts > marks.get(stream, -(2**62)):
            marks[stream] = max_ts
            self._set_meta(f"wm|{stream}", max_ts)
            if stream.startswith(HEARTBEAT):
                self._beats[stream] = max_ts

    def _marks(self) -> dict[str, int]:
        if self._wm is None:
            self._wm = {k[5:]: int(v) for k, v in list(self.store.items())
                        if k.startswith("m|wm|")}
            # "gpu", then "gpuhb": one heartbeat mark for every partition, before 2026-12-02;
            # not trusted (see the module doc): samples and the next heartbeats decide
            self._wm.pop("gpu", None)
            self._wm.pop("gpuhb", None)
            # per GPU partition, apart: gpu_mark reads their min for every GPU it closes
            self._beats = {k: v for k, v in self._wm.items() if k.startswith(HEARTBEAT)}
        return self._wm

    def _backlogged(self) -> dict[str, bool]:
        if self._backlog is None:
            self._backlog = {k[len("m|backlog|"):]: v == "1" for k, v in list(self.store.items())
                             if k.startswith("m|backlog|")}
        return self._backlog

    # -- watermarks
    def requests_mark(self) -> int | None:
        """Min over the requests partitions (all must have reported); a caught-up partition
        silent for IDLE_SECONDS of wall time does not hold buckets back (when all are, the GPU
        side alone decides: buckets of idle GPUs still close into idle cost)."""
        marks = self._marks()
        requests = {k: v for k, v in marks.items() if k.startswith(REQUESTS)}
        if len(requests) < self.requests_partitions:
            return None
        now = self._clock()
        backlogged = self._backlogged()
        live = [v for k, v in requests.items()
                if backlogged.get(k, False)
                or now - self._heard.get(k, self._started) < IDLE_SECONDS]
        return min(live) if live else NO_LIMIT

    def fleet_mark(self) -> int | None:
        """How far the GPU samplers as a whole have reported (newest source, or heartbeat)."""
        marks = self._marks()
        sources = [v for k, v in marks.items() if k.startswith(GPU_SOURCE)]
        if (beat := self.heartbeat_mark()) is not None:
            sources.append(beat)
        return max(sources) if sources else None

    def gpu_mark(self, gpu: str) -> int | None:
        """How far `gpu`'s own samples have reported. A GPU whose samples stopped for
        IDLE_SECONDS of wall time (a host gone), or that has sent none for that long since its
        first request came (no sampler: its requests become unattributed), follows the fleet;
        until then it holds its buckets (its samples may just be late). Wall time, not event
        time: a host whose clock runs ahead must not make the others look silent."""
        marks = self._marks()
        now = self._clock()
        own = marks.get(GPU + gpu) if gpu else None
        if own is not None:
            heartbeat = self.heartbeat_mark()
            own = own if heartbeat is None else max(own, heartbeat)
            if now - self._heard.get(GPU + gpu, self._started) < IDLE_SECONDS:
                return own
            return self.fleet_mark()
        waiting = self._waiting.setdefault(gpu, now)
        return self.fleet_mark() if now - max(waiting, self._started) >= IDLE_SECONDS else None

    def watermark(self) -> int | None:
        """The event time below which every bucket of every GPU may close (min of the two
        sides), or None while either is unknown. The closing mark of one GPU is
        min(gpu_mark(gpu), requests_mark())."""
        requests, fleet = self.requests_mark(), self.fleet_mark()
        if requests is None or fleet is None:
            return None
        return min(requests, fleet)

    def outgoing_watermark(self) -> int | None:
        """Event time below which this allocator will emit no more own-model costs (except
        cost-0 corrections): for the windows downstream."""
        mark = self.watermark()
        return None if mark is None else mark - self.bucket_us - self.lateness_us

    # -- closing
    def close_ready(self) -> pa.Table:
        """Close every (GPU, bucket) whose end + lateness its closing mark has passed."""
        requests = self.requests_mark()
        if requests is None:
            return COST_RECORD.empty_table()
        index = self._index_map()
        span = self.bucket_us + self.lateness_us
        marks: dict[str, int | None] = {}
        ready: dict[int, list[str]] = defaultdict(list)
        for gpu, bucket in index:
            if gpu not in marks:
                own = self.gpu_mark(gpu)
                marks[gpu] = None if own is None else min(own, requests)
            mark = marks[gpu]
            if mark is not None and bucket + span <= mark:
                ready[bucket].append(gpu)
        if not ready:
            return COST_RECORD.empty_table()
        out = [self._close(bucket, sorted(gpus)) for bucket, gpus in sorted(ready.items())]
        done = [key for key, chunk in self._chunks.items() if not chunk.open]
        for key in done:
            del self._chunks[key]
            self.store.pop(key, None)
        return _concat(out)

    def _close(self, bucket: int, gpus: list[str]) -> pa.Table:
        index = self._index_map()
        out, idle = [], []
        for gpu in gpus:
            keys = sorted(index.pop((gpu, bucket), ()))
            parts: dict[str, list[pa.Table]] = {"r": [], "s": []}
            for key in keys:
                chunk = self._chunks.get(key)
                if chunk is not None:
                    parts[chunk.kind].append(chunk.rows_of(gpu, bucket))
                    chunk.open.discard((gpu, bucket))
            allocated, idle_line = self._close_gpu(bucket, gpu, parts["r"], parts["s"])
            out.append(allocated)
            if idle_line is not None:
                idle.append(idle_line)
            if (c := self.closed_through(gpu)) is None or bucket > c:
                self._set_closed(gpu, bucket)
        if idle:
            out.append(_idle_records(bucket, idle))
        return _concat(out)

    def _close_gpu(self, bucket: int, gpu: str, requests: list[pa.Table],
                   samples: list[pa.Table]) -> tuple[pa.Table, _IdleLine | None]:
        """(the GPU's requests with their allocated cost, its idle line if it had samples)."""
        reqs = _dedup(_concat(requests))
        s = pa.concat_tables(samples).sort_by("timestamp") if samples else None
        if s is not None:
            s = s.filter(pc.invert(pc.is_null(s.column("timestamp"))))
        if s is None or s.num_rows == 0:  # chunks may hold no rows of this (gpu, bucket)
            if reqs.num_rows:
                GPU_UNATTRIBUTED.inc(reqs.num_rows)
                reqs = _set_status(reqs, "gpu_unattributed")
            return conform(reqs, COST_RECORD), None
        s = _first_per_timestamp(s)  # a sample sent twice (a replay) counts once
        prev_key = f"e|{gpu}"
        prev = self.store.get(prev_key)
        energy = bucket_energy_mj(
            s.column("energy_mj").to_pylist(), s.column("power_w").to_pylist(),
            s.column("interval_s").to_pylist(), None if prev is None else int(prev),
        )
        last_counter = s.column("energy_mj")[-1].as_py()
        if last_counter is not None:
            self.store[prev_key] = str(last_counter)
        fraction = s.column("gpu_fraction")[-1].as_py() if "gpu_fraction" in s.column_names \
            else None
        total = gpu_bucket_cost_pico(
            energy, self.settings.gpu,
            Decimal(1) if fraction is None else Decimal(repr(float(fraction))))
        busy = busy_pico(total, s.column("utilization_pct").to_pylist(), reqs.num_rows > 0)
        if reqs.num_rows:
            weights = pc.fill_null(pc.add(reqs.column("input_tokens"),
                                          reqs.column("output_tokens")), 0).to_numpy()
            shares = allocate(busy, weights, reqs.column("record_id"))
            reqs = reqs.set_column(reqs.schema.get_field_index("cost"), "cost",
                                   pico_to_money(shares))
            reqs = _set_status(reqs, "gpu_allocated")
        model = s.column("gpu_name")[0].as_py() if "gpu_name" in s.column_names else None
        return conform(reqs, COST_RECORD), _IdleLine(gpu, total - busy, model or gpu)


@dataclass(frozen=True)
class _IdleLine:
    gpu: str
    cost_pico: int
    model: str


def _idle_records(bucket: int, lines: list[_IdleLine]) -> pa.Table:
    """One idle cost record per GPU of a closed bucket (built together: one table per bucket)."""
    rows = [{
        "record_id": f"idle:{line.gpu}:{bucket}", "record_type": "idle", "timestamp": bucket,
        "operation": IDLE_OPERATION, "provider": IDLE_PROVIDER, "provider_kind": "internal",
        "model": line.model, "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "pricing_status": "idle", "status": "ok", "gpu_uuid": line.gpu,
        "bucket_start": bucket,
    } for line in lines]
    table = pa.Table.from_pylist(rows, schema=COST_RECORD)
    cost = pico_to_money(np.array([line.cost_pico for line in lines], dtype=np.int64))
    at = COST_RECORD.get_field_index("cost")
    return table.set_column(at, COST_RECORD.field(at), cost.cast(COST_RECORD.field(at).type))


def _gpu_codes(gpus: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(index into the distinct GPUs per row, the distinct GPUs; null as "")."""
    encoded = pc.dictionary_encode(pc.fill_null(gpus, ""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks else pa.array(
            [], pa.dictionary(pa.int32(), pa.string()))
    if len(encoded) == 0:
        return np.zeros(0, dtype=np.int32), []
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


def _distinct_pairs(codes: np.ndarray, buckets: np.ndarray) -> list[tuple[int, int]]:
    """The distinct (gpu code, bucket) pairs of a chunk, vectorised."""
    if len(codes) == 0:
        return []
    pairs = np.unique(np.stack([codes.astype(np.int64), buckets.astype(np.int64)], axis=1),
                      axis=0)
    return [(int(c), int(b)) for c, b in pairs]


def _without_empty_columns(table: pa.Table) -> pa.Table:
    """What a chunk stores: its columns less those that are null on every row (per column,
    IPC with zstd pays a fixed cost; decoding conforms them back)."""
    keep = [f.name for f, c in zip(table.schema, table.columns, strict=True)
            if not (f.nullable and c.null_count == len(c) and len(c))]
    return table if len(keep) == table.num_columns else table.select(keep)


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return COST_RECORD.empty_table()
    return pa.concat_tables([conform(t, COST_RECORD) for t in tables])


def _dedup(table: pa.Table) -> pa.Table:
    """Drop rows whose record_id was already seen (replayed messages), keep the first."""
    if table.num_rows < 2:
        return table
    ids = table.column("record_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    indexed = table.append_column("_i", pa.array(np.arange(table.num_rows)))
    first = indexed.group_by("record_id", use_threads=False).aggregate([("_i", "min")])
    first = first.column("_i_min")
    return table.take(np.sort(first.to_numpy()))


def _first_per_timestamp(samples: pa.Table) -> pa.Table:
    """One sample per timestamp (sorted input; a GPU reports once per instant)."""
    ts = samples.column("timestamp").cast(pa.int64()).to_numpy()
    if len(ts) < 2 or (ts[1:] != ts[:-1]).all():
        return samples
    keep = np.r_[True, ts[1:] != ts[:-1]]
    return samples.filter(pa.array(keep))


def _set_status(table: pa.Table, status: str) -> pa.Table:
    return table.set_column(table.schema.get_field_index("pricing_status"), "pricing_status",
                            pa.repeat(pa.scalar(status, pa.string()), table.num_rows))
