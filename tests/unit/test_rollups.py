"""Rollups and compaction never change an answer: every view equals a raw scan, to the pico.

Random lakes: small files from several partitions over several hours (idle rows, errors, apps,
teams), maintenance (compaction + rollups) at random points, replays of a range already
written (the same file name again) and late corrections (new files in hours already rolled
up). After each maintenance and at the end, the views read through rollups must equal the
views over raw rows only (`analytics.connect(rollups=False)`).
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.settings import LakeSettings, Settings
from costpipe.lake import rollup
from costpipe.lake.files import DataFile, list_files, live_files, split_live
from costpipe.lake.layout import open_lake
from costpipe.lake.maintenance import maintain
from costpipe.lake.writer import write_range

REPO_SQL = Path(analytics.__file__).parent / "sql" / "20_cost_per_operation.sql"
START = dt.datetime(2026, 11, 1, 22, tzinfo=dt.UTC)  # crosses midnight: two days
TOPIC = "costpipe.costs.v1"
# the views that read the rollups (cost_daily and idle_allocation feed them)
VIEWS = {
    "dependency_share": "day, operation, team",
    "cost_per_operation": "operation, provider_kind, provider, model",
    "avoided_spend": "day, operation",
    "breakeven": "operation",
}


def _rows(rows: int, seed: int, hour: int) -> pa.Table:
    data = sample.costs(rows, seed=seed, start=START + dt.timedelta(hours=hour), days=1 / 24,
                        idle_share=0.1)
    rng = np.random.default_rng(seed)
    apps = pa.array(rng.choice(["web", "batch", None], rows).tolist(), pa.string())
    status = pa.array(np.where(rng.random(rows) < 0.1, "error", "ok"), pa.string())
    ids = pa.array([f"s{seed}-{i}" for i in range(rows)], pa.string())
    for name, column in (("app", apps), ("status", status), ("record_id", ids)):
        data = data.set_column(data.schema.get_field_index(name), name, column)
    return data


def _answers(root, rollups: bool) -> dict[str, pl.DataFrame]:
    con = analytics.connect(Settings(lake=LakeSettings(location=str(root))), rollups=rollups)
    out = {name: con.sql(f"SELECT * FROM {name} ORDER BY {order}").pl()
           for name, order in VIEWS.items()}
    out["summary"] = pl.DataFrame([{k: str(v) for k, v in analytics.summary(con).items()}])
    return out


def _same_as_raw(root) -> None:
    got, want = _answers(root, True), _answers(root, False)
    for name in want:
        assert got[name].equals(want[name]), (name, got[name], want[name])


_write = st.tuples(st.just("write"), st.integers(0, 5), st.integers(0, 2), st.integers(1, 60))
_replay = st.tuples(st.just("replay"), st.integers(0, 100), st.just(0), st.just(0))
_maintain = st.tuples(st.just("maintain"), st.integers(1, 7), st.sampled_from([0, 10**6]),
                      st.just(0))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.one_of(_write, _write, _replay, _maintain), min_size=4, max_size=10))
def test_views_through_rollups_equal_a_raw_scan(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("lake")
    lake = open_lake(str(root))
    next_offset = [0, 0, 0]
    written: list[tuple[int, int, int, pa.Table]] = []
    seed = 0
    steps = [("write", 0, 0, 30), *steps, ("maintain", 8, 0, 0)]
    for kind, a, b, c in steps:
        if kind == "write":
            hour, partition, rows = a, b, c
            seed += 1
            data = _rows(rows, seed, hour)
            first = next_offset[partition]
            last = first + rows // 7
            next_offset[partition] = last + 1
            write_range(lake, "costs", data, TOPIC, partition, first, last)
            written.append((partition, first, last, data))
        elif kind == "replay" and written:
            partition, first, last, data = written[a % len(written)]
            write_range(lake, "costs", data, TOPIC, partition, first, last)
        elif kind == "maintain":
            options = LakeSettings(location=str(root), closed_after_seconds=0,
                                   compaction_grace_seconds=b)
            maintain(lake, options, now=(START + dt.timedelta(hours=a)).timestamp())
            _same_as_raw(root)
    _same_as_raw(root)
    assert rollup.plan(lake).costs  # the last maintenance rolled everything up
    assert not rollup.plan(lake).tail


def test_a_late_file_sends_its_hour_back_to_raw_until_rebuilt(tmp_path):
    lake = open_lake(str(tmp_path))
    for partition in range(2):
        for index in range(3):
            offset = index * 10
            write_range(lake, "costs", _rows(50, 10 * partition + index, 0), TOPIC, partition,
                        offset, offset + 9)
    options = LakeSettings(location=str(tmp_path), closed_after_seconds=0,
                           compaction_grace_seconds=0)
    later = (START + dt.timedelta(days=2)).timestamp()
    maintain(lake, options, now=later)
    assert len(live_files(lake, "costs")) == 2  # one file per partition in the hour
    assert not rollup.plan(lake).tail
    write_range(lake, "costs", _rows(5, 99, 0), TOPIC, 0, 100, 100)  # a late correction
    plan = rollup.plan(lake)
    assert len(plan.tail) == 3 and not plan.costs  # the hour (and its day) read raw
    _same_as_raw(tmp_path)
    maintain(lake, options, now=later)
    assert not rollup.plan(lake).tail
    _same_as_raw(tmp_path)


def _file(first: int, last: int, partition: int = 0, folder: str = "f") -> DataFile:
    return DataFile(f"{folder}/t-p{partition}-{first}-{last}.parquet", folder, "t", partition,
                    first, last)


def test_a_merged_file_supersedes_exactly_the_ranges_it_covers():
    small = [_file(0, 9), _file(10, 19), _file(20, 29)]
    merged = _file(0, 29)
    late = _file(30, 39)
    other_partition = _file(0, 9, partition=1)
    other_hour = _file(0, 9, folder="g")
    live, superseded = split_live([*small, merged, late, other_partition, other_hour])
    assert set(superseded) == set(small)
    assert set(live) == {merged, late, other_partition, other_hour}
    again = _file(0, 39)  # a later compaction over the merged file and the late one
    live, superseded = split_live([*small, merged, late, again])
    assert live == [again] and set(superseded) == {*small, merged, late}


def test_compaction_keeps_the_sinks_offsets_readable(tmp_path):
    from costpipe.lake.writer import durable_high_water

    lake = open_lake(str(tmp_path))
    for index in range(4):
        write_range(lake, "costs", _rows(20, index, 0), TOPIC, 0, index * 5, index * 5 + 4)
    maintain(lake, LakeSettings(location=str(tmp_path), closed_after_seconds=0,
                                compaction_grace_seconds=0),
             now=(START + dt.timedelta(days=1)).timestamp())
    assert durable_high_water(lake, "costs", TOPIC, 0) == 19
    names = [f.name for f in list_files(lake, lake.path("costs"))]
    assert f"{TOPIC}-p0-{0:020d}-{19:020d}.parquet" in names


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.5, 60_000), min_size=1, max_size=40))
@example([10.0, 1000.0])
def test_latency_percentiles_track_quantile_cont_for_any_count(latencies):
    import duckdb

    from costpipe.schemas import sketch

    con = duckdb.connect()
    con.execute(f"CREATE MACRO latency_bucket_value(bucket) AS {sketch.SQL_VALUE}")
    con.register("raw", pa.table({"latency_ms": latencies}))
    con.execute(f"""CREATE VIEW latency_rollup AS SELECT 'op' AS operation,
        'external' AS provider_kind, 'p' AS provider, 'm' AS model, {sketch.SQL_BUCKET} AS bucket,
        count(*) AS n FROM raw GROUP BY ALL""")
    sql = (REPO_SQL.read_text().split("CREATE OR REPLACE VIEW cost_per_operation AS")[1]
           .split("base AS (")[0].removeprefix("\nWITH sums AS (").split("sketch AS (", 1)[1])
    got = con.execute("WITH sketch AS (" + sql.rstrip().rstrip(",")
                      + " SELECT latency_q FROM quantiles").fetchall()[0][0]
    want = con.execute("SELECT quantile_cont(latency_ms, [0.5, 0.95, 0.99]) FROM raw"
                       ).fetchall()[0][0]
    ordered = sorted(latencies)
    for q, value, exact in zip((0.5, 0.95, 0.99), got, want, strict=True):
        # each rank's value within its bucket (2 %) of the true one, interpolated alike: for
        # [10, 1000] the median is ~505, not the lower rank's 10
        upper = ordered[math.ceil(q * (len(ordered) - 1))]
        assert abs(value - exact) <= 0.021 * upper, (q, value, exact)
