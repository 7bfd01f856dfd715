"""A small seeded hybrid workload (requests + GPU samples) and its independently computed cost.

The expectation does not use `streams.pricing` or `streams.allocation`: external rows are
priced one by one with `genai_prices.calc_price`, GPU bucket costs with plain Decimal formulas.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

import pyarrow as pa
from genai_prices import Usage, calc_price

from costpipe.core.money import MONEY_QUANTUM
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE, REQUEST_EVENT

EXTERNAL = [("openai", "gpt-4o-mini", "chat"), ("openai", "gpt-4o", "reasoning"),
            ("anthropic", "claude-sonnet-4-5", "reasoning")]
INTERNAL = [("own-vllm", "llama-3.1-8b", "chat"), ("own-embed", "bge-m3", "embeddings")]
GPUS = ["GPU-a", "GPU-b"]


@dataclass
class Workload:
    requests: list[pa.RecordBatch]
    samples: list[pa.RecordBatch]
    expected_external: Decimal
    expected_gpu: Decimal  # Σ GPU cost over every (gpu, bucket) that has samples
    gpu_buckets: dict[tuple[str, int], Decimal]  # (gpu, bucket start in µs) -> GPU cost
    start: dt.datetime
    end: dt.datetime


def q(amount: Decimal) -> Decimal:
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def make_workload(settings: Settings, *, seed: int = 7, seconds: int = 120, per_second: int = 20,
                  batch_size: int = 500, start: dt.datetime | None = None,
                  spike: tuple[int, int, int] | None = None) -> Workload:
    """Requests over `seconds` seconds; spike=(from_s, to_s, factor) multiplies gpt-4o traffic."""
    rng = random.Random(seed)
    start = start or dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    start = start - dt.timedelta(seconds=start.timestamp() % 60)
    rows, expected_external = [], Decimal(0)
    for second in range(seconds):
        count = per_second
        for i in range(count):
            internal = rng.random() < 0.5
            provider, model, op = rng.choice(INTERNAL if internal else EXTERNAL)
            if spike and spike[0] <= second < spike[1] and not internal:
                provider, model, op = EXTERNAL[1]
            inp = rng.randint(10, 4000)
            out = rng.randint(0, 800)
            cache = rng.randint(0, inp // 2) if provider != "own-embed" else 0
            row = {
                "request_id": f"r{seed}-{second}-{i}",
                "timestamp": start + dt.timedelta(seconds=second, microseconds=i * 997),
                "operation": op, "gen_ai_operation": op, "provider": provider,
                "provider_kind": "internal" if internal else "external", "model": model,
                "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache,
                "cache_write_tokens": 0, "latency_ms": rng.uniform(20, 3000),
                "status": "error" if rng.random() < 0.02 else "ok", "team": "t1",
                "gpu_uuid": rng.choice(GPUS) if internal else None, "source": "test",
            }
            if spike and spike[0] <= second < spike[1] and not internal:
                for k in range(spike[2]):
                    extra = dict(row, request_id=f"{row['request_id']}-s{k}")
                    rows.append(extra)
                    expected_external += _price(extra)
            rows.append(row)
            if not internal:
                expected_external += _price(row)
    requests = [pa.RecordBatch.from_pylist(rows[i:i + batch_size], schema=REQUEST_EVENT)
                for i in range(0, len(rows), batch_size)]
    samples, buckets = _gpu_samples(settings, start, seconds, rng)
    return Workload(requests, samples, expected_external, sum(buckets.values(), Decimal(0)),
                    buckets, start,
                    start + dt.timedelta(seconds=seconds))


def _price(row: dict) -> Decimal:
    usage = Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                  cache_read_tokens=row["cache_read_tokens"],
                  cache_write_tokens=row["cache_write_tokens"])
    return q(calc_price(usage, row["model"], provider_id=row["provider"],
                        genai_request_timestamp=row["timestamp"]).total_price)


def _gpu_samples(settings: Settings, start: dt.datetime, seconds: int,
                 rng: random.Random) -> tuple[list[pa.RecordBatch], dict]:
    """One sample per GPU per second; energy counter rises by power x 1 s."""
    gpu = settings.gpu
    rows, energy = [], dict.fromkeys(GPUS, 10_000_000)
    bucket_energy: dict[tuple[str, int], int] = {}
    for second in range(seconds):
        for index, uuid in enumerate(GPUS):
            power = rng.randint(150, 400)
            energy[uuid] += power * 1000
            bucket = second // gpu.bucket_seconds
            bucket_energy[(uuid, bucket)] = bucket_energy.get((uuid, bucket), 0) + power * 1000
            rows.append({
                "timestamp": start + dt.timedelta(seconds=second, microseconds=500_000),
                "host": "h1", "gpu_uuid": uuid, "gpu_index": index, "gpu_name": "H100",
                "utilization_pct": float(rng.randint(30, 95)), "power_w": float(power),
                "energy_mj": energy[uuid], "interval_s": 1.0,
            })
    amortised = gpu.dollars_per_gpu_hour * gpu.bucket_seconds / Decimal(3600)
    base_us = int(start.timestamp()) * 1_000_000
    expected = {
        (uuid, base_us + b * gpu.bucket_seconds * 1_000_000): q(
            amortised + Decimal(mj) / Decimal(3_600_000_000) * gpu.dollars_per_kwh * gpu.pue)
        for (uuid, b), mj in bucket_energy.items()
    }
    batch = pa.RecordBatch.from_pylist(rows, schema=GPU_SAMPLE)
    return [batch.slice(i, 200) for i in range(0, batch.num_rows, 200)], expected
