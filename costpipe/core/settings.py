"""The one settings object: `costpipe.toml` overlaid by `COSTPIPE_*` environment variables.

Read with pydantic-settings (a TOML source and an environment source with `__` nesting). Why one
place: every process (collectors, workers, CLI, tests) must agree on topic names, money
parameters and which providers are internal, and a bad value must stop the process at start
with one line that names the key, not deep inside a stream loop.

Environment variables use `__` between levels: `COSTPIPE_KAFKA__BOOTSTRAP_SERVERS=host:9092`,
`COSTPIPE_GPU__DOLLARS_PER_GPU_HOUR=2.10`; lists and tables as JSON. `KAFKA_BOOTSTRAP_SERVERS`
is honoured too (it means "use that cluster, start nothing").
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "COSTPIPE_"
CONFIG_ENV = "COSTPIPE_CONFIG"
TEST_ENV_PREFIX = "COSTPIPE_TEST_"  # reserved for the test suite's own knobs, not settings
DEFAULT_CONFIG_NAME = "costpipe.toml"


class SettingsError(ValueError):
    """A bad setting; its message is one line naming the key and what is expected."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        default=None, description="Existing cluster `host:port,...`; unset = start the local "
        "broker (`KAFKA_BOOTSTRAP_SERVERS` works too)")
    local_port: int = Field(default=19092, ge=1024, le=65535,
                            description="Local broker port (127.0.0.1 only)")
    local_controller_port: int = Field(default=19093, ge=1024, le=65535,
                                       description="Local broker's KRaft controller port")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`")
    sasl_username: str | None = Field(default=None, description="SASL user")
    sasl_password: str | None = Field(default=None, repr=False,
                                      description="SASL password (never logged)")
    ssl_cafile: str | None = Field(default=None, description="PEM CA bundle for TLS")
    ssl_certfile: str | None = Field(default=None, description="Client certificate (mTLS)")
    ssl_keyfile: str | None = Field(default=None, description="Client key (mTLS)")
    compression: Literal["lz4", "zstd"] = Field(default="zstd",
                                                description="Producer compression on the wire")
    linger_ms: int = Field(default=50, ge=50, le=10_000,
                           description="Producer batching delay on the wire")
    envelope_rows: int = Field(
        default=10_000, ge=1, le=100_000,
        description="Most rows per Arrow envelope (one Kafka message), for the collectors and "
        "the worker's outputs; small batches are coalesced up to this. The worker's cost is "
        "mostly per message, so bigger envelopes mean more events/s",
    )
    max_message_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024 * 1024, le=512 * 1024 * 1024,
        description="The one message-size limit; producers, codec, topics and consumers "
        "derive theirs from it. An existing cluster must allow it on the costpipe topics",
    )
    envelope_bytes: int = Field(
        default=4 * 1024 * 1024, ge=64 * 1024,
        description="Most uncompressed bytes per Arrow envelope; at most "
        "`max_message_bytes` - 64 KiB",
    )
    kafka_version: str = Field(default="3.9.1",
                               description="Apache Kafka version the local broker runs")

    @field_validator("envelope_bytes")
    @classmethod
    def _envelope_fits(cls, value: int, info: ValidationInfo) -> int:
        limit = info.data.get("max_message_bytes")
        if limit is not None and value > limit - 64 * 1024:
            raise ValueError(f"must leave 64 KiB under kafka.max_message_bytes ({limit}): at "
                             f"most {limit - 64 * 1024}")
        return value


_TOPIC = "Versioned topic name (must end in `.vN`)"


class TopicSettings(_Section):
    requests: str = Field(default="costpipe.requests.v1", description=_TOPIC)
    gpu: str = Field(default="costpipe.gpu.v1", description=_TOPIC)
    costs: str = Field(default="costpipe.costs.v1", description=_TOPIC)
    partials: str = Field(default="costpipe.partials.v1",
                          description="Internal: window partial sums, keyed by window key")
    windows: str = Field(default="costpipe.windows.v1", description=_TOPIC)
    alerts: str = Field(default="costpipe.alerts.v1", description=_TOPIC)
    deadletter: str = Field(default="costpipe.deadletter.v1", description=_TOPIC)
    members: str = Field(default="costpipe.members.v1",
                         description="Internal: the workers of the group and their lake "
                         "(one partition, compacted)")
    gpuwork: str = Field(
        default="costpipe.gpuwork.v1",
        description="Internal: GPU samples + own-model requests, keyed by GPU",
    )
    partitions: int = Field(default=4, ge=1, le=1024,
                            description="Partitions per topic (the scale-out unit)")
    stage_partitions: int | None = Field(
        default=None, ge=1, le=1024,
        description="Partitions of the internal `partials` and `gpuwork` topics (window "
        "merging, GPU allocation); unset = `partitions`. Every requests message fans out to "
        "one message per stage partition of each, so fewer make fewer, bigger messages (one "
        "worker at 2 instead of 8: 2x the events/s); at least the number of workers you run")

    def stage_count(self) -> int:
        return self.stage_partitions or self.partitions

    def stage_topics(self) -> set[str]:
        """The internal topics sized by `stage_partitions`."""
        return {self.partials, self.gpuwork}

    def partition_counts(self) -> dict[str, int]:
        """Topic name -> partitions: every stage is keyed; the data topics have `partitions`,
        the internal stage topics `stage_partitions`, the members roll call one."""
        counts = {getattr(self, name): self.partitions for name in type(self).model_fields
                  if name not in ("partitions", "stage_partitions")}
        counts.update(dict.fromkeys(self.stage_topics(), self.stage_count()))
        counts[self.members] = 1
        return counts

    @field_validator(
        "requests", "gpu", "costs", "partials", "windows", "alerts", "deadletter", "gpuwork",
        "members",
    )
    @classmethod
    def _versioned(cls, value: str) -> str:
        last = value.rsplit(".", 1)[-1]
        if not (last.startswith("v") and last[1:].isdigit()):
            raise ValueError(f"topic name must end with a version like '.v1', got {value!r}")
        return value


class ProviderSettings(_Section):
    internal: list[str] = Field(
        default_factory=lambda: ["own-vllm", "own-tts", "own-embed"],
        description="Provider names that are your own models (`provider_kind` internal)",
    )
    shadow_provider: str = Field(default="openai",
                                 description="Reference external provider for avoided spend")
    shadow_model: str = Field(default="gpt-4o-mini",
                              description="Reference external model for avoided spend")
    shadow_models: dict[str, str] = Field(
        default_factory=lambda: {"embeddings": "text-embedding-3-small", "voice": "tts-1",
                                 "speech": "tts-1", "transcription": "whisper-1",
                                 "translation": "whisper-1"},
        description="Per-operation (or gen_ai_operation) reference external model for the "
        "shadow price; it bills in its own units (speech per character, transcription per "
        "audio second), so own voice models must report those units",
    )


class PriceOverride(_Section):
    """A price for a model the catalog lacks, or a contract price that replaces list price."""

    provider: str
    model: str
    input_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)
    input_audio_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_audio_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_audio_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    input_image_per_mtok: Decimal | None = Field(default=None, ge=0)
    output_image_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_image_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    input_per_mchars: Decimal | None = Field(default=None, ge=0)
    input_audio_per_hour: Decimal | None = Field(default=None, ge=0)
    output_audio_per_hour: Decimal | None = Field(default=None, ge=0)

    def catalog_prices(self) -> dict[str, Decimal]:
        """The prices this override states, by the catalog's price key (`input_mtok`, ...)."""
        out: dict[str, Decimal] = {}
        for name, value in self.model_dump().items():
            if value is None or name in ("provider", "model"):
                continue
            key = name.replace("_per_mtok", "_mtok").replace("_per_mchars", "_mchars")
            out[key.replace("_per_hour", "_hours")] = value
        return out

    @model_validator(mode="after")
    def _some_price(self) -> PriceOverride:
        if not self.catalog_prices():
            raise ValueError(f"override for {self.provider}/{self.model} states no price: give "
                             "input_per_mtok/output_per_mtok, input_per_mchars or "
                             "input_audio_per_hour (see the README's pricing section)")
        return self


class PricingSettings(_Section):
    overrides: list[PriceOverride] = Field(
        default_factory=list,
        description="`[[pricing.overrides]]` provider, model and any of input_per_mtok, "
        "output_per_mtok, cache_read_per_mtok, cache_write_per_mtok, input_audio_per_mtok, "
        "output_audio_per_mtok, cache_audio_read_per_mtok, input_image_per_mtok, "
        "output_image_per_mtok, cache_image_read_per_mtok, input_per_mchars, "
        "input_audio_per_hour, output_audio_per_hour: a model the catalog lacks, or your "
        "contract price (the prices stated replace the catalog's for that model)")
    discounts: dict[str, Decimal] = Field(
        default_factory=dict,
        description="Contract discount per provider, e.g. `{openai = \"0.15\"}`",
    )

    @field_validator("discounts")
    @classmethod
    def _fractions(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for provider, fraction in value.items():
            if not Decimal(0) <= fraction < Decimal(1):
                raise ValueError(f"discount for {provider!r} must be in [0, 1), got {fraction}")
        return value


class GpuSettings(_Section):
    dollars_per_gpu_hour: Decimal = Field(default=Decimal("2.00"), ge=0,
                                          description="Amortised or reserved price per GPU-hour")
    dollars_per_kwh: Decimal = Field(default=Decimal("0.12"), ge=0,
                                     description="Energy price")
    pue: Decimal = Field(default=Decimal("1.3"), ge=1, le=5,
                         description="Data-centre power usage effectiveness")
    bucket_seconds: int = Field(default=10, ge=1, le=3600,
                                description="GPU cost allocation bucket")
    allowed_lateness_seconds: int = Field(
        default=30, ge=0, le=86_400,
        description="Wait after a bucket's end before it closes. A bucket closes when the GPU "
        "samples *and* every requests partition have passed its end + lateness in event time; "
        "a requests partition that has gone quiet (caught up, and 300 s behind the GPU "
        "samples) stops holding buckets back, one still draining a backlog never does")


class WindowSettings(_Section):
    seconds: int = Field(default=60, ge=1, le=86_400, description="Tumbling window length")
    allowed_lateness_seconds: int = Field(
        default=45, ge=0, le=86_400,
        description="Wait after window end; keep >= gpu bucket + gpu lateness (own-model costs)",
    )
    correction_horizon_seconds: int = Field(
        default=300, ge=0, le=30 * 86_400,
        description="How long closed windows' state is kept for late deltas; older state is "
        "evicted, later partials still emit delta rows so totals stay exact. Worker memory "
        "grows with keys x the windows this keeps, then stays flat",
    )


class AlertSettings(_Section):
    spike_sigma: float = Field(default=4.0, gt=0,
                               description="Fire when a window exceeds its EWMA baseline by "
                               "this many standard deviations ...")
    spike_min_dollars: Decimal = Field(default=Decimal("0.50"), ge=0,
                                       description="... and by at least this many dollars")
    ewma_alpha: float = Field(default=0.3, gt=0, le=1,
                              description="Weight of the newest window in the baseline")
    warmup_windows: int = Field(default=3, ge=1,
                                description="Windows of a key before spikes can fire")
    external_budget_per_hour: Decimal | None = Field(
        default=None, ge=0, description="External spend per UTC hour that fires an alert")
    external_budget_per_day: Decimal | None = Field(
        default=None, ge=0, description="External spend per UTC day that fires an alert")
    cooldown_seconds: int = Field(default=300, ge=0,
                                  description="Quiet time per (rule, key) after an alert")
    webhook_url: str | None = Field(default=None,
                                    description="Slack-compatible webhook for alerts")


class Investment(_Section):
    """Money put into own models and GPUs, for the payback answer."""

    name: str
    amount: Decimal = Field(ge=0)
    date: dt.date


class PlanningSettings(_Section):
    target_utilization: float = Field(
        default=0.7, gt=0, le=1,
        description="Usable share of a GPU at the peak hour when planning moves in-house "
        "(capacity must hold at peak, not on average)")
    movable_operations: list[str] = Field(
        default_factory=lambda: ["voice", "text", "code_completion", "embeddings"],
        description="Operations the plan may move in-house (reasoning stays external unless "
        "listed)")
    gpu_hours_per_month: Decimal = Field(
        default=Decimal("730"), gt=0,
        description="Hours a GPU added by the plan is paid for per month, at "
        "gpu.dollars_per_gpu_hour")
    external_budget_per_month: Decimal | None = Field(
        default=None, ge=0,
        description="External spend per calendar month; the forecast alerts when the "
        "month-end projection crosses it")
    investments: list[Investment] = Field(
        default_factory=list,
        description="`[[planning.investments]]` name, amount (USD), date: money put into own "
        "models and GPUs, for the payback answer")


class CollectorSettings(_Section):
    heartbeat_seconds: float = Field(
        default=2.0, ge=0, le=3600,
        description="A collector with nothing to send tells the workers every this many "
        "seconds that event time goes on (a heartbeat to every requests partition), so the "
        "last window closes when traffic stops; 0 = off")
    heartbeat_lag_seconds: float = Field(
        default=1.0, ge=0, le=3600,
        description="A heartbeat claims event time up to now minus this (and never past the "
        "oldest call still in flight in the proxy or the SDK)")


class IngestSettings(_Section):
    max_future_seconds: int = Field(
        default=300, ge=0, le=86_400,
        description="Events stamped further ahead of the worker's clock are dead-lettered "
        "(a skewed host must not close windows or GPU buckets early)")
    max_age_days: int = Field(default=400, ge=1, le=3650,
                              description="Events older than this are dead-lettered")
    max_string_bytes: int = Field(
        default=256, ge=16, le=65_536,
        description="Longest text field (model, operation, team, ...); longer rows are "
        "dead-lettered (each distinct value becomes a window key and a lake value)")
    dedup_horizon_seconds: int = Field(
        default=86_400, ge=0, le=30 * 86_400,
        description="A request_id seen again within this much event time is a duplicate: "
        "counted, dead-lettered, kept out of costs. Memory: 16 bytes per request id in the "
        "horizon, per requests partition owned")
    poison_retries: int = Field(
        default=3, ge=0, le=100,
        description="Times a message that fails processing is retried before it goes to the "
        "dead-letter topic with the error")


class LakeSettings(_Section):
    location: str = Field(
        default=".costpipe/lake",
        description="Folder (one host), or `s3://bucket/prefix` (the `lake.s3_*` keys; a "
        "location shared by workers on several hosts); other pyarrow filesystem URLs too")
    flush_rows: int = Field(default=200_000, ge=1,
                            description="Rows per Parquet file before a flush")
    flush_seconds: float = Field(default=5.0, gt=0,
                                 description="Age of a buffer before a flush (freshness)")
    export_cron: str = Field(
        default="30 0 * * *", description="UTC crontab of the nightly export of yesterday"
    )
    closed_after_seconds: int = Field(
        default=3600, ge=0,
        description="An hour of the lake is closed (compacted and rolled up) this long after "
        "it ends; rows arriving later are folded in by rebuilding that hour's rollup")
    compaction_grace_seconds: int = Field(
        default=600, ge=0,
        description="Small files replaced by compaction are deleted this long after, so "
        "queries that listed them just before still read them")
    maintenance_seconds: float = Field(
        default=300.0, ge=0,
        description="How often the worker compacts closed hours and builds rollups "
        "(leader only); 0 = never (run `costpipe compact` yourself)")
    s3_endpoint: str | None = Field(
        default=None,
        description="S3-compatible endpoint of an `s3://` lake, e.g. `http://127.0.0.1:9000` "
        "(MinIO, Ceph, ...); an `http://` endpoint means plain HTTP. Unset = AWS S3")
    s3_region: str | None = Field(
        default=None,
        description="Region of the lake's bucket; unset = asked of AWS S3 (or the SDK default "
        "with `s3_endpoint`)")
    s3_access_key_id: str | None = Field(
        default=None,
        description="Access key of an `s3://` lake; unset = the AWS default chain (`AWS_*` "
        "variables, `~/.aws`, instance role)")
    s3_secret_access_key: str | None = Field(
        default=None, repr=False, validate_default=True,
        description="Secret key going with `s3_access_key_id` (never logged)")

    @field_validator("location")
    @classmethod
    def _plain_location(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if sep and scheme == "s3" and ("?" in rest or "@" in rest.split("/", 1)[0]):
            raise ValueError("give s3:// as s3://bucket/prefix; put the endpoint, region and "
                             "keys in lake.s3_endpoint, lake.s3_region, lake.s3_access_key_id "
                             "and lake.s3_secret_access_key")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        host = rest.rstrip("/")
        if not sep or scheme not in ("http", "https") or not host or "/" in host:
            raise ValueError("must be http://host[:port] or https://host[:port]")
        return f"{scheme}://{host}"

    @field_validator("s3_secret_access_key")
    @classmethod
    def _key_pair(cls, value: str | None, info: ValidationInfo) -> str | None:
        key_id = info.data.get("s3_access_key_id")
        if (key_id is None) != (value is None):
            missing = "lake.s3_secret_access_key" if value is None else "lake.s3_access_key_id"
            raise ValueError(f"set lake.s3_access_key_id and lake.s3_secret_access_key "
                             f"together ({missing} is unset)")
        return value


class ServerSettings(_Section):
    proxy_listen: str = Field(default="127.0.0.1:8787", description="Proxy bind address")
    otlp_listen: str = Field(default="127.0.0.1:4318", description="OTLP receiver bind address")
    metrics_host: str = Field(default="127.0.0.1",
                              description="Bind address of every /metrics endpoint")
    metrics_port: int = Field(default=9464, ge=0, le=65535,
                              description="Worker (and in-app SDK) /metrics port; 0 = off")
    proxy_metrics_port: int = Field(default=9465, ge=0, le=65535,
                                    description="`costpipe proxy` /metrics port; 0 = off")
    otlp_metrics_port: int = Field(default=9466, ge=0, le=65535,
                                   description="`costpipe otlp` /metrics port; 0 = off")
    gpu_metrics_port: int = Field(default=9467, ge=0, le=65535,
                                  description="`costpipe gpu` /metrics port; 0 = off")
    worker_web_port: int = Field(default=6066, ge=1024, le=65535,
                                 description="The worker's Faust web endpoint (127.0.0.1)")
    worker_group: str = Field(default="costpipe-worker",
                              description="Faust app id = the workers' consumer group")
    worker_standby_replicas: int = Field(
        default=0, ge=0, le=3,
        description="Standby copies of each worker's state kept by the other workers of the "
        "group (Faust's table standbys): each copy costs CPU per state write, and may shorten "
        "a take-over after a crash (it need not read the changelog); measured both ways in "
        "docs/decisions/2026-12-01-keyed-stages.md")
    worker_stall_seconds: int = Field(
        default=120, ge=10, le=86_400,
        description="A worker that reads nothing for this long while messages wait for it "
        "(or stays in a rebalance this long) logs it, reports it at /costpipe/health and on "
        "/metrics, and restarts itself")
    auth_token: str | None = Field(
        default=None, repr=False,
        description="Token clients must send (`X-Costpipe-Token`) to the proxy and OTLP "
        "receiver")
    operation_map: dict[str, str] = Field(
        default_factory=dict, description="Model or route -> operation, for the proxy"
    )


class DashboardSettings(_Section):
    listen: str = Field(
        default="127.0.0.1:8080",
        description="`costpipe dashboard` bind address; anything but loopback needs "
        "`dashboard.auth_token`")
    auth_token: str | None = Field(
        default=None, repr=False,
        description="Token the dashboard asks for (open `/?token=...` once: a cookie keeps "
        "it; or send `X-Costpipe-Token`); never logged")
    consumer_group: str = Field(
        default="costpipe-dashboard",
        description="Prefix of the dashboard's own consumer group on the windows and alerts "
        "topics (it reads from the latest offsets, never the worker's group)")
    sql_row_cap: int = Field(default=1000, ge=1, le=1_000_000,
                             description="Most rows the SQL console shows or downloads")
    sql_timeout_seconds: float = Field(
        default=10.0, gt=0, le=600,
        description="A console query running longer is interrupted")


class Settings(_Section):
    state_dir: Path = Field(default=Path(".costpipe"),
                            description="Local broker data, spool, worker state")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "costpipe",
        description="Downloads that outlive a checkout (the Maven-resolved Kafka jars)",
    )
    target_internal_share: float = Field(
        default=0.5, ge=0, le=1, description="Goal: share of workload served by own models"
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    providers: ProviderSettings = Field(default_factory=ProviderSettings)
    pricing: PricingSettings = Field(default_factory=PricingSettings)
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    windows: WindowSettings = Field(default_factory=WindowSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    planning: PlanningSettings = Field(default_factory=PlanningSettings)
    collectors: CollectorSettings = Field(default_factory=CollectorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    servers: ServerSettings = Field(default_factory=ServerSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    def is_internal(self, provider: str) -> bool:
        return provider in self.providers.internal

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka.bootstrap_servers is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers or f"127.0.0.1:{self.kafka.local_port}"


def _default_text(field: Any) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None:
        return "unset"
    if isinstance(value, Path) and value.is_absolute() and str(value).startswith(
            str(Path.home())):
        value = "~/" + str(value.relative_to(Path.home()))
    if isinstance(value, list | dict):
        return "`" + json.dumps(value, default=str).replace("|", "\\|") + "`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's configuration table: every setting, its default and what it means."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, _Section):
                walk(annotation, f"{prefix}{name}.")
                continue
            if not field.description:
                raise ValueError(f"setting {prefix}{name} has no description")
            lines.append(f"| `{prefix}{name}` | {_default_text(field)} | "
                         f"{field.description} |")

    walk(Settings, "")
    return "\n".join(lines)


def _fields_of(model: type[BaseModel], path: list[str]) -> bool:
    """Whether `path` (lower-case parts) names a setting (a field, or a key inside a dict one)."""
    node: Any = model
    for depth, part in enumerate(path):
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return depth > 0  # inside a dict/list-valued setting: pydantic checks the value
        field = node.model_fields.get(part)
        if field is None:
            return False
        node = field.annotation
    return True


def _unknown_env(environ: Mapping[str, str]) -> str | None:
    """The first COSTPIPE_* variable that names no setting (pydantic-settings ignores those)."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name.startswith(
                TEST_ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        if not _fields_of(Settings, path):
            return ".".join(path)
    return None


def _secret(loc: tuple[int | str, ...]) -> bool:
    """Whether `loc` names a field that is never shown (`repr=False`: passwords, keys)."""
    node: Any = Settings
    for part in loc:
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return False
        field = node.model_fields.get(str(part))
        if field is None:
            return False
        if field.repr is False:
            return True
        node = field.annotation
    return False


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against README's configuration reference)"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) or _secret(first["loc"]) else f" (got {got!r})"
    more = f"; {len(error.errors()) - 1} more problem(s)" if len(error.errors()) > 1 else ""
    return f"invalid setting {key} in {source}: {message}{got_text}{more}"


def config_path(explicit: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> Path | None:
    """The TOML file to read: `explicit`, else $COSTPIPE_CONFIG, else ./costpipe.toml if any."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if cwd is None:
        return None
    default = cwd / DEFAULT_CONFIG_NAME
    return default if default.exists() else None


class _Environment(EnvSettingsSource):
    """`COSTPIPE_*` variables from a given mapping instead of the process environment."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = {k: v for k, v in environ.items() if k != CONFIG_ENV
                         and not k.startswith(TEST_ENV_PREFIX)}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}


class _KafkaBootstrap(PydanticBaseSettingsSource):
    """`KAFKA_BOOTSTRAP_SERVERS` (the usual Kafka tools' variable) as kafka.bootstrap_servers."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._value = environ.get("KAFKA_BOOTSTRAP_SERVERS") or None

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {"kafka": {"bootstrap_servers": self._value}} if self._value else {}


_INPUTS: ContextVar[tuple[Path | None, Mapping[str, str]]] = ContextVar("costpipe_settings")


class _FromSources(Settings, BaseSettings):
    """Settings read by pydantic-settings: environment over `KAFKA_BOOTSTRAP_SERVERS` over the
    TOML file over defaults; nested keys deep-merged, lists and tables in env as JSON."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__",
                                      extra="forbid", nested_model_default_partial_update=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   *_: PydanticBaseSettingsSource,
                                   **__: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        path, environ = _INPUTS.get()
        sources: list[PydanticBaseSettingsSource] = [_Environment(settings_cls, environ),
                                                     _KafkaBootstrap(settings_cls, environ)]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise SettingsError with one line naming the bad key.

    With `environ` given, nothing of the real process is read: not its environment, not its
    $COSTPIPE_CONFIG, not ./costpipe.toml (only `path`, or the mapping's COSTPIPE_CONFIG).
    """
    isolated = environ is not None
    environ = dict(os.environ if environ is None else environ)
    chosen = config_path(path, environ, None if isolated else Path.cwd())
    source = "defaults"
    if chosen is not None:
        if not chosen.exists():
            raise SettingsError(
                f"config file {chosen} does not exist (set {CONFIG_ENV} to the right path)")
        try:
            tomllib.loads(chosen.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {chosen} is not valid TOML: {exc}") from None
        source = str(chosen)
    if any(k.startswith(ENV_PREFIX) and k != CONFIG_ENV and not k.startswith(TEST_ENV_PREFIX)
           for k in environ) or environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        source = f"{source} + COSTPIPE_* environment" if chosen else "COSTPIPE_* environment"
    unknown = _unknown_env(environ)
    if unknown is not None:
        raise SettingsError(f"invalid setting {unknown} in {source}: unknown key (check the "
                            "spelling against README's configuration reference)")
    token = _INPUTS.set((chosen, environ))
    try:
        loaded = _FromSources()
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, source)) from None
    finally:
        _INPUTS.reset(token)
    return Settings.model_validate(loaded.model_dump())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, loaded once (long-running processes read config at start)."""
    return load_settings()
