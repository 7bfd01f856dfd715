"""Costs are idempotent per request_id: a request id seen again within the horizon is dropped.

Why here (the costing stage of each requests partition): a request id sent twice (a client
retry through another collector, a spool replay after an ambiguous acknowledgement) must not be
costed, windowed or alerted on twice. Collectors route every row to its home partition (Kafka's
murmur2 partition of its request_id, `costpipe.schemas.envelope.home_partitions`; the costing
stage forwards rows that arrive elsewhere), so all copies of an id meet in one partition, whose
costing stage alone decides which copy is first.

The index holds, per id, a 128-bit hash and the offset of the message the id first arrived in:
24 bytes per id in the horizon (`ingest.dedup_horizon_seconds` of event time). A copy is a
duplicate when its id's first offset is lower than its own message's (or the same message holds
it earlier). Keeping the lowest offset makes the decision the same after a replay from any
committed offset, so a crash never turns a duplicate into a first or the other way round.

The index survives restarts and rebalances through a journal in the lake's `_state/` folder:
every id with its offset and event time, in Parquet segments written at most every
`JOURNAL_SECONDS` (hourly segments are merged into one). A new owner loads the journal and reads
the requests partition itself between the journal's last offset and where it starts consuming,
so the index is complete whatever the lake sink had flushed. Hash collisions: two different ids
share a 128-bit hash with probability below 1e-20 at 10^9 ids.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from costpipe.lake.layout import Lake

log = logging.getLogger(__name__)

HOUR_US = 3_600_000_000
JOURNAL_SECONDS = 30.0
_SEEDS = (0x5EED_0001, 0x5EED_0002)
_SEGMENT = re.compile(r"^(?P<first>\d{20})-(?P<last>\d{20})-(?P<hour>\d{12})\.parquet$")
_JOURNAL_SCHEMA = pa.schema([("request_id", pa.string()), ("offset", pa.int64()),
                             ("timestamp_us", pa.int64())])


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of a 128-bit hash per id (stable within one process: the
    index is always rebuilt from the ids themselves, never from stored hashes)."""
    series = pl.Series(values=ids).cast(pl.Utf8)
    return (series.hash(seed=_SEEDS[0]).to_numpy().astype(np.uint64),
            series.hash(seed=_SEEDS[1]).to_numpy().astype(np.uint64))


@dataclass
class _Run:
    """Entries sorted by the high hash: one LSM run."""

    hi: np.ndarray
    lo: np.ndarray
    offset: np.ndarray
    hour: np.ndarray

    def __len__(self) -> int:
        return len(self.hi)


@dataclass
class RequestIdIndex:
    """Request ids of one requests partition within the horizon, each with its first offset."""

    horizon_us: int
    runs: list[_Run] = field(default_factory=list)
    newest_us: int | None = None
    _evicted_below: int = -(2**62)

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def first_offsets(self, hi: np.ndarray, lo: np.ndarray, ignore: int = -1) -> np.ndarray:
        """Per query, the first offset stored for its id (entries at offset `ignore` not
        counted), or -1."""
        found = np.full(len(hi), -1, dtype=np.int64)
        for run in self.runs:
            if not len(run):
                continue
            left = np.searchsorted(run.hi, hi, "left")
            right = np.searchsorted(run.hi, hi, "right")
            single = (right - left) == 1
            at = np.minimum(left, len(run) - 1)
            match = single & (run.lo[at] == lo) & (run.offset[at] != ignore)
            take = match & ((found < 0) | (run.offset[at] < found))
            found[take] = run.offset[at][take]
            for q in np.flatnonzero((right - left) > 1):  # equal high halves: rare
                for j in range(left[q], right[q]):
                    if run.lo[j] == lo[q] and run.offset[j] != ignore \
                            and (found[q] < 0 or run.offset[j] < found[q]):
                        found[q] = run.offset[j]
        return found

    def add(self, hi: np.ndarray, lo: np.ndarray, offsets: np.ndarray,
            timestamps_us: np.ndarray) -> None:
        if len(hi) == 0:
            return
        order = np.argsort(hi, kind="stable")
        self.runs.append(_Run(hi[order], lo[order], offsets[order].astype(np.int64),
                              (timestamps_us[order] // HOUR_US).astype(np.int64)))
        newest = int(timestamps_us.max())
        self.newest_us = newest if self.newest_us is None else max(self.newest_us, newest)
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            newer, older = self.runs.pop(), self.runs.pop()
            self.runs.append(_merge(older, newer))
        self._evict()

    def _evict(self) -> None:
        """Drop whole hours of event time older than the horizon (at most once an hour)."""
        if self.newest_us is None:
            return
        below = (self.newest_us - self.horizon_us) // HOUR_US
        if below <= self._evicted_below:
            return
        self._evicted_below = below
        kept = []
        for run in self.runs:
            keep = run.hour >= below
            if keep.all():
                kept.append(run)
            elif keep.any():
                kept.append(_Run(run.hi[keep], run.lo[keep], run.offset[keep], run.hour[keep]))
        self.runs = kept

    def check(self, ids: pa.Array | pa.ChunkedArray, timestamps_us: np.ndarray,
              offset: int, replay_of: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(duplicate mask, first offset per row) for one message's rows; records the firsts.

        A row is a duplicate when its id arrived in a lower offset, or earlier in this message.
        `replay_of`: the message is a dead-letter replay of rows refused at that offset, so an
        entry there is not a costed copy (a new owner's re-read of the partition may have
        indexed a row its predecessor refused); the replay itself is, so a second replay is a
        duplicate.
        """
        n = len(ids)
        if n == 0:
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
        hi, lo = id_hashes(ids)
        first = self.first_offsets(hi, lo, -1 if replay_of is None else replay_of)
        keys = pl.DataFrame({"hi": hi, "lo": lo})
        within = ~keys.select(pl.struct("hi", "lo").is_first_distinct()).to_series().to_numpy()
        duplicate = ((first >= 0) & (first < offset)) | within
        fresh = ~duplicate & ((first < 0) | (first > offset))
        first = np.where(within & ((first < 0) | (first > offset)), offset, first)
        self.add(hi[fresh], lo[fresh], np.full(int(fresh.sum()), offset), timestamps_us[fresh])
        return duplicate, first


def _merge(older: _Run, newer: _Run) -> _Run:
    hi = np.concatenate([older.hi, newer.hi])
    order = np.argsort(hi, kind="stable")
    return _Run(hi[order], np.concatenate([older.lo, newer.lo])[order],
                np.concatenate([older.offset, newer.offset])[order],
                np.concatenate([older.hour, newer.hour])[order])


class IndexJournal:
    """The index's durable copy: ids, offsets and event times of one requests partition."""

    def __init__(self, lake: Lake, topic: str, partition: int) -> None:
        self.lake = lake
        self.folder = lake.path("_state", "request_ids", f"{topic}-p{partition}")
        self._buffer: list[pa.Table] = []
        self._first: int | None = None
        self._last = -1
        self._written_at = time.monotonic()

    def record(self, ids: pa.Array | pa.ChunkedArray, offset: int,
               timestamps_us: np.ndarray) -> None:
        """Remember the ids of one processed message (written by `flush_due`)."""
        if self._first is None:
            self._first = offset
        self._last = max(self._last, offset)
        if len(ids):
            self._buffer.append(pa.table({
                "request_id": pc.cast(ids, pa.string()),
                "offset": pa.array(np.full(len(ids), offset, dtype=np.int64)),
                "timestamp_us": pa.array(timestamps_us.astype(np.int64)),
            }, schema=_JOURNAL_SCHEMA))

    def due(self) -> bool:
        return self._first is not None and (
            time.monotonic() - self._written_at >= JOURNAL_SECONDS)

    def take(self) -> tuple[pa.Table, int, int] | None:
        """Detach what is buffered, to write in a thread: (rows, first offset, last offset)."""
        if self._first is None:
            return None
        rows = pa.concat_tables(self._buffer) if self._buffer else _JOURNAL_SCHEMA.empty_table()
        taken = (rows, self._first, self._last)
        self._buffer, self._first, self._last = [], None, -1
        self._written_at = time.monotonic()
        return taken

    def write(self, rows: pa.Table, first: int, last: int) -> None:
        """One segment, atomically (written under a temporary name, then renamed)."""
        hour = int(pc.max(rows["timestamp_us"]).as_py() // HOUR_US) if rows.num_rows else 0
        self.lake.fs.create_dir(self.folder, recursive=True)
        name = f"{first:020d}-{last:020d}-{max(hour, 0):012d}.parquet"
        tmp = f"{self.folder}/.tmp-{uuid.uuid4().hex}"
        with self.lake.fs.open_output_stream(tmp) as stream:
            pq.write_table(rows, stream, compression="zstd")
        self.lake.fs.move(tmp, f"{self.folder}/{name}")

    def segments(self) -> list[tuple[int, int, int, str]]:
        """(first offset, last offset, newest event hour, path), oldest first."""
        infos = self.lake.fs.get_file_info(pafs.FileSelector(self.folder, allow_not_found=True))
        out = []
        for info in infos:
            match = _SEGMENT.match(info.base_name)
            if match:
                out.append((int(match["first"]), int(match["last"]), int(match["hour"]),
                            info.path))
        return sorted(out)

    def load(self, horizon_us: int) -> tuple[pa.Table, int]:
        """(journal rows within the horizon, last offset the journal covers or -1); expired
        segments are deleted and many small ones merged."""
        segments = self.segments()
        if not segments:
            return _JOURNAL_SCHEMA.empty_table(), -1
        newest_hour = max(s[2] for s in segments)
        cutoff = (newest_hour * HOUR_US - horizon_us) // HOUR_US
        live = [s for s in segments if s[2] >= cutoff]
        for *_, path in (s for s in segments if s[2] < cutoff):
            with contextlib.suppress(OSError):
                self.lake.fs.delete_file(path)
        tables = [pq.read_table(path, filesystem=self.lake.fs) for *_, path in live]
        rows = pa.concat_tables(tables) if tables else _JOURNAL_SCHEMA.empty_table()
        if len(live) > 48:  # many small segments: one merged segment replaces them
            first, last = live[0][0], max(s[1] for s in live)
            self.write(rows, first, last)
            for *_, path in live:
                with contextlib.suppress(OSError):
                    self.lake.fs.delete_file(path)
        return rows, max(s[1] for s in segments)


def index_from_journal(rows: pa.Table, horizon_us: int) -> RequestIdIndex:
    index = RequestIdIndex(horizon_us)
    if rows.num_rows:
        hi, lo = id_hashes(rows["request_id"])
        index.add(hi, lo, rows["offset"].to_numpy(), rows["timestamp_us"].to_numpy())
    return index
