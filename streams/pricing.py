"""The price catalog for external requests and the shadow price for internal ones.

Rules (documented here because the simulator's expectation imports this module):
- Every unit the catalog prices is applied to the matching usage (`streams/price_units.py`):
  tokens by kind and modality, characters, audio seconds. Units nest; a price applies to what
  is left after more specific priced units took theirs. So `input_tokens` is the whole prompt
  *including* cache reads/writes and audio (OpenTelemetry GenAI and genai-prices semantics);
  uncached text input = input - cache_read - cache_write - audio..., floored at 0, and a unit
  without its own price (a cache read on a model with no cache price) pays its parent's price.
- List prices come from genai-prices at the request's own timestamp (effective-dated), with its
  cliff tiers (a tier's price applies to all units once total input tokens exceed its start).
- `settings.pricing.overrides` add a model or replace the price we pay (contract price);
  `settings.pricing.discounts[provider]` scale the paid price by (1 - discount).
  `list_cost` is the catalog price (or the override when the catalog lacks the model).
- A model found nowhere is `unpriced`; a model priced in a unit the request did not report
  (speech without characters) is `unpriced_unit`: cost 0, list_cost null, counted in
  `costpipe_unpriced_requests_total` / `costpipe_unpriced_unit_requests_total` - never
  silently priced.
- Money is exact: prices in pico-dollars per count are integers for every real price list
  (<= 6 decimals per Mtok; audio counted in ms); a group whose price is not is computed with
  Decimal per row, rounded half-even to the pico-dollar.

Vectorised: rows are grouped by (provider, model, UTC day); each group resolves its prices once
(cached) and costs are int64 numpy arithmetic over unit columns.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices, TimeOfDateConstraint

from costpipe.core.metrics import UNPRICED, UNPRICED_UNIT
from costpipe.core.money import PICO, pico_to_money
from costpipe.core.settings import PriceOverride, Settings
from costpipe.streams.price_units import (
    BatchUsage,
    PricedUnits,
    leaf_counts,
    priced_units,
    resolution,
)

KINDS = ("input", "output", "cache_read", "cache_write")
_US_PER_DAY = 86_400 * 1_000_000
_MAX_PICO_PER_COUNT = 10**10  # $10,000 per Mtok; keeps int64 sums far from overflow


@dataclass(frozen=True)
class PriceList:
    """Prices of one model at one instant: per catalog unit, per cliff tier segment.

    `units` are the billed units most specific first; `segments[i][j]` is the price of
    `units.units[j]` per its catalog quantity (`per`, e.g. 1M tokens or 3600 s) in segment i;
    `starts[i]` is the input-token count above which segment i+1 applies.
    """

    units: PricedUnits
    starts: tuple[int, ...]
    segments: tuple[tuple[Decimal, ...], ...]

    def scaled(self, factor: Decimal) -> PriceList:
        return PriceList(self.units, self.starts,
                         tuple(tuple(p * factor for p in s) for s in self.segments))

    def divisors(self) -> tuple[int, ...]:
        """Counts per catalog quantity, at the resolution usage is counted in."""
        return tuple(u.per * resolution(u.usage_key) for u in self.units.units)

    def pico_per_count(self) -> np.ndarray | None:
        """int64 [segment, unit] pico-dollars per count, or None when not exactly integral."""
        return _pico_table(self.segments, self.divisors())


@lru_cache(maxsize=4096)
def _pico_table(segments: tuple[tuple[Decimal, ...], ...], divisors: tuple[int, ...]
                ) -> np.ndarray | None:
    table = np.zeros((len(segments), len(divisors)), dtype=np.int64)
    for i, segment in enumerate(segments):
        for j, (price, per) in enumerate(zip(segment, divisors, strict=True)):
            pico = price * PICO / per
            if pico != pico.to_integral_value() or pico > _MAX_PICO_PER_COUNT:
                return None
            table[i, j] = int(pico)
    return table


@dataclass(frozen=True)
class GroupPrice:
    paid: PriceList | None
    list_: PriceList | None


def _tier_price(price: Decimal | TieredPrices | None, total_input: int) -> Decimal | None:
    if price is None or not isinstance(price, TieredPrices):
        return price
    chosen = price.base
    for tier in price.tiers:
        if total_input > tier.start:
            chosen = tier.price
    return chosen


def price_list(stated: Mapping[str, Decimal | TieredPrices]) -> PriceList:
    """A PriceList from prices by catalog price key (`input_mtok`, `input_mchars`, ...)."""
    units = priced_units(stated)
    raw = [stated[u.price_key] for u in units.units]
    starts = sorted({t.start for p in raw if isinstance(p, TieredPrices) for t in p.tiers})
    segments = tuple(tuple(_tier_price(p, probe) or Decimal(0) for p in raw)
                     for probe in [0, *[s + 1 for s in starts]])
    return PriceList(units, tuple(starts), segments)


@lru_cache(maxsize=4096)
def catalog_prices(provider: str, model: str, when: dt.datetime) -> PriceList | None:
    """genai-prices for (provider, model) at `when`, or None when the catalog lacks it."""
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = info.get_prices(when)
    stated = {k: v for k, v in vars(prices).items() if not k.startswith("_") and v is not None}
    return price_list(stated)


def _overrides(settings: Settings) -> dict[tuple[str, str], PriceOverride]:
    return {(o.provider, o.model): o for o in settings.pricing.overrides}


def group_price(provider: str, model: str, when: dt.datetime, settings: Settings) -> GroupPrice:
    listed = catalog_prices(provider, model, when)
    override = _overrides(settings).get((provider, model))
    paid = price_list(override.catalog_prices()) if override is not None else listed
    if listed is None:
        listed = paid
    discount = settings.pricing.discounts.get(provider)
    if paid is not None and discount:
        paid = paid.scaled(Decimal(1) - discount)
    return GroupPrice(paid, listed)


# ------------------------------------------------------------------ vectorised core


def _cost_pico(prices: PriceList, counts: np.ndarray, total_input: np.ndarray) -> np.ndarray:
    segment = np.searchsorted(np.asarray(prices.starts, dtype=np.int64), total_input, side="left")
    table = prices.pico_per_count()
    if table is not None:
        return np.einsum("ij,ij->i", counts, table[segment])
    return _exact_cost_pico(prices, counts, segment)


@lru_cache(maxsize=4096)
def _rational_table(segments: tuple[tuple[Decimal, ...], ...], divisors: tuple[int, ...]
                    ) -> tuple[np.ndarray, int]:
    """(object [segment, unit] integer coefficients, common denominator D): a price of p per
    `divisor` counts is coef / D pico-dollars per count, exactly."""
    ratios = [[(p * PICO).as_integer_ratio() for p in segment] for segment in segments]
    denominator = math.lcm(*(d * div for row in ratios
                             for (_, d), div in zip(row, divisors, strict=True)))
    table = np.array([[n * (denominator // (d * div))
                       for (n, d), div in zip(row, divisors, strict=True)] for row in ratios],
                     dtype=object)
    return table, denominator


def _exact_cost_pico(prices: PriceList, counts: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Rare prices that are not whole pico-dollars per count (an hourly audio price counted in
    ms, $12 per 1,000 requests): exact rationals on Python integers, whole columns at a time,
    rounded half-even to the pico-dollar once per row."""
    table, denominator = _rational_table(prices.segments, prices.divisors())
    numerators = (counts.astype(object) * table[segment]).sum(axis=1)
    numerators = np.asarray(numerators, dtype=object).reshape(-1)
    quotient, remainder = numerators // denominator, numerators % denominator
    twice = remainder * 2
    up = (twice > denominator) | ((twice == denominator) & (quotient % 2 == 1))
    return (quotient + up.astype(object)).astype(np.int64)


def _days(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    ts = batch.column("timestamp").cast(pa.int64()).to_numpy()
    return ts // _US_PER_DAY


@dataclass
class _Priced:
    """Per-row pricing outcome; `unit_missing` rows were not priced for lack of a unit."""

    paid: np.ndarray
    listed: np.ndarray
    priced: np.ndarray
    has_list: np.ndarray
    unit_missing: np.ndarray


def _price_rows(
    batch: pa.RecordBatch | pa.Table,
    providers: pa.Array,
    models: pa.Array,
    mask: np.ndarray,
    settings: Settings,
    count_unpriced: bool,
) -> _Priced:
    """Paid and list pico-dollars for rows where mask is true, and which rows got a price."""
    n = len(batch)
    out = _Priced(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                  np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool))
    if not mask.any():
        return out
    usage = BatchUsage(batch)
    total_input = usage.values("input_tokens")[0]
    keys = pa.table({
        "p": providers, "m": models, "d": pa.array(_days(batch)), "i": pa.array(np.arange(n)),
    }).filter(pa.array(mask))
    groups = keys.group_by(["p", "m", "d"], use_threads=False).aggregate([("i", "list")])
    ts_us = batch.column("timestamp").cast(pa.int64()).to_numpy()
    for provider, model, day, rows in zip(
        groups["p"].to_pylist(), groups["m"].to_pylist(), groups["d"].to_pylist(),
        groups["i_list"].to_numpy(zero_copy_only=False), strict=True,
    ):
        rows = np.asarray(rows, dtype=np.int64)
        for when, sub in _effective_slices(provider, model, int(day), rows, ts_us, settings):
            price = group_price(provider, model, when, settings)
            if price.paid is None:
                if count_unpriced:
                    UNPRICED.labels(provider, model).inc(len(sub))
                continue
            counts, missing = leaf_counts(usage, sub, price.paid.units, provider, model)
            if missing.any():
                out.unit_missing[sub[missing]] = True
                if count_unpriced:
                    _count_missing(provider, model, price.paid.units, int(missing.sum()))
                sub, counts = sub[~missing], counts[~missing]
            out.paid[sub] = _cost_pico(price.paid, counts, total_input[sub])
            out.priced[sub] = True
            if price.list_ is not None:
                if price.list_.units != price.paid.units:
                    counts, _ = leaf_counts(usage, sub, price.list_.units, provider, model)
                out.listed[sub] = _cost_pico(price.list_, counts, total_input[sub])
                out.has_list[sub] = True
    return out


def _count_missing(provider: str, model: str, units: PricedUnits, rows: int) -> None:
    unit = ",".join(units.uncarried or units.required)
    UNPRICED_UNIT.labels(provider, model, unit).inc(rows)


@lru_cache(maxsize=4096)
def _intraday_boundaries(provider: str, model: str) -> tuple[int, ...]:
    """µs after UTC midnight where a time-of-day price (off-peak) may start or end; (0,) when
    prices change only by date (the catalog's start dates are UTC days)."""
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return (0,)
    conditional = info.prices if isinstance(info.prices, list) else []
    edges = {0}
    for price in conditional:
        constraint = getattr(price, "constraint", None)
        if isinstance(constraint, TimeOfDateConstraint):
            for t in (constraint.start_time, constraint.end_time):
                utc = dt.datetime.combine(dt.date(2000, 1, 1), t)
                if utc.tzinfo is not None:
                    utc = utc.astimezone(dt.UTC).replace(tzinfo=None)
                edges.add(((utc.hour * 60 + utc.minute) * 60 + utc.second) * 1_000_000
                          + utc.microsecond)
    return tuple(sorted(edges))


def _effective_slices(provider: str, model: str, day: int, rows: np.ndarray, ts_us: np.ndarray,
                      settings: Settings):
    """One slice per UTC day, or per stretch of the day with one price (off-peak prices)."""
    start_us = day * _US_PER_DAY
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    edges = np.asarray(_intraday_boundaries(provider, model), dtype=np.int64)
    if len(edges) == 1:
        yield epoch + dt.timedelta(microseconds=start_us), rows
        return
    stretch = np.searchsorted(edges, ts_us[rows] - start_us, side="right") - 1
    for i in np.unique(stretch):
        when = epoch + dt.timedelta(microseconds=start_us + int(edges[i]))
        yield when, rows[stretch == i]


def internal_mask(batch: pa.RecordBatch | pa.Table, settings: Settings) -> np.ndarray:
    """Own-model rows: provider_kind 'internal', or (kind missing) a provider listed internal."""
    kind = batch.column("provider_kind")
    by_name = pc.is_in(batch.column("provider"), pa.array(settings.providers.internal, pa.string()))
    resolved = pc.if_else(pc.is_null(kind), by_name, pc.equal(kind, "internal"))
    return np.asarray(pc.fill_null(resolved, False).to_numpy(zero_copy_only=False), dtype=bool)


def price_batch(
    batch: pa.RecordBatch | pa.Table, settings: Settings
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Price external rows: (cost, list_cost, pricing_status) aligned with `batch`.

    External rows: status 'priced', 'unpriced' or 'unpriced_unit' (both: cost 0, list_cost
    null). Internal rows get
    cost 0, list_cost null and status null: their cost comes from GPU allocation.
    """
    external = ~internal_mask(batch, settings)
    result = _price_rows(
        batch, batch.column("provider"), batch.column("model"), external, settings, True
    )
    unpriced = pc.if_else(pa.array(result.unit_missing), "unpriced_unit", "unpriced")
    status = pc.if_else(pa.array(external),
                        pc.if_else(pa.array(result.priced), "priced", unpriced),
                        pa.scalar(None, pa.string()))
    return (
        pico_to_money(result.paid),
        pico_to_money(result.listed, result.has_list),
        status,
    )


def shadow_models(batch: pa.RecordBatch | pa.Table, settings: Settings) -> pa.Array:
    """Reference external model per row: shadow_models[operation], then [gen_ai_operation]."""
    table = settings.providers.shadow_models
    default = settings.providers.shadow_model
    if not table:
        return pa.repeat(pa.scalar(default, pa.string()), len(batch))
    names = pa.array(list(table), pa.string())
    values = pa.array(list(table.values()), pa.string())
    by_op = pc.take(values, pc.index_in(batch.column("operation"), names))
    gen_ai = batch.column("gen_ai_operation") if "gen_ai_operation" in batch.column_names else None
    if gen_ai is not None:
        by_op = pc.coalesce(by_op, pc.take(values, pc.index_in(gen_ai, names)))
    return pc.fill_null(by_op, default)


def shadow_price_batch(batch: pa.RecordBatch | pa.Table, settings: Settings) -> pa.Array:
    """What the reference external model would charge (paid price) for each internal row.

    Null for external rows, when the reference model itself has no price, and when the row
    lacks the unit the reference bills in (an own TTS request without characters).
    """
    internal = internal_mask(batch, settings)
    providers = pa.repeat(pa.scalar(settings.providers.shadow_provider, pa.string()), len(batch))
    result = _price_rows(
        batch, providers, shadow_models(batch, settings), internal, settings, False
    )
    return pico_to_money(result.paid, internal & result.priced)
