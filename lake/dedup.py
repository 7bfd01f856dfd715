"""Exact de-duplication at the sink, so every lake query is a plain scan.

Why: the streams are at-least-once. A costing worker killed after emitting cost records but
before committing its input re-emits them at new offsets of the same costs partition (records
are keyed by their source partition), with the same row identity (`Table.unique_key`) and the
same time column, so a re-emitted row always lands in the same (topic, partition, hour) of the
lake as its first copy. De-duplicating in the views instead costs a global hash partition per
query: 4.5 s vs 0.08 s for count(*) over 10M rows on 2 cores (bench/RESULTS.md).

How: per (table, topic, partition, hour) a set of 64-bit hashes of the keys the lake already
holds, loaded from that hour's files on first touch (the lake is the truth, so a restart or a
rebalance rebuilds it exactly) and extended after each durable write. A hash hit is only a
candidate: it is confirmed against the actual key columns in the lake before a row is dropped,
so a hash collision can never lose a record. Hours not touched recently are evicted and
reloaded on demand, which bounds memory by `max_hours`, not by the lake's size.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from prometheus_client import Counter

from lake.layout import Lake, bucket_partition, hour_buckets, parse_data_file_name, partition_dir
from lake.layout import table as lake_table

DUPLICATES = Counter("costpipe_lake_duplicate_rows_total",
                     "Rows not written because the lake already held their key (replays)",
                     ["table"])

Key = tuple[str, str, int]  # (table, topic, partition)
_SEED = 0x5EED


class HashSet:
    """A growing set of uint64 with vectorised membership: sorted runs merged like an LSM tree.

    Adding n values costs O(n log n) amortised; a lookup is one searchsorted per run and there
    are O(log n) runs, so neither grows with a Python loop over rows.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(run) for run in self._runs)

    def add(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self._runs.append(np.unique(values.astype(np.uint64, copy=False)))
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(np.union1d(older, newer))

    def contains(self, values: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(values), dtype=bool)
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            hit |= run[at] == values
        return hit


def key_hashes(data: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    frame = pl.from_arrow(data.select(list(columns)))
    assert isinstance(frame, pl.DataFrame)
    return frame.hash_rows(seed=_SEED).to_numpy()


def first_per_key(data: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Mask of rows that are the first with their exact key inside `data` (nulls compare equal)."""
    frame = pl.from_arrow(data.select(list(columns)))
    assert isinstance(frame, pl.DataFrame)
    return frame.select(pl.struct(list(columns)).is_first_distinct()).to_series().to_numpy()


class UniqueIndex:
    """Which unique keys the lake already holds, per (table, topic, partition, hour)."""

    def __init__(self, lake: Lake, max_hours: int = 6) -> None:
        self.lake = lake
        self.max_hours = max_hours
        self._hours: OrderedDict[tuple[Key, int], HashSet] = OrderedDict()

    def fresh(self, key: Key, data: pa.Table) -> pa.Table:
        """The rows of `data` whose key is neither in the lake nor earlier in `data`."""
        columns = lake_table(key[0]).unique_key
        if not columns or data.num_rows == 0:
            return data
        keep = first_per_key(data, columns)
        hashes = key_hashes(data, columns)
        buckets = hour_buckets(data, lake_table(key[0]).time_column)
        candidate = np.zeros(data.num_rows, dtype=bool)
        for bucket in np.unique(buckets):
            rows = buckets == bucket
            candidate[rows] = self._hour(key, int(bucket)).contains(hashes[rows])
        candidate &= keep
        if candidate.any():
            keep &= ~self._held(key, data, np.flatnonzero(candidate), buckets, columns)
        dropped = data.num_rows - int(keep.sum())
        if dropped:
            DUPLICATES.labels(key[0]).inc(dropped)
            data = data.filter(pa.array(keep))
        return data

    def record(self, key: Key, data: pa.Table) -> None:
        """Call after `data` is durable in the lake."""
        spec = lake_table(key[0])
        if not spec.unique_key or data.num_rows == 0:
            return
        hashes = key_hashes(data, spec.unique_key)
        buckets = hour_buckets(data, spec.time_column)
        for bucket in np.unique(buckets):
            self._hour(key, int(bucket)).add(hashes[buckets == bucket])

    def forget(self, topic: str, partition: int) -> None:
        for slot in [s for s in self._hours if s[0][1:] == (topic, partition)]:
            del self._hours[slot]

    # -- the lake side
    def _files(self, key: Key, bucket: int) -> list[str]:
        table_name, topic, partition = key
        date, hour = bucket_partition(bucket)
        folder = self.lake.path(partition_dir(table_name, date, hour))
        infos = self.lake.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        return sorted(
            info.path for info in infos
            if (parsed := parse_data_file_name(info.base_name)) and parsed[:2] == (topic, partition)
        )

    def _read_keys(self, key: Key, bucket: int) -> pa.Table | None:
        files = self._files(key, bucket)
        if not files:
            return None
        columns = list(lake_table(key[0]).unique_key)
        return pa.concat_tables(
            pq.read_table(path, columns=columns, filesystem=self.lake.fs) for path in files)

    def _hour(self, key: Key, bucket: int) -> HashSet:
        slot = (key, bucket)
        found = self._hours.get(slot)
        if found is not None:
            self._hours.move_to_end(slot)
            return found
        found = HashSet()
        held = self._read_keys(key, bucket)
        if held is not None:
            found.add(key_hashes(held, lake_table(key[0]).unique_key))
        self._hours[slot] = found
        while len(self._hours) > self.max_hours:
            self._hours.popitem(last=False)
        return found

    def _held(self, key: Key, data: pa.Table, rows: np.ndarray, buckets: np.ndarray,
              columns: tuple[str, ...]) -> np.ndarray:
        """Exact check of hash hits: mask over `data` of candidate rows the lake really holds."""
        held = np.zeros(data.num_rows, dtype=bool)
        for bucket in np.unique(buckets[rows]):
            in_bucket = rows[buckets[rows] == bucket]
            stored = self._read_keys(key, int(bucket))
            if stored is None:
                continue
            probe = pl.from_arrow(data.select(list(columns)).take(pa.array(in_bucket)))
            lake_keys = pl.from_arrow(stored)
            assert isinstance(probe, pl.DataFrame) and isinstance(lake_keys, pl.DataFrame)
            found = probe.with_row_index("_row").join(
                lake_keys.unique(), on=list(columns), how="semi", nulls_equal=True)
            held[in_bucket[found["_row"].to_numpy()]] = True
        return held
