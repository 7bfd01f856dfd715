"""Pipeline health metric families shared by the worker's stages and the lake sink.

Why one module: the Faust agents (`streams/`) and the lake writer (`lake/`, also driven by plain
consumers) count into the same families, so a scrape of any process shows the same names.
Counters are bumped once per batch with its row count: no per-event Python in hot paths.
The worker serves them with `costpipe worker --metrics-port` (default servers.metrics_port).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STAGES = ("costing", "gpu_forward", "allocator", "merger", "alerting", "lake_sink")

STAGE_EVENTS = Counter(
    "costpipe_stage_events_total",
    "Rows into (decoded) and out of (emitted downstream / written) each pipeline stage",
    ["stage", "direction"],
)
CONSUMER_LAG = Gauge(
    "costpipe_consumer_lag",
    "Messages behind the log end per topic partition owned by this worker (end - committed)",
    ["topic", "partition"],
)
LAKE_FILES = Counter(
    "costpipe_lake_files_total", "Parquet files committed (renamed into place) in the lake",
    ["table"],
)
LAKE_BYTES = Counter(
    "costpipe_lake_bytes_total", "Bytes of Parquet files committed in the lake", ["table"]
)
LAKE_ROWS = Counter(
    "costpipe_lake_rows_total", "Rows in Parquet files committed in the lake", ["table"]
)


class Stage:
    """The in/out counters of one stage, resolved once (label lookups are not free)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._in = STAGE_EVENTS.labels(name, "in")
        self._out = STAGE_EVENTS.labels(name, "out")

    def rows_in(self, rows: int) -> None:
        if rows:
            self._in.inc(rows)

    def rows_out(self, rows: int) -> None:
        if rows:
            self._out.inc(rows)


STAGE = {name: Stage(name) for name in STAGES}  # every stage shows up at 0 from the start
