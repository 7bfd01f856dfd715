"""The costing -> allocation -> stage 1 -> stage 2 chain in memory, without Kafka.

Totals are checked against an expectation computed independently (genai-prices row by row,
GPU costs by plain Decimal formulas).
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.settings import Settings
from costpipe.schemas.codec import conform
from costpipe.schemas.records import COST_RECORD
from costpipe.streams.allocation.allocator import GpuAllocator
from costpipe.streams.costing import cost_records
from costpipe.streams.windows import WindowMerger, partials
from tests.streams_support.workload import make_workload


def _settings() -> Settings:
    return Settings.model_validate({
        "topics": {"partitions": 1},
        "windows": {"seconds": 60, "allowed_lateness_seconds": 20},
        "gpu": {"bucket_seconds": 10, "allowed_lateness_seconds": 5},
    })


def _run(settings: Settings, replay: bool = False, restart_at: int | None = None):
    work = make_workload(settings, seconds=120, per_second=20)
    store: dict[str, str] = {}
    allocator = GpuAllocator(settings, store)
    merger = WindowMerger(settings, {})
    costs, windows = [], []
    offset = 0

    def merge(table: pa.Table, source: str, off: int) -> None:
        if table.num_rows == 0:
            return
        wm = pc.max(table.column("timestamp").cast(pa.int64())).as_py()
        for _ in range(2 if replay else 1):  # replay = deliver every partial twice
            windows.append(merger.apply(partials(table, 60), source, off, wm))

    for req, smp in zip(work.requests, work.samples * 10, strict=False):
        if offset == restart_at:  # a new worker: only the store survives
            allocator = GpuAllocator(settings, store)
        external, pending = cost_records(req, settings, 0, offset)
        costs.append(external)
        merge(external, "requests:0", offset)
        offset += 1
        late = allocator.add_requests(pending, f"w{offset}")
        allocator.note_requests(pc.max(req.column("timestamp").cast(pa.int64())).as_py(), "r0")
        allocator.add_samples(smp, f"w{offset}", "gpu:0")
        closed = pa.concat_tables([conform(late, COST_RECORD), allocator.close_ready()])
        costs.append(closed)
        merge(closed, "gpuwork:0", offset)
    allocator.note_requests(2**62, "r0")  # requests stream finished
    for smp in work.samples[len(work.requests):]:
        offset += 1
        allocator.add_samples(smp, f"w{offset}", "gpu:0")
        closed = allocator.close_ready()
        costs.append(closed)
        merge(closed, "gpuwork:0", offset)
    return work, pa.concat_tables(costs), pa.concat_tables(windows), merger, allocator


def test_totals_reconcile_exactly() -> None:
    settings = _settings()
    work, costs, windows, _, _ = _run(settings)
    ext = costs.filter(pc.equal(costs.column("provider_kind"), "external"))
    assert pc.sum(ext.column("cost")).as_py() == work.expected_external
    internal = costs.filter(pc.equal(costs.column("provider_kind"), "internal"))
    closed_buckets = internal.column("bucket_start")
    assert closed_buckets.null_count == 0
    # Every bucket closed except the last (watermark never passes it); compare closed ones.
    gpu_total = pc.sum(internal.column("cost")).as_py()
    assert Decimal(0) < gpu_total <= work.expected_gpu
    # Per (gpu, bucket): allocated + idle == the independently computed GPU cost, exactly.
    per_bucket = internal.group_by(["gpu_uuid", "bucket_start"]).aggregate([("cost", "sum")])
    got = {(g, b.timestamp()): c for g, b, c in zip(
        per_bucket["gpu_uuid"].to_pylist(), per_bucket["bucket_start"].to_pylist(),
        per_bucket["cost_sum"].to_pylist(), strict=True)}
    want = {(g, b / 1e6): c for (g, b), c in work.gpu_buckets.items()}
    assert len(got) >= len(want) - 2  # the last bucket per GPU never closes
    for key, cost in got.items():
        assert cost == want[key], key
    # Windows: Σ closed window cost == Σ cost records of those windows.
    closed_windows = pc.unique(windows.column("window_start")).to_pylist()
    ts_window = pc.floor_temporal(costs.column("timestamp"), 60, "second")
    in_closed = pc.is_in(ts_window, pa.array(closed_windows, windows.column("window_start").type))
    assert pc.sum(windows.column("cost")).as_py() == pc.sum(
        costs.filter(in_closed).column("cost")).as_py()
    assert pc.sum(pc.equal(costs.column("record_type"), "correction")).as_py() == 0
    assert pc.sum(pc.equal(costs.column("pricing_status"), "gpu_allocated")).as_py() > 1000
    # request rows are all present exactly once
    requests = costs.filter(pc.not_equal(costs.column("record_type"), "idle"))
    assert pc.count_distinct(requests.column("record_id")).as_py() == requests.num_rows


def test_replayed_partials_do_not_double_count() -> None:
    settings = _settings()
    _, _, once, _, _ = _run(settings)
    _, _, twice, _, _ = _run(settings, replay=True)
    assert pc.sum(once.column("cost")).as_py() == pc.sum(twice.column("cost")).as_py()
    assert pc.sum(once.column("requests")).as_py() == pc.sum(twice.column("requests")).as_py()


def test_allocator_restart_rebuilds_pending_state_from_the_store() -> None:
    """Killing the allocator mid-run (pending rows of open buckets only in the store) changes
    no cost record."""
    settings = _settings()
    _, once, _, _, _ = _run(settings)
    _, restarted, _, _, allocator = _run(settings, restart_at=2)
    key = ["record_id", "record_type"]
    assert restarted.num_rows == once.num_rows
    assert restarted.sort_by([(k, "ascending") for k in key]).select([*key, "cost"]).equals(
        once.sort_by([(k, "ascending") for k in key]).select([*key, "cost"]))
    assert all(not k.startswith(("pr|", "ps|")) or allocator._chunks.get(k) is not None
               for k in allocator.store)  # nothing closed is left behind in the store


def test_dedup_keeps_first_row_per_record_id() -> None:
    from costpipe.streams.allocation.allocator import _dedup

    table = pa.table({"record_id": ["b", "a", "b", "c", "a"], "v": [1, 2, 3, 4, 5]})
    out = _dedup(table)
    assert out.column("record_id").to_pylist() == ["b", "a", "c"]
    assert out.column("v").to_pylist() == [1, 2, 4]


def test_a_backlogged_requests_partition_is_never_idle() -> None:
    """Draining a backlog, the small GPU stream races ahead of the requests in event time; the
    busy partitions must hold the watermark back, or every own-model request arrives too late
    for its bucket (found with a 2M-event backlog: 0 of 800k own-model requests allocated)."""
    settings = _settings()
    wall = [0.0]
    allocator = GpuAllocator(settings, {}, clock=lambda: wall[0])
    minute = 60_000_000
    allocator.note_samples_until(60 * minute, "gpu:0")
    allocator.note_requests(5 * minute, "r0", caught_up=False)
    assert allocator.watermark() == 5 * minute
    wall[0] += 3600  # a backlogged partition holds buckets back however long it takes
    assert allocator.watermark() == 5 * minute
    allocator.note_requests(6 * minute, "r0", caught_up=True)  # caught up: idle after 300 s
    assert allocator.watermark() == 6 * minute
    wall[0] += 301
    assert allocator.watermark() == 60 * minute  # silent and caught up: the GPUs decide
    restarted = GpuAllocator(settings, allocator.store, clock=lambda: wall[0])
    restarted.note_requests(6 * minute, "r0", caught_up=False)
    wall[0] += 3600
    assert GpuAllocator(settings, allocator.store, clock=lambda: wall[0]).watermark() \
        == 6 * minute  # the backlog flag is persisted


def test_the_partials_of_no_rows_match_those_of_rows() -> None:
    """No rows short-cut the group_bys; the merger must see the same columns either way."""
    settings = _settings()
    batch = make_workload(settings, seconds=5, per_second=20).requests[0]
    some = partials(conform(cost_records(batch, settings, 0, 0)[0], COST_RECORD), 60)
    none = partials(conform(COST_RECORD.empty_table(), COST_RECORD), 60)
    assert some.num_rows > 0 and none.num_rows == 0
    assert none.schema == some.schema


def test_one_partitions_heartbeat_does_not_close_buckets_another_still_carries() -> None:
    """A heartbeat is ordered only behind its own GPU partition's samples. After a broker
    outage the worker met partition 0's heartbeat while partition 1 still queued a GPU's last
    sample of a bucket: the bucket closed, the sample was dropped and its energy charged to the
    next bucket. Heartbeats count once every GPU partition has carried one (their min)."""
    settings = Settings.model_validate({**_settings().model_dump(mode="json"),
                                        "topics": {"partitions": 2}})
    allocator = GpuAllocator(settings, {})
    minute = 60_000_000
    for stream in ("requests:r:0", "requests:r:1"):
        allocator.note_requests(60 * minute, stream)
    allocator.note_samples_until(60 * minute, "gpu:0")
    assert allocator.heartbeat_mark() is None
    assert allocator.fleet_mark() is None  # partition 1 has said nothing yet
    allocator.note_samples_until(2 * minute, "gpu:1")
    assert allocator.heartbeat_mark() == 2 * minute
    allocator.note_samples_until(61 * minute, "gpu:1")
    assert allocator.heartbeat_mark() == 60 * minute
    assert allocator.watermark() == 60 * minute
