"""Vectorised synthetic lake data for tests and benchmarks (not the workload simulator).

Why here: tests, `bench/bench_queries.py` and report checks need millions of schema-correct
cost records in seconds, with exact decimal money, without Kafka or the Faust pipeline.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from costpipe.schemas.records import ALERT, COST_RECORD, GPU_SAMPLE, WINDOW_AGGREGATE

OPERATIONS = ("code_completion", "chat", "voice", "embeddings", "reasoning")
TEAMS = ("search", "support", "studio", "platform")
# (provider, provider_kind, model, pico-dollars per token)
MODELS = (
    ("own-vllm", "internal", "llama-3.1-8b", 40_000),
    ("own-tts", "internal", "xtts-v2", 30_000),
    ("openai", "external", "gpt-4o-mini", 300_000),
    ("anthropic", "external", "claude-sonnet-4", 6_000_000),
)
GPUS = tuple(f"GPU-{i:04d}" for i in range(8))
_PICO = 10**12


def _unscaled(pico: np.ndarray) -> pa.Array:
    # build decimal128 buffers directly: little-endian 128-bit two's complement unscaled ints
    lo = pico.astype(np.int64)
    hi = np.where(lo < 0, -1, 0).astype(np.int64)
    buf = np.empty(len(lo) * 2, dtype=np.int64)
    buf[0::2] = lo
    buf[1::2] = hi
    return pa.Array.from_buffers(pa.decimal128(38, 12), len(lo), [None, pa.py_buffer(buf)])


def costs(n: int, seed: int = 7, start: dt.datetime | None = None, days: float = 3,
          idle_share: float = 0.01) -> pa.Table:
    """n cost records over `days` days; about idle_share of them are idle rows."""
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    start_us = int(start.timestamp() * 1_000_000)
    ts = start_us + rng.integers(0, int(days * 86_400_000_000), n)
    model_idx = rng.integers(0, len(MODELS), n)
    op_idx = rng.integers(0, len(OPERATIONS), n)
    team_idx = rng.integers(0, len(TEAMS), n)
    idle = rng.random(n) < idle_share
    input_tokens = np.where(idle, 0, rng.integers(10, 2_000, n))
    output_tokens = np.where(idle, 0, rng.integers(1, 800, n))
    rate = np.array([m[3] for m in MODELS])[model_idx]
    internal = np.array([m[1] == "internal" for m in MODELS])[model_idx] | idle
    cost_pico = np.where(idle, rng.integers(100_000_000, 2_000_000_000, n),
                         (input_tokens + output_tokens) * rate + rng.integers(0, 999, n))
    shadow_pico = np.where(internal & ~idle, (input_tokens + output_tokens) * 300_000, 0)
    provider_idx = np.where(idle, 0, model_idx)  # idle rows belong to the own fleet
    ops = _pick((*OPERATIONS, "(idle)"), np.where(idle, len(OPERATIONS), op_idx))
    teams = _pick(TEAMS, team_idx, mask=idle)
    # unique across seeds too: a bench lake built from many seeded chunks has no repeated key
    ids = pc.binary_join_element_wise(f"r{seed}-", pa.array(np.arange(n)).cast(pa.string()), "")
    record_type = _pick(("request", "idle"), idle.astype(np.int8))
    gpu = _pick(GPUS, rng.integers(0, len(GPUS), n), mask=~internal)
    latency = np.where(idle, np.nan, rng.lognormal(6, 0.6, n))
    columns = {
        "record_id": ids,
        "record_type": record_type,
        "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "operation": ops,
        "provider": _pick([m[0] for m in MODELS], provider_idx),
        "provider_kind": _pick(("external", "internal"), internal.astype(np.int8)),
        "model": _pick([m[2] for m in MODELS], provider_idx),
        "team": teams,
        "input_tokens": pa.array(input_tokens, pa.int64()),
        "output_tokens": pa.array(output_tokens, pa.int64()),
        "cache_read_tokens": pa.array(np.zeros(n, np.int64)),
        "cache_write_tokens": pa.array(np.zeros(n, np.int64)),
        "cost": _unscaled(cost_pico),
        "list_cost": _unscaled(cost_pico),
        "shadow_cost": _unscaled(shadow_pico),
        "pricing_status": _pick(("priced", "gpu_allocated", "idle"),
                                np.where(idle, 2, internal.astype(np.int8))),
        "latency_ms": pa.array(latency, pa.float64(), from_pandas=True),
        "status": _pick(("ok",), np.zeros(n, np.int8)),
        "gpu_uuid": gpu,
        "source_partition": pa.array(np.zeros(n, np.int32)),
        "source_offset": pa.array(np.arange(n, dtype=np.int64)),
    }
    return _table(columns, COST_RECORD, n)


def _pick(values: tuple[str, ...] | list[str], idx: np.ndarray,
          mask: np.ndarray | None = None) -> pa.Array:
    """Strings by index without Python objects per row (dictionary decode is vectorised)."""
    indices = pa.array(idx.astype(np.int32), mask=mask)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(values), pa.string())).cast(
        pa.string())


def _table(columns: dict[str, pa.Array], schema: pa.Schema, n: int) -> pa.Table:
    arrays = [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def gpu_samples(n: int, seed: int = 7, start: dt.datetime | None = None, days: float = 3
                ) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = start or dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    span_us = int(days * 86_400_000_000)
    ts = int(start.timestamp() * 1_000_000) + np.sort(rng.integers(0, span_us, n))
    gpu_idx = rng.integers(0, len(GPUS), n)
    columns = {
        "timestamp": pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "host": _pick([f"gpu-host-{i}" for i in range(len(GPUS) // 4)], gpu_idx // 4),
        "gpu_uuid": _pick(GPUS, gpu_idx),
        "gpu_index": pa.array((gpu_idx % 4).astype(np.int32)),
        "gpu_name": _pick(("NVIDIA H100",), np.zeros(n, np.int8)),
        "utilization_pct": pa.array(np.clip(rng.normal(55, 20, n), 0, 100)),
        "power_w": pa.array(rng.uniform(80, 650, n)),
        "interval_s": pa.array(np.full(n, 10.0)),
    }
    return _table(columns, GPU_SAMPLE, n)


def windows_and_alerts(cost_table: pa.Table, seconds: int = 3600) -> tuple[pa.Table, pa.Table]:
    """Closed windows derived from cost records (hourly), plus one alert per day."""
    import duckdb

    con = duckdb.connect()
    con.register("c", cost_table)
    windows = con.sql(
        f"""
        SELECT time_bucket(INTERVAL '{seconds} seconds', timestamp) AS window_start,
               time_bucket(INTERVAL '{seconds} seconds', timestamp)
                   + INTERVAL '{seconds} seconds' AS window_end,
               operation, provider_kind, provider, model,
               count(*) AS requests, 0::BIGINT AS errors,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cost)::DECIMAL(38,12) AS cost,
               coalesce(sum(shadow_cost), 0)::DECIMAL(38,12) AS shadow_cost
        FROM c WHERE record_type = 'request' GROUP BY ALL
        """
    ).to_arrow_table()
    alerts = con.sql(
        """
        SELECT 'spike:' || operation || ':' || day AS alert_id, day + INTERVAL 12 HOUR AS timestamp,
               'spike' AS rule, 'warning' AS severity, operation AS key,
               day + INTERVAL 11 HOUR AS window_start, 12.5::DOUBLE AS observed,
               4.0::DOUBLE AS threshold,
               'cost spike on ' || operation AS message
        FROM (SELECT DISTINCT date_trunc('day', timestamp) AS day, min(operation) AS operation
              FROM c GROUP BY 1)
        """
    ).to_arrow_table()
    from costpipe.schemas.codec import conform

    return conform(windows, WINDOW_AGGREGATE), conform(alerts, ALERT)
