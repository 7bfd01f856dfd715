"""Sink-side de-duplication: a re-emitted key is written once, exactly, across restarts."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from costpipe.analytics import sample
from costpipe.lake import dedup
from costpipe.lake.dedup import HashSet, UniqueIndex
from costpipe.lake.layout import open_lake
from costpipe.lake.sink import LakeSink

TOPIC = "costpipe.costs.v1"
KEY = ("costs", TOPIC, 0)


def _raw(root, table: str = "costs") -> tuple[int, int]:
    """(rows, distinct keys) in the Parquet files themselves, not through a view."""
    glob = f"{root}/{table}/**/*.parquet"
    return duckdb.sql(
        f"SELECT count(*), count(DISTINCT (record_id, record_type)) FROM read_parquet('{glob}')"
    ).fetchall()[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=40), max_size=12),
       st.lists(st.integers(0, 2**64 - 1), max_size=40))
def test_hash_set_membership_matches_a_python_set(batches, probes):
    found, reference = HashSet(), set()
    for batch in batches:
        found.add(np.array(batch, dtype=np.uint64))
        reference.update(batch)
    values = np.array(probes + sorted(reference)[:10], dtype=np.uint64)
    assert found.contains(values).tolist() == [int(v) in reference for v in values]
    assert len(found) <= sum(len(b) for b in batches)


def _sink(root) -> LakeSink:
    return LakeSink(open_lake(str(root)), flush_rows=10**9, flush_seconds=10**9)


def _flush(sink: LakeSink, offset: int, data: pa.Table) -> None:
    for batch in data.to_batches(700):
        sink.add(KEY, offset, batch)
        offset += 1
    sink.flush(KEY)


def test_re_emitted_rows_at_new_offsets_are_written_once(tmp_path):
    data = sample.costs(6_000, days=0.5)
    sink = _sink(tmp_path)
    _flush(sink, 0, data.slice(0, 4_000))
    # a costing worker killed mid-way re-emits 1,000 records it had sent, then goes on
    _flush(sink, 100, pa.concat_tables([data.slice(3_000, 1_000), data.slice(4_000, 2_000)]))
    assert _raw(tmp_path) == (6_000, 6_000)
    # the sink itself restarts (empty index, rebuilt from the lake) and sees them yet again
    sink = _sink(tmp_path)
    _flush(sink, 200, data.slice(2_500, 3_500))
    assert _raw(tmp_path) == (6_000, 6_000)


def test_duplicates_inside_one_flush_keep_the_first_copy(tmp_path):
    data = sample.costs(1_000, days=0.1)
    changed = data.slice(0, 10).set_column(
        data.schema.get_field_index("input_tokens"), "input_tokens",
        pa.array([999_999] * 10, pa.int64())).cast(data.schema)
    sink = _sink(tmp_path)
    _flush(sink, 0, pa.concat_tables([data, changed]))
    assert _raw(tmp_path) == (1_000, 1_000)
    assert duckdb.sql(f"SELECT max(input_tokens) FROM read_parquet('{tmp_path}/costs/**/*.parquet')"
                      ).fetchall()[0][0] < 999_999


def test_a_hash_collision_never_drops_a_distinct_record(tmp_path, monkeypatch):
    """Every key hashing alike: all are candidates, the exact check against the lake keeps them."""
    monkeypatch.setattr(dedup, "key_hashes", lambda data, columns: np.zeros(data.num_rows,
                                                                            dtype=np.uint64))
    data = sample.costs(3_000, days=0.2)
    sink = _sink(tmp_path)
    _flush(sink, 0, data.slice(0, 1_000))
    _flush(sink, 50, data.slice(500, 2_500))
    assert _raw(tmp_path) == (3_000, 3_000)


def test_same_id_with_another_record_type_is_a_different_row(tmp_path):
    data = sample.costs(200, days=0.01, idle_share=0.0)
    correction = data.set_column(data.schema.get_field_index("record_type"), "record_type",
                                 pa.array(["correction"] * 200)).cast(data.schema)
    sink = _sink(tmp_path)
    _flush(sink, 0, data)
    _flush(sink, 10, correction)
    assert _raw(tmp_path) == (400, 400)


def test_windows_revisions_are_distinct_and_re_emitted_windows_are_not(tmp_path):
    windows, _ = sample.windows_and_alerts(sample.costs(5_000, days=0.5))
    late = windows.set_column(windows.schema.get_field_index("revision"), "revision",
                              pa.array([1] * windows.num_rows, pa.int32())).cast(windows.schema)
    sink = _sink(tmp_path)
    key = ("windows", "costpipe.windows.v1", 0)
    for offset, part in enumerate((windows, windows, late, late)):
        sink.add(key, offset, part.combine_chunks().to_batches()[0])
        sink.flush(key)
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/windows/**/*.parquet')"
                      ).fetchall()[0][0]
    assert rows == 2 * windows.num_rows


def test_memory_follows_recent_slices_and_eviction_stays_exact(tmp_path):
    """Idle slices leave memory; a late re-emission for one reloads it from the lake."""
    now = [0.0]
    data = sample.costs(20_000, days=2).sort_by("timestamp")  # 48 hours of event time
    sink = _sink(tmp_path)
    sink._unique = UniqueIndex(sink.lake, idle_seconds=60, clock=lambda: now[0])
    for offset, start in enumerate(range(0, 20_000, 2_000)):
        _flush(sink, offset * 10, data.slice(start, 2_000))
        now[0] += 30  # ~5 hours of event time per 30 s of wall time
    assert sink._unique.held_keys() < 20_000 * 4 / 10  # the last minute or so, not 48 hours
    _flush(sink, 500, data.slice(0, 3_000))  # the oldest rows, re-emitted late
    _flush(sink, 600, data)  # and everything again
    assert _raw(tmp_path) == (20_000, 20_000)
