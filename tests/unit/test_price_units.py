"""Every catalog unit is priced: the whole genai-prices snapshot against its own calculator.

For every model of every provider in the snapshot, a request carrying the units its prices use
is costed exactly what `genai_prices.calc_price` says (to the pico-dollar) and never $0 unless
its price is; a request lacking a unit its price needs is `unpriced_unit`, never $0 "priced".
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import genai_prices
import pyarrow as pa
import pytest
from genai_prices import data_snapshot
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from costpipe.core.money import to_pico
from costpipe.core.settings import PriceOverride, PricingSettings, Settings
from costpipe.schemas.records import REQUEST_EVENT
from costpipe.streams.price_units import SECONDS
from costpipe.streams.pricing import catalog_prices, price_batch

WHEN = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)
MODELS = [(p.id, m.id) for p in data_snapshot.get_snapshot().providers for m in p.models]


def _event(provider: str, model: str, i: int, **usage: Any) -> dict[str, Any]:
    event: dict[str, Any] = dict.fromkeys(REQUEST_EVENT.names)
    event.update(request_id=f"r{i}", timestamp=WHEN, operation="op", provider=provider,
                 provider_kind="external", model=model, status="ok", input_tokens=0,
                 output_tokens=0, cache_read_tokens=0, cache_write_tokens=0)
    event.update(usage)
    return event


def _priced(events: list[dict[str, Any]], s: Settings | None = None
            ) -> list[tuple[Decimal, str]]:
    table = pa.Table.from_pylist(events, schema=REQUEST_EVENT)
    cost, _, status = price_batch(table, s or Settings())
    return list(zip(cost.to_pylist(), status.to_pylist(), strict=True))


def _usage(draw: st.DrawFn) -> dict[str, Any]:
    """Usage with every unit present and every leaf positive: parts stay below their parents."""
    n = st.integers
    inp = draw(n(1000, 300_000))
    cache_read = draw(n(8, inp // 4))
    audio = draw(n(4, inp // 4))
    image = draw(n(4, inp // 8))
    out = draw(n(10, 50_000))
    return {
        "input_tokens": inp, "output_tokens": out, "cache_read_tokens": cache_read,
        "cache_write_tokens": draw(n(1, inp // 4)), "input_audio_tokens": audio,
        "cache_audio_read_tokens": draw(n(1, min(audio, cache_read) // 4)),
        "input_image_tokens": image,
        "cache_image_read_tokens": draw(n(1, min(image, cache_read) // 4)),
        "output_audio_tokens": draw(n(1, out // 3)),
        "output_image_tokens": draw(n(1, out // 3)),
        "input_characters": draw(n(1, 100_000)),
        "input_audio_seconds": draw(n(1, 7_200_000)) / 1000,
        "output_audio_seconds": draw(n(1, 600_000)) / 1000,
    }


def _oracle(provider: str, model: str, usage: dict[str, Any]) -> Decimal:
    units = {k: Decimal(str(v)) if k in SECONDS else v for k, v in usage.items()}
    units["audio_seconds"] = units["input_audio_seconds"] + units["output_audio_seconds"]
    price = genai_prices.calc_price(genai_prices.Usage(**units), model, provider_id=provider,
                                    genai_request_timestamp=WHEN)
    return price.total_price


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # 2,330 models a draw
@given(st.data())
def test_every_catalog_model_costs_what_its_catalog_says(data: st.DataObject) -> None:
    usage = data.draw(st.composite(_usage)())
    events = [_event(p, m, i, **usage) for i, (p, m) in enumerate(MODELS)]
    checked = 0
    for (provider, model), (cost, status) in zip(MODELS, _priced(events), strict=True):
        prices = catalog_prices(provider, model, WHEN)
        if prices is None:  # the catalog's own matcher does not find this id (a few aliases)
            assert status == "unpriced", (provider, model)
            continue
        if prices.units.uncarried:  # billed only in units no event carries (pages, searches)
            assert (status, cost) == ("unpriced_unit", 0), (provider, model)
            continue
        expected = _oracle(provider, model, usage)
        assert status == "priced", (provider, model)
        assert to_pico(cost) == to_pico(expected), (provider, model, usage)
        if any(p > 0 for segment in prices.segments for p in segment):
            assert cost > 0, (provider, model)
        checked += 1
    assert checked > 2000


def test_a_request_lacking_the_unit_its_price_needs_is_flagged_not_free() -> None:
    needy = [(p, m) for p, m in MODELS
             if (prices := catalog_prices(p, m, WHEN)) and prices.units.required]
    assert ("openai", "tts-1") in needy and ("openai", "whisper-1") in needy
    events = [_event(p, m, i, input_tokens=100, output_tokens=10)
              for i, (p, m) in enumerate(needy)]
    for (provider, model), (cost, status) in zip(needy, _priced(events), strict=True):
        assert (status, cost) == ("unpriced_unit", 0), (provider, model)


@pytest.mark.parametrize(("model", "usage", "dollars"), [
    # tts-1: $15 per 1M input characters
    ("tts-1", {"input_characters": 1234}, Decimal("0.01851")),
    ("tts-1-hd", {"input_characters": 1234}, Decimal("0.03702")),
    # whisper-1: $0.36 per audio hour = $0.0001 per second
    ("whisper-1", {"input_audio_seconds": 12.5}, Decimal("0.00125")),
    # gpt-4o-transcribe: text in $2.50, audio in $6, out $10 per Mtok
    ("gpt-4o-transcribe", {"input_tokens": 1000, "input_audio_tokens": 900, "output_tokens": 50},
     Decimal("0.00615")),
])
def test_voice_units_by_hand(model: str, usage: dict[str, Any], dollars: Decimal) -> None:
    [(cost, status)] = _priced([_event("openai", model, 0, **usage)])
    assert (cost, status) == (dollars, "priced")


def test_override_in_characters_replaces_the_catalog_price_and_v1_events_still_price() -> None:
    s = Settings(pricing=PricingSettings(overrides=[
        PriceOverride(provider="openai", model="tts-1", input_per_mchars=Decimal("12"))]))
    v1 = {k: v for k, v in _event("openai", "gpt-4o-mini", 1, input_tokens=1000).items()
          if k in ("request_id", "timestamp", "operation", "provider", "provider_kind", "model",
                   "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                   "status")}
    priced = _priced([_event("openai", "tts-1", 0, input_characters=1000), v1], s)
    assert priced == [(Decimal("0.012"), "priced"), (Decimal("0.00015"), "priced")]


def test_a_failed_call_pays_no_per_request_fee() -> None:
    ok, failed = _priced([_event("perplexity", "sonar", 0),
                          {**_event("perplexity", "sonar", 1), "status": "error"}])
    assert ok[0] > 0 and failed == (0, "priced")
