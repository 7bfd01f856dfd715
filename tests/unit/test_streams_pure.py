"""Pure parts of the stream processors: allocation exactness, sketch, EWMA spike rule, pricing."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
from genai_prices import Usage, calc_price
from hypothesis import given, settings
from hypothesis import strategies as st

from costpipe.core.money import money_to_pico, pico_to_money
from costpipe.core.settings import Settings
from costpipe.schemas import sketch
from costpipe.schemas.records import REQUEST_EVENT, WINDOW_AGGREGATE
from costpipe.streams.alerts import AlertEngine, Ewma
from costpipe.streams.allocation.rule import (
    allocate,
    bucket_energy_mj,
    busy_pico,
    gpu_bucket_cost_pico,
)
from costpipe.streams.pricing import price_batch, shadow_price_batch


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**15),
       weights=st.lists(st.integers(0, 10**8), min_size=1, max_size=50))
def test_allocation_is_exact_and_fair(total: int, weights: list[int]) -> None:
    shares = allocate(total, np.array(weights), [str(i) for i in range(len(weights))])
    assert int(shares.sum()) == total
    w = weights if sum(weights) else [1] * len(weights)
    for share, weight in zip(shares.tolist(), w, strict=True):
        exact = Decimal(total) * weight / sum(w)
        assert exact - 1 < share < exact + 1


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**13),
       weights=st.lists(st.integers(0, 50), min_size=1, max_size=40),
       keys=st.lists(st.text("abc", max_size=3), min_size=40, max_size=40))
def test_vectorised_allocation_matches_the_exact_rule(total: int, weights: list[int],
                                                      keys: list[str]) -> None:
    """Small weights make many equal remainders, so the tie-break by request_id is exercised."""
    from costpipe.streams.allocation.rule import _allocate_exact

    ties = keys[:len(weights)]
    w = weights if sum(weights) else [1] * len(weights)
    want = _allocate_exact(total, w, ties).tolist()
    assert allocate(total, np.array(weights), pa.array(ties)).tolist() == want
    assert allocate(total, np.array(weights), ties).tolist() == want


def test_allocation_beyond_64_bits_falls_back_to_python_ints() -> None:
    shares = allocate(10**15, np.array([10**6, 3 * 10**6, 1]), ["a", "b", "c"])
    assert int(shares.sum()) == 10**15 and shares.tolist()[0] * 3 <= shares.tolist()[1] + 3


@settings(max_examples=100, deadline=None)
@given(cost=st.integers(0, 10**12), utils=st.lists(st.floats(0, 100), min_size=1, max_size=20))
def test_busy_never_exceeds_cost(cost: int, utils: list[float]) -> None:
    busy = busy_pico(cost, utils, True)
    assert 0 <= busy <= cost
    assert busy_pico(cost, utils, False) == 0


def test_gpu_bucket_cost_formula() -> None:
    gpu = Settings().gpu  # $2/GPU-h, $0.12/kWh, PUE 1.3, 10 s buckets
    energy = bucket_energy_mj([None], [300.0], [10.0], None)  # 300 W x 10 s = 3,000,000 mJ
    assert energy == 3_000_000
    want = Decimal(2) * 10 / 3600 + Decimal(3_000_000) / Decimal(3_600_000_000) * Decimal(
        "0.12") * Decimal("1.3")
    assert gpu_bucket_cost_pico(energy, gpu) == int(want.quantize(Decimal("1e-12")) * 10**12)
    assert bucket_energy_mj([5_000, 9_000], [1.0, 1.0], [1.0, 1.0], 1_000) == 8_000
    assert bucket_energy_mj([500], [2.0], [1.0], 1_000) == 2_000  # counter reset -> power x t


@given(st.lists(st.integers(-(2**62), 2**62), max_size=30))
def test_money_round_trip(values: list[int]) -> None:
    arr = np.array(values, dtype=np.int64)
    assert money_to_pico(pico_to_money(arr)).tolist() == values


@given(st.lists(st.floats(0.01, 100_000), min_size=1, max_size=200),
       st.lists(st.floats(0.01, 100_000), min_size=1, max_size=200))
def test_sketch_merge_equals_sketch_of_union(a: list[float], b: list[float]) -> None:
    def build(values: list[float]) -> dict[int, int]:
        idx, counts = np.unique(sketch.bucket_index(np.array(values)), return_counts=True)
        return sketch.merge({}, idx.tolist(), counts.tolist())

    merged = sketch.merge(build(a), *zip(*build(b).items(), strict=True))
    assert merged == build(a + b)
    p50 = sketch.quantile(merged, 0.5)
    true = float(np.quantile(np.array(a + b), 0.5, method="lower"))
    assert (p50 is not None and abs(p50 - true) / true < 0.03) or len(a + b) < 3


def test_ewma_tracks_mean() -> None:
    e = Ewma(0.3)
    for x in [10.0] * 20:
        e.update(x)
    assert abs(e.mean - 10) < 1e-9 and e.sigma < 1e-9


def _window(start: dt.datetime, cost: str, kind: str = "external") -> dict:
    return {"window_start": start, "window_end": start + dt.timedelta(minutes=1),
            "operation": "chat", "provider_kind": kind, "provider": "openai",
            "model": "gpt-4o", "requests": 10, "errors": 0, "input_tokens": 1,
            "output_tokens": 1, "cost": Decimal(cost), "shadow_cost": Decimal(0),
            "external_share_cost": 0.1, "external_share_requests": 0.1, "revision": 0}


def test_spike_fires_once_and_steady_run_none() -> None:
    engine = AlertEngine(Settings())
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    steady = [_window(t0 + dt.timedelta(minutes=i), str(1 + (i % 3) * 0.01)) for i in range(30)]
    assert engine.on_windows(pa.Table.from_pylist(steady, schema=WINDOW_AGGREGATE)) == []
    spike = [_window(t0 + dt.timedelta(minutes=30 + i), "9") for i in range(3)]
    fired = engine.on_windows(pa.Table.from_pylist(spike, schema=WINDOW_AGGREGATE))
    assert [a["rule"] for a in fired] == ["spike"]
    assert fired[0]["window_start"] == t0 + dt.timedelta(minutes=30)
    again = engine.on_windows(pa.Table.from_pylist(spike, schema=WINDOW_AGGREGATE))
    assert again == []  # replayed windows never fire twice


def test_price_batch_matches_catalog_and_flags_unknown() -> None:
    when = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    rows = [
        ("openai", "gpt-4o-mini", 1200, 300, 200, 0),
        ("anthropic", "claude-sonnet-4-5", 250_000, 1000, 1000, 500),  # above the 200k tier
        ("openai", "no-such-model", 10, 10, 0, 0),
        ("own-vllm", "llama", 100, 100, 0, 0),
    ]
    batch = pa.RecordBatch.from_pylist([
        {"request_id": str(i), "timestamp": when, "operation": "chat", "provider": p,
         "model": m, "input_tokens": a, "output_tokens": b, "cache_read_tokens": c,
         "cache_write_tokens": d, "status": "ok"}
        for i, (p, m, a, b, c, d) in enumerate(rows)], schema=REQUEST_EVENT)
    cost, list_cost, status = price_batch(batch, Settings())
    for i, (p, m, a, b, c, d) in enumerate(rows[:2]):
        want = calc_price(Usage(input_tokens=a, output_tokens=b, cache_read_tokens=c,
                                cache_write_tokens=d), m, provider_id=p,
                          genai_request_timestamp=when).total_price
        assert cost[i].as_py() == want.quantize(Decimal("1e-12"))
    assert status.to_pylist() == ["priced", "priced", "unpriced", None]
    assert cost[2].as_py() == 0 and list_cost[2].as_py() is None
    discounted = Settings.model_validate({"pricing": {"discounts": {"openai": "0.2"}}})
    cost2, list2, _ = price_batch(batch, discounted)
    assert cost2[0].as_py() == list2[0].as_py() * Decimal("0.8")
    shadow = shadow_price_batch(batch, Settings())
    assert shadow.to_pylist()[:3] == [None, None, None] and shadow[3].as_py() > 0
