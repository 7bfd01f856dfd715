"""A realistic hybrid fleet for the demo, tests and benchmarks.

Five workload classes (voice, text, code_completion, reasoning, embeddings) with lognormal
token sizes; each request goes to an own model (on one of N simulated GPUs) with probability
chosen so the fleet-wide internal share matches `internal_share`, otherwise to an external
provider whose list price genai-prices knows. Every simulated second also yields one GPU
sample per GPU, consistent with the load: utilisation and power follow the tokens that GPU
served, and the energy counter is the integral of power.

Why vectorised per tick: the simulator must push >= 200,000 events/s through one Python
process, so each simulated second is generated as whole numpy/Arrow columns (no per-event
Python) and handed to the shared producer as one Arrow table.

Deterministic: the same seed, rate, duration, shares, spikes and start give the same events
(request ids included). The returned `SimulationSummary` carries what was sent and the exact
expected LIST cost of the external requests, so tests and `costpipe run` can check the pipeline.

Expected cost: prices come straight from `genai_prices.calc_price` (model_price per
(provider, model, UTC day), looked up at the first request of that day), applied to exact token
sums per group; `input_tokens` includes cache reads/writes (genai-prices and OTel semantics),
so uncached input = input - cache_read - cache_write. Every price used has <= 12 decimals per
token, so the Decimal total equals the sum of per-request prices to the pico-dollar.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.core.money import MONEY_QUANTUM
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE, REQUEST_EVENT

MTOK = Decimal(1_000_000)
US = 1_000_000


@dataclass(frozen=True)
class Route:
    provider: str
    model: str
    internal: bool
    weight: float
    tokens: bool = True  # False: the API reports no tokens (tts-1 bills characters)


@dataclass(frozen=True)
class Workload:
    """Token sizes (lognormal median, sigma) and where requests of this class can go."""

    name: str
    share: float
    gen_ai_operation: str
    input_median: float
    input_sigma: float
    output_median: float
    output_sigma: float
    cache_read_fraction: float  # share of requests that hit a prompt cache
    latency_ms_per_output_token: float
    routes: tuple[Route, ...]
    streaming: bool = True
    speech: bool = False  # text in, audio out: reports characters and audio seconds

    @property
    def external(self) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if not r.internal)

    @property
    def internal(self) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.internal)


WORKLOADS: tuple[Workload, ...] = (
    Workload("voice", 0.10, "speech", 80, 0.6, 600, 0.5, 0.0, 0.8, (
        Route("openai", "tts-1", False, 0.6, tokens=False),
        Route("openai", "gpt-4o-mini-tts", False, 0.4),
        Route("own-tts", "kokoro-82m", True, 1.0),
    ), speech=True),
    Workload("text", 0.35, "chat", 500, 0.9, 180, 0.8, 0.3, 12.0, (
        Route("openai", "gpt-4o-mini", False, 0.6),
        Route("anthropic", "claude-3-5-haiku", False, 0.4),
        Route("own-vllm", "llama-3.1-8b-instruct", True, 1.0),
    )),
    Workload("code_completion", 0.30, "text_completion", 1800, 0.6, 40, 0.7, 0.7, 10.0, (
        Route("openai", "gpt-4o", False, 0.5),
        Route("anthropic", "claude-3-5-sonnet", False, 0.5),
        Route("own-vllm", "qwen2.5-coder-7b-instruct", True, 1.0),
    )),
    Workload("reasoning", 0.10, "chat", 2500, 0.8, 2000, 0.7, 0.3, 15.0, (
        Route("openai", "o3-mini", False, 0.6),
        Route("anthropic", "claude-3-5-sonnet", False, 0.4),
    )),
    Workload("embeddings", 0.15, "embeddings", 350, 0.9, 0, 0.0, 0.0, 0.0, (
        Route("openai", "text-embedding-3-small", False, 1.0),
        Route("own-embed", "bge-m3", True, 1.0),
    ), streaming=False),
)

CHARACTERS_PER_TOKEN = 4  # text sent to speech
SPOKEN_CHARACTERS_PER_S = 15.0
GPU_CAPACITY_WORK_PER_S = 15000.0  # output-token equivalents one GPU serves per second at 100%
IDLE_POWER_W, MAX_POWER_W = 75.0, 700.0
GPU_MEMORY_BYTES = 80 * 1024**3
ERROR_RATE = 0.005


@dataclass(frozen=True)
class Spike:
    """Multiply one operation's request rate by `factor` from `at_s` for `duration_s`."""

    operation: str
    factor: float
    at_s: float
    duration_s: float

    @classmethod
    def parse(cls, text: str) -> Spike:
        parts = text.split(":")
        names = [w.name for w in WORKLOADS]
        try:
            if len(parts) != 4:
                raise ValueError
            spike = cls(parts[0], float(parts[1]), float(parts[2]), float(parts[3]))
        except ValueError:
            raise ValueError(
                f"--spike must be OPERATION:FACTOR:AT_SECONDS:DURATION_SECONDS such as "
                f"code_completion:8:30:20 (got {text!r})") from None
        if spike.operation not in names:
            raise ValueError(f"--spike operation must be one of {', '.join(names)} "
                             f"(got {spike.operation!r})")
        if spike.factor <= 0 or spike.at_s < 0 or spike.duration_s <= 0:
            raise ValueError(f"--spike needs FACTOR > 0, AT >= 0, DURATION > 0 (got {text!r})")
        return spike


@dataclass
class ModelTotals:
    provider: str
    model: str
    provider_kind: str
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    input_characters: int = 0
    list_cost: Decimal | None = None


@dataclass
class SimulationSummary:
    """What the simulator sent; `expected_external_list_cost` is exact (Decimal)."""

    seed: int
    rate: float
    duration_s: int
    start: dt.datetime
    end: dt.datetime
    gpus: int
    requests: int = 0
    internal_requests: int = 0
    external_requests: int = 0
    error_requests: int = 0
    gpu_samples: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    input_characters: int = 0
    expected_external_list_cost: Decimal = Decimal(0)
    unpriced_models: list[str] = field(default_factory=list)
    by_operation: dict[str, int] = field(default_factory=dict)
    by_model: list[ModelTotals] = field(default_factory=list)
    elapsed_s: float = 0.0
    producer_stats: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.requests + self.gpu_samples

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def internal_share(self) -> float:
        return self.internal_requests / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: money as decimal strings, times as ISO 8601."""

        def convert(value: Any) -> Any:
            if isinstance(value, Decimal):
                return str(value)
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            return value

        out = convert(asdict(self))
        out["events"] = self.events
        out["events_per_s"] = round(self.events_per_s, 1)
        out["internal_share"] = round(self.internal_share, 4)
        return out


class _Fleet:
    """Static tables: routes as indices, so one tick is a handful of numpy operations."""

    def __init__(self, internal_share: float, gpus: int, seed: int) -> None:
        self.routes: list[Route] = []
        index: dict[tuple[str, str], int] = {}
        for workload in WORKLOADS:
            for route in workload.routes:
                key = (route.provider, route.model)
                if key not in index:
                    index[key] = len(self.routes)
                    self.routes.append(route)
        self.route_index = index
        shares = np.array([w.share for w in WORKLOADS])
        self.shares = shares / shares.sum()
        with_internal = sum(s for s, w in zip(self.shares, WORKLOADS, strict=True) if w.internal)
        self.p_internal = min(1.0, internal_share / with_internal) if with_internal else 0.0
        self.providers = pa.array([r.provider for r in self.routes], pa.string())
        self.models = pa.array([r.model for r in self.routes], pa.string())
        self.kinds = pa.array(["internal" if r.internal else "external" for r in self.routes])
        self.operations = pa.array([w.name for w in WORKLOADS], pa.string())
        self.gen_ai_ops = pa.array([w.gen_ai_operation for w in WORKLOADS], pa.string())
        self.anthropic_route = np.array([r.provider == "anthropic" for r in self.routes])
        self.token_route = np.array([r.tokens for r in self.routes])
        self.speech_op = np.array([w.speech for w in WORKLOADS])
        # per workload: cumulative weights over its external / internal route indices
        self.ext_choices = [self._choices(w.external) for w in WORKLOADS]
        self.int_choices = [self._choices(w.internal) for w in WORKLOADS]
        self.gpus = gpus
        self.hosts = pa.array([f"sim-node-{i // 8:02d}" for i in range(gpus)], pa.string())
        self.gpu_uuids = pa.array(
            [f"GPU-{seed & 0xFFFFFFFF:08x}-sim-{i:04d}" for i in range(gpus)], pa.string())
        self.gpu_index = pa.array([i % 8 for i in range(gpus)], pa.int32())
        self.errors = pa.array(["RateLimitError", "InternalServerError"], pa.string())

    def _choices(self, routes: tuple[Route, ...]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([self.route_index[(r.provider, r.model)] for r in routes], dtype=np.int64)
        weights = np.array([r.weight for r in routes], dtype=float)
        return ids, np.cumsum(weights) / weights.sum() if len(weights) else weights


@dataclass
class _Tick:
    requests: pa.Table
    gpu: pa.Table | None
    route: np.ndarray
    tokens: np.ndarray  # (n, 5): input, output, cache_read, cache_write, input_characters
    errors: np.ndarray
    op: np.ndarray


def _generate_tick(
    fleet: _Fleet, rng: np.random.Generator, second: int, start_us: int, rate: float,
    spikes: list[Spike], seed: int, first_id: int, energy: np.ndarray,
) -> _Tick:
    """All requests starting in simulated second `second`, plus the GPU samples at its end."""
    ops_n = len(WORKLOADS)
    lam = rate * fleet.shares
    for spike in spikes:
        if spike.at_s <= second < spike.at_s + spike.duration_s:
            lam = lam.copy()
            lam[[w.name for w in WORKLOADS].index(spike.operation)] *= spike.factor
    counts = rng.poisson(lam)
    n = int(counts.sum())
    op = np.repeat(np.arange(ops_n), counts)
    offsets = np.sort(rng.integers(0, US, n))
    u_kind, u_route = rng.random(n), rng.random(n)
    internal = np.zeros(n, dtype=bool)
    route = np.zeros(n, dtype=np.int64)
    input_t = np.zeros(n, dtype=np.int64)
    output_t = np.zeros(n, dtype=np.int64)
    latency_base = np.zeros(n)
    streaming = np.zeros(n, dtype=bool)
    cache_hit = np.zeros(n, dtype=bool)
    for k, workload in enumerate(WORKLOADS):
        rows = np.flatnonzero(op == k)
        if rows.size == 0:
            continue
        has_int = bool(workload.internal)
        is_int = (u_kind[rows] < fleet.p_internal) if has_int else np.zeros(rows.size, bool)
        internal[rows] = is_int
        ext_ids, ext_cum = fleet.ext_choices[k]
        int_ids, int_cum = fleet.int_choices[k]
        chosen = ext_ids[np.minimum(np.searchsorted(ext_cum, u_route[rows]), len(ext_ids) - 1)]
        if has_int:
            inner = int_ids[np.minimum(np.searchsorted(int_cum, u_route[rows]), len(int_ids) - 1)]
            chosen = np.where(is_int, inner, chosen)
        route[rows] = chosen
        input_t[rows] = np.clip(
            rng.lognormal(math.log(workload.input_median), workload.input_sigma, rows.size),
            1, 200_000).astype(np.int64)
        if workload.output_median > 0:
            output_t[rows] = np.clip(
                rng.lognormal(math.log(workload.output_median), workload.output_sigma, rows.size),
                1, 100_000).astype(np.int64)
        latency_base[rows] = workload.latency_ms_per_output_token
        streaming[rows] = workload.streaming
        cache_hit[rows] = rng.random(rows.size) < workload.cache_read_fraction
    cache_read = np.where(cache_hit, (input_t * rng.uniform(0.3, 0.9, n)).astype(np.int64), 0)
    anthropic = fleet.anthropic_route[route] & ~internal
    cache_write = np.where(anthropic & ~cache_hit & (rng.random(n) < 0.2),
                           (input_t * 0.5).astype(np.int64), 0)
    errors = rng.random(n) < ERROR_RATE
    input_t = np.where(errors, 0, input_t)
    output_t = np.where(errors, 0, output_t)
    cache_read = np.where(errors, 0, cache_read)
    cache_write = np.where(errors, 0, cache_write)
    speech = fleet.speech_op[op]
    characters = np.where(speech & ~errors, input_t * CHARACTERS_PER_TOKEN, 0)
    audio_s = np.round(characters / SPOKEN_CHARACTERS_PER_S, 3)
    speed = np.where(internal, 0.6, 1.0)  # own models sit next door: shorter round trips
    ttft = (rng.lognormal(math.log(180.0), 0.5, n) * speed) + input_t * 0.01
    latency = ttft + output_t * latency_base * speed
    no_tokens = ~fleet.token_route[route]  # an API that bills characters reports no tokens
    input_t = np.where(no_tokens, 0, input_t)
    output_t = np.where(no_tokens, 0, output_t)
    gpu = rng.integers(0, max(fleet.gpus, 1), n)

    route_arr = pa.array(route)
    op_arr = pa.array(op)
    ids = pc.binary_join_element_wise(
        f"sim-{seed}-{start_us}-",
        pc.cast(pa.array(np.arange(first_id, first_id + n)), pa.string()), "")
    int_mask = pa.array(internal)
    null_str = pa.nulls(n, pa.string())
    gpu_arr = pa.array(gpu)
    columns = {
        "request_id": ids,
        "timestamp": pa.array(start_us + second * US + offsets, pa.int64()).cast(
            REQUEST_EVENT.field("timestamp").type),
        "operation": fleet.operations.take(op_arr),
        "gen_ai_operation": fleet.gen_ai_ops.take(op_arr),
        "provider": fleet.providers.take(route_arr),
        "provider_kind": fleet.kinds.take(route_arr),
        "model": fleet.models.take(route_arr),
        "input_tokens": pa.array(input_t),
        "output_tokens": pa.array(output_t),
        "cache_read_tokens": pa.array(cache_read),
        "cache_write_tokens": pa.array(cache_write),
        "input_characters": pa.array(characters, mask=~speech),
        "output_audio_seconds": pa.array(audio_s, mask=~speech),
        "output_audio_tokens": pa.array(output_t, mask=~speech | no_tokens),
        "latency_ms": pa.array(np.round(latency, 3)),
        "ttft_ms": pa.array(np.round(ttft, 3), mask=~streaming | errors),
        "status": pc.if_else(pa.array(errors), "error", "ok"),
        "error_type": pc.if_else(pa.array(errors), fleet.errors.take(pa.array(internal.astype(
            np.int64))), null_str),
        "team": pa.array(np.array(["search", "assist", "dev-tools", "support"])[op % 4]),
        "app": fleet.operations.take(op_arr),
        "feature": null_str,
        "host": pc.if_else(int_mask, fleet.hosts.take(gpu_arr), null_str) if fleet.gpus
        else null_str,
        "gpu_uuid": pc.if_else(int_mask, fleet.gpu_uuids.take(gpu_arr), null_str) if fleet.gpus
        else null_str,
        "source": pa.array(["simulator"] * n, pa.string()) if n else null_str,
    }
    columns["response_model"] = columns["model"]
    requests = _table(columns, REQUEST_EVENT, n)

    gpu_table = None
    if fleet.gpus:
        work = np.where(internal & ~errors, output_t + input_t * 0.05, 0.0)
        served = np.bincount(gpu, weights=work, minlength=fleet.gpus)[: fleet.gpus]
        util = np.clip(served / GPU_CAPACITY_WORK_PER_S * 100.0 + rng.normal(0, 1.0, fleet.gpus),
                       0.0, 100.0)
        power = np.clip(IDLE_POWER_W + (MAX_POWER_W - IDLE_POWER_W) * util / 100.0
                        + rng.normal(0, 3.0, fleet.gpus), IDLE_POWER_W * 0.8, MAX_POWER_W)
        energy += np.round(power * 1000.0).astype(np.int64)  # W x 1 s = J -> mJ
        g = fleet.gpus
        gpu_table = _table({
            "timestamp": pa.array(np.full(g, start_us + (second + 1) * US), pa.int64()).cast(
                GPU_SAMPLE.field("timestamp").type),
            "host": fleet.hosts,
            "gpu_uuid": fleet.gpu_uuids,
            "gpu_index": fleet.gpu_index,
            "mig_instance": pa.nulls(g, pa.string()),
            "gpu_name": pa.array(["NVIDIA H100 80GB HBM3 (simulated)"] * g),
            "utilization_pct": pa.array(np.round(util, 2)),
            "memory_used_bytes": pa.array((30 * 1024**3 + util / 100 * 10 * 1024**3)
                                          .astype(np.int64)),
            "memory_total_bytes": pa.array(np.full(g, GPU_MEMORY_BYTES, dtype=np.int64)),
            "power_w": pa.array(np.round(power, 3)),
            "energy_mj": pa.array(energy.copy()),
            "temperature_c": pa.array(np.round(35.0 + util * 0.4, 1)),
            "interval_s": pa.array(np.ones(g)),
        }, GPU_SAMPLE, g)
    tokens = np.stack([input_t, output_t, cache_read, cache_write, characters], axis=1)
    return _Tick(requests, gpu_table, route, tokens, errors, op)


def _table(columns: dict[str, Any], schema: pa.Schema, rows: int) -> pa.Table:
    """Columns in schema order; fields added to the schema later are sent as nulls."""
    arrays = [columns[f.name] if f.name in columns else pa.nulls(rows, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


class _Ledger:
    """Exact per-(route, UTC day) token sums; priced once per group at the end."""

    def __init__(self, routes: int) -> None:
        self.routes = routes
        self.days: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.by_op = np.zeros(len(WORKLOADS), dtype=np.int64)

    def add(self, tick: _Tick, day: int, first_us: int) -> None:
        tokens, counts, errors, first = self.days.get(day) or (
            np.zeros((self.routes, 5), np.int64), np.zeros(self.routes, np.int64),
            np.zeros(self.routes, np.int64), first_us)
        np.add.at(tokens, tick.route, tick.tokens)
        counts += np.bincount(tick.route, minlength=self.routes)
        errors += np.bincount(tick.route[tick.errors], minlength=self.routes)
        self.days[day] = (tokens, counts, errors, min(first, first_us))
        self.by_op += np.bincount(tick.op, minlength=len(WORKLOADS))


def per_token_prices(provider: str, model: str, when: dt.datetime) -> tuple[Decimal, ...] | None:
    """(input, output, cache_read, cache_write, input character) USD per unit from genai-prices,
    or None.

    A missing cache price means those tokens pay the input price (same rule as
    streams/pricing.py). Tiered prices are not used by the simulated models.
    """
    from genai_prices import Usage, calc_price

    try:
        found = calc_price(Usage(input_tokens=1, output_tokens=1), model_ref=model,
                           provider_id=provider, genai_request_timestamp=when)
    except LookupError:
        return None
    price = found.model_price
    values = []
    for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                 "input_mchars"):
        value = getattr(price, name)
        if value is not None and not isinstance(value, Decimal):
            raise ValueError(f"{provider}/{model}: tiered {name} is not supported here")
        values.append(value)
    inp = values[0] or Decimal(0)
    out = values[1] or Decimal(0)
    return (inp / MTOK, out / MTOK, (values[2] if values[2] is not None else inp) / MTOK,
            (values[3] if values[3] is not None else inp) / MTOK, (values[4] or Decimal(0)) / MTOK)


def _summarise(summary: SimulationSummary, fleet: _Fleet, ledger: _Ledger) -> None:
    totals: dict[int, ModelTotals] = {}
    expected = Decimal(0)
    unpriced: set[str] = set()
    for _day, (tokens, counts, errors, first_us) in sorted(ledger.days.items()):
        when = dt.datetime.fromtimestamp(first_us / US, dt.UTC)
        for i, route in enumerate(fleet.routes):
            if counts[i] == 0:
                continue
            t = totals.setdefault(i, ModelTotals(route.provider, route.model,
                                                 "internal" if route.internal else "external"))
            inp, out, cr, cw, chars = (int(x) for x in tokens[i])
            t.requests += int(counts[i])
            t.errors += int(errors[i])
            t.input_tokens += inp
            t.output_tokens += out
            t.cache_read_tokens += cr
            t.cache_write_tokens += cw
            t.input_characters += chars
            if route.internal:
                continue
            prices = per_token_prices(route.provider, route.model, when)
            if prices is None:
                unpriced.add(f"{route.provider}/{route.model}")
                continue
            p_in, p_out, p_cr, p_cw, p_char = prices
            cost = (max(inp - cr - cw, 0) * p_in + out * p_out + cr * p_cr + cw * p_cw
                    + chars * p_char)
            t.list_cost = (t.list_cost or Decimal(0)) + cost
            expected += cost
    summary.by_model = sorted(totals.values(), key=lambda t: (t.provider_kind, t.provider,
                                                              t.model))
    for t in summary.by_model:
        if t.list_cost is not None:
            t.list_cost = t.list_cost.quantize(MONEY_QUANTUM)
        summary.requests += t.requests
        summary.error_requests += t.errors
        summary.input_tokens += t.input_tokens
        summary.output_tokens += t.output_tokens
        summary.cache_read_tokens += t.cache_read_tokens
        summary.cache_write_tokens += t.cache_write_tokens
        summary.input_characters += t.input_characters
        if t.provider_kind == "internal":
            summary.internal_requests += t.requests
        else:
            summary.external_requests += t.requests
    summary.expected_external_list_cost = expected.quantize(MONEY_QUANTUM)
    summary.unpriced_models = sorted(unpriced)
    summary.by_operation = {w.name: int(c) for w, c in zip(WORKLOADS, ledger.by_op, strict=True)}


Sink = Callable[[pa.Table], None]


def simulate(
    settings: Settings,
    *,
    rate: float = 100.0,
    duration_s: int = 60,
    internal_share: float = 0.4,
    seed: int = 0,
    gpus: int = 4,
    spikes: list[Spike] | None = None,
    start: dt.datetime | None = None,
    as_fast_as_possible: bool = False,
    request_sink: Sink | None = None,
    gpu_sink: Sink | None = None,
    progress: Callable[[int, int], None] | None = None,
    flush_timeout_s: float = 60.0,
) -> SimulationSummary:
    """Generate and send the fleet's events; returns what was sent.

    Sinks default to the shared producers (`producer_for(settings, "requests"|"gpu")`), which
    are flushed at the end; pass sinks to capture tables instead (tests, other transports).
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if not 0.0 <= internal_share <= 1.0:
        raise ValueError(f"internal share must be between 0 and 1 (got {internal_share})")
    if internal_share > 0 and gpus < 1:
        raise ValueError("an internal share above 0 needs at least one simulated GPU (--gpus)")
    start = (start or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    start_us = int(start.timestamp()) * US + start.microsecond
    fleet = _Fleet(internal_share, gpus, seed)
    rng = np.random.default_rng(seed)
    energy = rng.integers(10**9, 10**10, max(gpus, 1)).astype(np.int64)[:gpus]
    producers: list[Any] = []
    if request_sink is None or (gpu_sink is None and gpus):
        from costpipe.collectors.producer import producer_for

        if request_sink is None:
            requests_producer = producer_for(settings, "requests")
            producers.append(requests_producer)
            request_sink = requests_producer.emit_batch
        if gpu_sink is None and gpus:
            gpu_producer = producer_for(settings, "gpu")
            producers.append(gpu_producer)
            gpu_sink = gpu_producer.emit_batch
    ledger = _Ledger(len(fleet.routes))
    summary = SimulationSummary(seed, rate, duration_s, start,
                                start + dt.timedelta(seconds=duration_s), gpus)
    wall_start = time.perf_counter()
    next_id = 0
    for second in range(duration_s):
        if not as_fast_as_possible:
            delay = wall_start + second - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        tick = _generate_tick(fleet, rng, second, start_us, rate, spikes or [], seed, next_id,
                              energy)
        next_id += tick.requests.num_rows
        tick_us = start_us + second * US
        ledger.add(tick, tick_us // (86_400 * US), tick_us)
        if tick.requests.num_rows:
            request_sink(tick.requests)
        if tick.gpu is not None and gpu_sink is not None:
            gpu_sink(tick.gpu)
            summary.gpu_samples += tick.gpu.num_rows
        if progress is not None:
            progress(second + 1, duration_s)
    for producer in producers:
        producer.flush(flush_timeout_s)
    summary.elapsed_s = time.perf_counter() - wall_start
    summary.producer_stats = {p.topic: p.stats for p in producers}
    _summarise(summary, fleet, ledger)
    return summary
