"""Lake writer and sink core: deterministic names, atomic visibility, replay without duplicates."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from costpipe.analytics import sample
from costpipe.lake import writer
from costpipe.lake.layout import open_lake, parse_data_file_name
from costpipe.lake.sink import LakeSink

TOPIC = "costpipe.costs.v1"


def _count(lake_root: str, table: str = "costs") -> int:
    glob = f"{lake_root}/{table}/**/*.parquet"
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0][0]


def _all_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_write_range_splits_by_hour_with_deterministic_names(tmp_path):
    lake = open_lake(str(tmp_path))
    data = sample.costs(5_000, days=1)
    files = writer.write_range(lake, "costs", data, TOPIC, 3, 100, 199)
    assert len(files) == 24
    assert sum(f.rows for f in files) == 5_000
    for f in files:
        assert "/costs/date=2026-11-01/hour=" in f.path
        assert parse_data_file_name(f.path.rsplit("/", 1)[1]) == (TOPIC, 3, 100, 199)
    before = _all_files(tmp_path)
    writer.write_range(lake, "costs", data, TOPIC, 3, 100, 199)  # a replay of the same range
    assert _all_files(tmp_path) == before
    assert _count(str(tmp_path)) == 5_000
    assert not list((tmp_path / "_staging").iterdir())
    assert writer.durable_high_water(lake, "costs", TOPIC, 3) == 199
    assert writer.durable_high_water(lake, "costs", TOPIC, 4) == -1


def test_crash_mid_write_leaves_nothing_visible(tmp_path, monkeypatch):
    lake = open_lake(str(tmp_path))
    data = sample.costs(2_000, days=1)
    real = writer._write_durable
    calls = {"n": 0}

    def torn(lake_, path, part):
        calls["n"] += 1
        if calls["n"] == 3:
            with open(path, "wb") as handle:  # half a file, then the process dies
                handle.write(b"PAR1garbage")
            raise KeyboardInterrupt("killed")
        real(lake_, path, part)

    monkeypatch.setattr(writer, "_write_durable", torn)
    with pytest.raises(KeyboardInterrupt):
        writer.write_range(lake, "costs", data, TOPIC, 0, 0, 9)
    assert list((tmp_path / "_staging").iterdir())  # torn temp files exist...
    assert not (tmp_path / "costs").exists()  # ...but nothing in the table tree
    writer.recover(lake, "costs", TOPIC, 0)
    assert not list((tmp_path / "_staging").iterdir())
    assert writer.durable_high_water(lake, "costs", TOPIC, 0) == -1  # offsets will be re-read


def test_crash_between_renames_rolls_forward(tmp_path, monkeypatch):
    lake = open_lake(str(tmp_path))
    data = sample.costs(3_000, days=1)
    real = writer._move
    calls = {"n": 0}

    def dies(lake_, src, dst):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        real(lake_, src, dst)

    monkeypatch.setattr(writer, "_move", dies)
    with pytest.raises(KeyboardInterrupt):
        writer.write_range(lake, "costs", data, TOPIC, 0, 0, 9)
    monkeypatch.setattr(writer, "_move", real)
    # DuckDB's glob only sees completed files, never a staging name
    assert 0 < _count(str(tmp_path)) < 3_000
    writer.recover(lake, "costs", TOPIC, 0)
    assert _count(str(tmp_path)) == 3_000
    assert not list((tmp_path / "_staging").iterdir())


def _messages(n_messages: int, rows: int) -> list[pa.RecordBatch]:
    table = sample.costs(n_messages * rows, days=2)
    return [table.slice(i * rows, rows).to_batches()[0] for i in range(n_messages)]


def _drive(sink: LakeSink, messages: list[pa.RecordBatch], partition: int) -> list[int]:
    acked: list[int] = []
    for offset, batch in enumerate(messages):
        acked += sink.add(("costs", TOPIC, partition), offset, batch, token=offset)
        for flushed in sink.flush_due(now=0.0):
            acked += flushed.tokens
    for flushed in sink.flush_all():
        acked += flushed.tokens
    return acked


def test_replay_with_different_flush_boundaries_adds_no_rows(tmp_path):
    lake = open_lake(str(tmp_path))
    messages = _messages(30, 200)
    total = sum(m.num_rows for m in messages)
    first = LakeSink(lake, flush_rows=1_000, flush_seconds=3600, clock=lambda: 0.0)
    assert sorted(_drive(first, messages, 0)) == list(range(30))
    assert _count(str(tmp_path)) == total
    # a replay from offset 0 by a fresh process with other boundaries
    replay = LakeSink(lake, flush_rows=1_400, flush_seconds=3600, clock=lambda: 0.0)
    assert sorted(_drive(replay, messages, 0)) == list(range(30))
    assert replay.skipped_messages == 30
    assert _count(str(tmp_path)) == total
    # a replay after a partial loss of the lake's tail rewrites only what is missing
    for path in (tmp_path / "costs").rglob("*-00000000000000000029.parquet"):
        path.unlink()
    third = LakeSink(lake, flush_rows=700, flush_seconds=3600, clock=lambda: 0.0)
    _drive(third, messages, 0)
    assert _count(str(tmp_path)) == total
    got = duckdb.sql(
        f"SELECT sum(cost) FROM read_parquet('{tmp_path}/costs/**/*.parquet')").fetchall()[0][0]
    want = pc.sum(pa.Table.from_batches(messages)["cost"]).as_py()
    assert got == want


def test_tokens_only_come_back_after_the_flush(tmp_path):
    lake = open_lake(str(tmp_path))
    clock = {"t": 0.0}
    sink = LakeSink(lake, flush_rows=10_000, flush_seconds=5, clock=lambda: clock["t"])
    batch = _messages(1, 50)[0]
    assert sink.add(("costs", TOPIC, 1), 7, batch, token="e7") == []
    assert sink.flush_due() == []
    clock["t"] = 6.0
    (flushed,) = sink.flush_due()
    assert flushed.tokens == ["e7"] and flushed.rows == 50
    assert all(f.path.endswith(".parquet") for f in flushed.files)
    sink.forget(TOPIC, 1)
    assert sink.add(("costs", TOPIC, 1), 7, batch, token="again") == ["again"]
