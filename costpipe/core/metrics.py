"""Every Prometheus metric family of costpipe, with the documentation the README shows.

Why one catalogue: the worker's stages, the lake writer, the collectors and the proxy count into
these families, and the README's metric tables are generated from `CATALOGUE`
(`python scripts/docs.py --write`; a test fails when they differ), so a family cannot exist
undocumented and a documented family cannot be missing. Counters are bumped once per batch
with its row count: no per-event Python in hot paths.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import Counter, Gauge, start_http_server

if TYPE_CHECKING:
    from costpipe.core.settings import Settings

Process = Literal["worker", "collectors"]


@dataclass(frozen=True)
class MetricDoc:
    """One family as the README documents it (`name` is the exposed sample name)."""

    name: str
    labels: tuple[str, ...]
    process: Process
    meaning: str


CATALOGUE: list[MetricDoc] = []


def _counter(name: str, help_: str, labels: tuple[str, ...], process: Process,
             meaning: str | None = None) -> Counter:
    CATALOGUE.append(MetricDoc(f"{name}_total", labels, process, meaning or help_))
    return Counter(name, help_, list(labels))


def _gauge(name: str, help_: str, labels: tuple[str, ...], process: Process,
           meaning: str | None = None) -> Gauge:
    CATALOGUE.append(MetricDoc(name, labels, process, meaning or help_))
    return Gauge(name, help_, list(labels))


# ------------------------------------------------------------------ worker

STAGES = ("costing", "gpu_forward", "allocator", "merger", "alerting", "lake_sink")

STAGE_EVENTS = _counter(
    "costpipe_stage_events",
    "Rows into (decoded) and out of (emitted downstream / written) each pipeline stage",
    ("stage", "direction"), "worker",
    "Rows into and out of each stage (`direction` = `in`/`out`). `costing` in = decoded request "
    "rows in their home partition (re-sent duplicates included), out = external cost records + "
    "own-model rows passed to the allocator; `gpu_forward` "
    "in/out = GPU sample rows; `allocator` in = samples + own-model rows, out = cost records "
    "(allocated, idle, corrections); `merger` in = partial rows, out = closed window rows; "
    "`alerting` in = window rows, out = alerts fired; `lake_sink` in = rows received from "
    "Kafka, out = rows written to Parquet (messages already in the lake are skipped on replay, "
    "and rows whose key the lake already holds are dropped, so out ≤ in). Counted once per "
    "batch.",
)
CONSUMER_LAG = _gauge(
    "costpipe_consumer_lag",
    "Messages behind the log end per topic partition owned by this worker (end - committed)",
    ("topic", "partition"), "worker",
    "Messages between the log end and the group's committed offset, for each partition this "
    "worker owns (refreshed every 5 s; unflushed lake rows count as behind). Sum over workers "
    "for the group.",
)
DEAD_LETTERS = _counter(
    "costpipe_dead_letters", "Rejected messages or rows sent to the dead-letter topic",
    ("source_topic", "field"), "worker",
    "Rejected messages/rows sent to the dead-letter topic (`field` = `<message>` for "
    "undecodable messages)",
)
LAKE_FILES = _counter(
    "costpipe_lake_files", "Parquet files committed (renamed into place) in the lake",
    ("table",), "worker",
)
LAKE_BYTES = _counter(
    "costpipe_lake_bytes", "Bytes of Parquet files committed in the lake", ("table",), "worker",
)
LAKE_ROWS = _counter(
    "costpipe_lake_rows", "Rows in Parquet files committed in the lake", ("table",), "worker",
)
LAKE_DUPLICATES = _counter(
    "costpipe_lake_duplicate_rows",
    "Rows not written because the lake already held their key (replays)", ("table",), "worker",
    "Rows not written because the lake already held their key (re-emitted by a worker that "
    "was killed before committing)",
)
STALE_ACKS = _counter(
    "costpipe_stale_acks_refused",
    "Acks refused for messages fetched before or during a rebalance (re-read)", (), "worker",
    "Acks refused for messages fetched before or during a consumer-group rebalance; they are "
    "read again (a faust-streaming workaround, docs/decisions/2026-11-28-faust-workarounds.md)",
)
REWINDS = _counter(
    "costpipe_unprocessed_rewinds",
    "Partitions read again from an offset that was skipped, never acknowledged", (), "worker",
    "Partitions read again from an offset that no agent acknowledged, or whose fetched "
    "messages reached no agent (a faust-streaming workaround, "
    "docs/decisions/2026-11-28-faust-workarounds.md)",
)
ALERTS = _counter("costpipe_alerts", "Alerts fired", ("rule",), "worker")
LAKE_LOCATIONS = _gauge(
    "costpipe_lake_locations",
    "Distinct lake locations the live workers of this group write to (1 is right)", (),
    "worker",
    "Distinct lake locations the live workers of this group write to: 1 is right; more means "
    "the lake is split (a multi-host group needs one shared location such as s3://), which "
    "the worker and `costpipe kafka status` also say in one line",
)
WORKER_RESTARTS = _counter(
    "costpipe_worker_restarts", "Times this worker restarted itself", ("reason",), "worker",
    "Times this worker restarted itself (`reason` = `stall`: it read nothing for "
    "`servers.worker_stall_seconds` while messages waited, or stayed that long in a rebalance; "
    "counted by the restarted process)",
)
WORKER_PROGRESS_AGE = _gauge(
    "costpipe_worker_progress_age_seconds",
    "Seconds since this worker last read a message from a partition where messages wait",
    (), "worker",
    "Seconds since this worker last read a message from an owned partition where messages wait "
    "(0 when nothing waits); the watchdog restarts the worker past "
    "`servers.worker_stall_seconds`",
)
COST_RECORDS = _counter(
    "costpipe_cost_records", "Cost records emitted", ("record_type",), "worker",
    "Cost records produced (`request`, `idle`, `correction`)",
)
DUPLICATE_REQUESTS = _counter(
    "costpipe_duplicate_requests",
    "Requests whose request_id was already costed within the horizon (dead-lettered)", (),
    "worker",
    "Requests whose request_id was already costed within `ingest.dedup_horizon_seconds` (a "
    "client retry, a replay): kept out of costs and windows, dead-lettered with where the "
    "first copy is",
)
UNPRICED = _counter(
    "costpipe_unpriced_requests",
    "Requests whose model has no price (catalog or override); cost recorded as 0",
    ("provider", "model"), "worker",
    "Requests whose model has no price (cost recorded as 0)",
)
UNPRICED_UNIT = _counter(
    "costpipe_unpriced_unit_requests",
    "Requests whose model is priced in a unit the request did not report; cost recorded as 0",
    ("provider", "model", "unit"), "worker",
    "Requests whose model's price is in a unit the request did not report (`unit`, e.g. "
    "`input_characters` for a speech model): cost recorded as 0, pricing_status "
    "`unpriced_unit`",
)
GPU_UNATTRIBUTED = _counter(
    "costpipe_gpu_unattributed_requests",
    "Own-model requests with no GPU samples for their bucket (cost 0)", (), "worker",
)
LATE_INTERNAL = _counter(
    "costpipe_late_internal_requests",
    "Own-model requests that arrived after their GPU bucket closed", (), "worker",
)

# ------------------------------------------------------------------ collectors

EVENTS_SENT = _counter(
    "costpipe_producer_events_sent", "Events acknowledged by Kafka", ("topic",), "collectors",
)
EVENTS_SPOOLED = _counter(
    "costpipe_producer_events_spooled",
    "Events journaled to the local spool (broker unreachable or queue full)", ("topic",),
    "collectors", "Events journaled to the local disk spool (broker unreachable or queue full)",
)
EVENTS_REPLAYED = _counter(
    "costpipe_producer_events_replayed", "Spooled events later acknowledged by Kafka",
    ("topic",), "collectors",
)
EVENTS_FAILED = _counter(
    "costpipe_producer_events_failed",
    "Events that could not be encoded (kept in the spool's rejected.jsonl)", ("topic",),
    "collectors",
)
QUEUE_DEPTH = _gauge(
    "costpipe_producer_queue_depth", "Events waiting in memory for the sender thread",
    ("topic",), "collectors",
)
SPOOL_PENDING = _gauge(
    "costpipe_producer_spool_pending_events", "Events in the spool not yet replayed",
    ("topic",), "collectors",
)
SPOOL_RECORDS = _gauge(
    "costpipe_producer_spool_pending_records",
    "Kafka messages (envelopes) in the spool not yet replayed", ("topic",), "collectors",
)
SPOOL_BYTES = _gauge(
    "costpipe_producer_spool_bytes", "Bytes of spool segments not yet replayed", ("topic",),
    "collectors",
)
PROXY_REQUESTS = _counter(
    "costpipe_proxy_requests", "Model calls seen by the proxy", ("route", "status"), "collectors",
)
OTLP_SPANS = _counter(
    "costpipe_otlp_spans", "Spans received by the OTLP receiver", ("outcome",), "collectors",
    "Spans received by the OTLP receiver (`outcome` = `received`, `genai`, `ignored`, "
    "`rejected`)",
)
for _outcome in ("received", "genai", "ignored", "rejected"):
    OTLP_SPANS.labels(_outcome)


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
for _record_type in ("request", "idle", "correction"):
    COST_RECORDS.labels(_record_type)


def markdown_table(process: Process) -> str:
    """The README table of one process's families (generated, never edited by hand)."""
    lines = ["| metric | labels | meaning |", "| --- | --- | --- |"]
    for doc in CATALOGUE:
        if doc.process == process:
            labels = ", ".join(f"`{label}`" for label in doc.labels)
            lines.append(f"| `{doc.name}` | {labels} | {doc.meaning} |")
    return "\n".join(lines)


_server_lock = threading.Lock()
_server_port: int | None = None


def start_metrics_server(settings: Settings, port: int | None = None) -> int:
    """Serve /metrics on settings.servers.metrics_host; returns the bound port (0 = any free)."""
    global _server_port
    with _server_lock:
        if _server_port is not None:
            return _server_port
        wanted = settings.servers.metrics_port if port is None else port
        server, _thread = start_http_server(wanted, addr=settings.servers.metrics_host)
        _server_port = int(server.server_port)
        return _server_port
