"""The one settings object: `costpipe.toml` overlaid by `COSTPIPE_*` environment variables.

Why one place: every process (collectors, workers, CLI, tests) must agree on topic names,
money parameters and which providers are internal, and a bad value must stop the process at
start with one line that names the key, not deep inside a stream loop.

Environment variables use `__` between levels: `COSTPIPE_KAFKA__BOOTSTRAP_SERVERS=host:9092`,
`COSTPIPE_GPU__DOLLARS_PER_GPU_HOUR=2.10`. `KAFKA_BOOTSTRAP_SERVERS` is honoured too (it means
"use that cluster, start nothing").
"""

from __future__ import annotations

import json
import os
import tomllib
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
        default=None, description="Existing cluster 'host:port,...'; unset = local broker"
    )
    local_port: int = Field(default=19092, ge=1024, le=65535)
    local_controller_port: int = Field(default=19093, ge=1024, le=65535)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = Field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    compression: Literal["lz4", "zstd"] = "zstd"
    linger_ms: int = Field(default=50, ge=50, le=10_000)
    envelope_rows: int = Field(
        default=10_000, ge=1, le=100_000,
        description="Most rows per Arrow envelope (one Kafka message), collectors and worker",
    )
    envelope_bytes: int = Field(
        default=4 * 1024 * 1024, ge=64 * 1024, le=8 * 1024 * 1024,
        description="Most uncompressed bytes per Arrow envelope (the codec refuses > 8 MiB)",
    )
    kafka_version: str = "3.9.1"


class TopicSettings(_Section):
    requests: str = "costpipe.requests.v1"
    gpu: str = "costpipe.gpu.v1"
    costs: str = "costpipe.costs.v1"
    partials: str = "costpipe.partials.v1"
    windows: str = "costpipe.windows.v1"
    alerts: str = "costpipe.alerts.v1"
    deadletter: str = "costpipe.deadletter.v1"
    gpuwork: str = Field(
        default="costpipe.gpuwork.v1",
        description="Internal: GPU samples + own-model requests in one ordered stream",
    )
    partitions: int = Field(default=4, ge=1, le=1024)

    def partition_counts(self) -> dict[str, int]:
        """Topic name -> partitions. `partials` and `gpuwork` are internal ordered streams
        (one consumer must see all of them in one order: window merge, GPU allocation)."""
        counts = {}
        for field_name in type(self).model_fields:
            if field_name == "partitions":
                continue
            single = field_name in ("partials", "gpuwork")
            counts[getattr(self, field_name)] = 1 if single else self.partitions
        return counts

    @field_validator(
        "requests", "gpu", "costs", "partials", "windows", "alerts", "deadletter", "gpuwork"
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
        description="Provider names that are our own models (provider_kind=internal)",
    )
    shadow_provider: str = "openai"
    shadow_model: str = "gpt-4o-mini"
    shadow_models: dict[str, str] = Field(
        default_factory=lambda: {"embeddings": "text-embedding-3-small"},
        description="Per-operation reference external model for the shadow price",
    )


class PriceOverride(_Section):
    """A price for a model the catalog lacks, or a contract price that replaces list price."""

    provider: str
    model: str
    input_per_mtok: Decimal = Field(ge=0)
    output_per_mtok: Decimal = Field(ge=0)
    cache_read_per_mtok: Decimal | None = Field(default=None, ge=0)
    cache_write_per_mtok: Decimal | None = Field(default=None, ge=0)


class PricingSettings(_Section):
    overrides: list[PriceOverride] = Field(default_factory=list)
    discounts: dict[str, Decimal] = Field(
        default_factory=dict, description="provider -> contract discount fraction (0..1)"
    )

    @field_validator("discounts")
    @classmethod
    def _fractions(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for provider, fraction in value.items():
            if not Decimal(0) <= fraction < Decimal(1):
                raise ValueError(f"discount for {provider!r} must be in [0, 1), got {fraction}")
        return value


class GpuSettings(_Section):
    dollars_per_gpu_hour: Decimal = Field(default=Decimal("2.00"), ge=0)
    dollars_per_kwh: Decimal = Field(default=Decimal("0.12"), ge=0)
    pue: Decimal = Field(default=Decimal("1.3"), ge=1, le=5)
    bucket_seconds: int = Field(default=10, ge=1, le=3600)
    allowed_lateness_seconds: int = Field(default=30, ge=0, le=86_400)


class WindowSettings(_Section):
    seconds: int = Field(default=60, ge=1, le=86_400)
    allowed_lateness_seconds: int = Field(
        default=45, ge=0, le=86_400,
        description="Wait after window end; keep >= gpu bucket + gpu lateness (own-model costs)",
    )
    correction_horizon_seconds: int = Field(
        default=300, ge=0, le=30 * 86_400,
        description="Keep closed windows' state this long after end + lateness (late deltas "
                    "merge into it); older state is evicted, later partials still emit deltas, "
                    "so totals stay exact either way: this bounds memory (keys x windows kept)",
    )


class AlertSettings(_Section):
    spike_sigma: float = Field(default=4.0, gt=0)
    spike_min_dollars: Decimal = Field(default=Decimal("0.50"), ge=0)
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    warmup_windows: int = Field(default=3, ge=1)
    external_budget_per_hour: Decimal | None = Field(default=None, ge=0)
    external_budget_per_day: Decimal | None = Field(default=None, ge=0)
    cooldown_seconds: int = Field(default=300, ge=0)
    webhook_url: str | None = None


class LakeSettings(_Section):
    location: str = Field(default=".costpipe/lake", description="Folder or fsspec/pyarrow URL")
    flush_rows: int = Field(default=200_000, ge=1)
    flush_seconds: float = Field(default=5.0, gt=0)
    export_cron: str = Field(
        default="30 0 * * *", description="UTC crontab of the nightly export of yesterday"
    )


class ServerSettings(_Section):
    proxy_listen: str = "127.0.0.1:8787"
    otlp_listen: str = "127.0.0.1:4318"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535,
                              description="worker (and in-app SDK) /metrics port; 0 = off")
    proxy_metrics_port: int = Field(default=9465, ge=0, le=65535)
    otlp_metrics_port: int = Field(default=9466, ge=0, le=65535)
    gpu_metrics_port: int = Field(default=9467, ge=0, le=65535)
    worker_web_port: int = Field(default=6066, ge=1024, le=65535)
    worker_group: str = Field(default="costpipe-worker", description="Faust app id / group")
    auth_token: str | None = Field(default=None, repr=False)
    operation_map: dict[str, str] = Field(
        default_factory=dict, description="model or route -> operation, for the proxy"
    )


class Settings(_Section):
    state_dir: Path = Path(".costpipe")
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
    lake: LakeSettings = Field(default_factory=LakeSettings)
    servers: ServerSettings = Field(default_factory=ServerSettings)

    def is_internal(self, provider: str) -> bool:
        return provider in self.providers.internal

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka.bootstrap_servers is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka.bootstrap_servers or f"127.0.0.1:{self.kafka.local_port}"


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV or name.startswith(
            TEST_ENV_PREFIX
        ):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _parse_env_value(raw)
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        tree.setdefault("kafka", {}).setdefault(
            "bootstrap_servers", environ["KAFKA_BOOTSTRAP_SERVERS"]
        )
    return tree


def _parse_env_value(raw: str) -> Any:
    """Lists and tables may be given as JSON; everything else stays a string for pydantic."""
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against README's configuration reference)"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f"; {len(error.errors()) - 1} more problem(s)" if len(error.errors()) > 1 else ""
    return f"invalid setting {key} in {source}: {message}{got_text}{more}"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = Path.cwd() / DEFAULT_CONFIG_NAME
    return default if default.exists() else None


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read, merge and validate; raise SettingsError with one line naming the bad key."""
    environ = dict(os.environ if environ is None else environ)
    file_values: dict[str, Any] = {}
    chosen = config_path(path or environ.get(CONFIG_ENV))
    source = "defaults"
    if chosen is not None:
        if not chosen.exists():
            raise SettingsError(
                f"config file {chosen} does not exist (set {CONFIG_ENV} or --config)"
            )
        try:
            file_values = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {chosen} is not valid TOML: {exc}") from None
        source = str(chosen)
    env_values = _env_overrides(environ)
    if env_values:
        source = f"{source} + COSTPIPE_* environment" if chosen else "COSTPIPE_* environment"
    try:
        return Settings.model_validate(_merge(file_values, env_values))
    except ValidationError as exc:
        raise SettingsError(_one_line(exc, source)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, loaded once (long-running processes read config at start)."""
    return load_settings()
