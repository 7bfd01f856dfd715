"""The price catalog for external requests and the shadow price for internal ones.

Rules (documented here because the simulator's expectation imports this module):
- `input_tokens` is the total prompt size *including* cache reads/writes (OpenTelemetry GenAI and
  genai-prices semantics); uncached input = input - cache_read - cache_write, floored at 0.
- List prices come from genai-prices at the request's own timestamp (effective-dated), with its
  cliff tiers (a tier's price applies to all tokens once total input exceeds the tier start).
  A missing cache price means those tokens pay the input price.
- `settings.pricing.overrides` add a model or replace the price we pay (contract price);
  `settings.pricing.discounts[provider]` scale the paid per-token price by (1 - discount).
  `list_cost` is the catalog price (or the override when the catalog lacks the model).
- A model found nowhere is `unpriced`: cost 0, list_cost null, counted in
  `costpipe_unpriced_requests_total` - never silently priced.
- Money is exact: per-token prices in pico-dollars are integers for every real price list (<= 6
  decimals per Mtok); a group whose price is not is computed with Decimal per row, rounded
  half-even to the pico-dollar.

Vectorised: rows are grouped by (provider, model, UTC day); each group resolves its prices once
(cached) and costs are int64 numpy arithmetic over token columns.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from costpipe.core.metrics import UNPRICED
from costpipe.core.money import PICO, pico_to_money, to_pico
from costpipe.core.settings import PriceOverride, Settings

MTOK = Decimal(1_000_000)
KINDS = ("input", "output", "cache_read", "cache_write")
_US_PER_DAY = 86_400 * 1_000_000
_MAX_PICO_PER_TOKEN = 10**10  # $10,000 per Mtok; keeps int64 sums far from overflow


@dataclass(frozen=True)
class PriceList:
    """Per-Mtok prices (input, output, cache_read, cache_write) for each cliff tier segment.

    `starts[i]` is the input-token count above which segment i+1 applies; segment 0 is base.
    """

    starts: tuple[int, ...]
    segments: tuple[tuple[Decimal, Decimal, Decimal, Decimal], ...]

    def scaled(self, factor: Decimal) -> PriceList:
        return PriceList(self.starts, tuple(tuple(p * factor for p in s) for s in self.segments))

    def pico_per_token(self) -> np.ndarray | None:
        """int64 [segment, kind] pico-dollars per token, or None when not exactly integral."""
        table = np.zeros((len(self.segments), 4), dtype=np.int64)
        for i, segment in enumerate(self.segments):
            for j, per_mtok in enumerate(segment):
                pico = per_mtok * PICO / MTOK
                if pico != pico.to_integral_value() or pico > _MAX_PICO_PER_TOKEN:
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


@lru_cache(maxsize=4096)
def catalog_prices(provider: str, model: str, when: dt.datetime) -> PriceList | None:
    """genai-prices for (provider, model) at `when`, or None when the catalog lacks it."""
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    prices = info.get_prices(when)
    raw = [getattr(prices, f"{kind}_mtok", None) for kind in KINDS]
    starts = sorted({t.start for p in raw if isinstance(p, TieredPrices) for t in p.tiers})
    segments = []
    for probe in [0, *[s + 1 for s in starts]]:
        inp = _tier_price(raw[0], probe) or Decimal(0)
        out = _tier_price(raw[1], probe) or Decimal(0)
        cache_read = _tier_price(raw[2], probe)
        cache_write = _tier_price(raw[3], probe)
        segments.append((inp, out, inp if cache_read is None else cache_read,
                         inp if cache_write is None else cache_write))
    return PriceList(tuple(starts), tuple(segments))


def _override_prices(override: PriceOverride) -> PriceList:
    inp = override.input_per_mtok
    return PriceList((), ((
        inp, override.output_per_mtok,
        inp if override.cache_read_per_mtok is None else override.cache_read_per_mtok,
        inp if override.cache_write_per_mtok is None else override.cache_write_per_mtok,
    ),))


def _overrides(settings: Settings) -> dict[tuple[str, str], PriceOverride]:
    return {(o.provider, o.model): o for o in settings.pricing.overrides}


def group_price(provider: str, model: str, when: dt.datetime, settings: Settings) -> GroupPrice:
    listed = catalog_prices(provider, model, when)
    override = _overrides(settings).get((provider, model))
    paid = _override_prices(override) if override is not None else listed
    if listed is None:
        listed = paid
    discount = settings.pricing.discounts.get(provider)
    if paid is not None and discount:
        paid = paid.scaled(Decimal(1) - discount)
    return GroupPrice(paid, listed)


# ------------------------------------------------------------------ vectorised core


def _token_matrix(batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """[rows, 4] int64 token counts by price kind, and total input (for tier choice)."""
    inp = pc.fill_null(batch.column("input_tokens"), 0).to_numpy().astype(np.int64)
    out = pc.fill_null(batch.column("output_tokens"), 0).to_numpy().astype(np.int64)
    cr = pc.fill_null(batch.column("cache_read_tokens"), 0).to_numpy().astype(np.int64)
    cw = pc.fill_null(batch.column("cache_write_tokens"), 0).to_numpy().astype(np.int64)
    uncached = np.maximum(inp - cr - cw, 0)
    return np.stack([uncached, out, cr, cw], axis=1), inp


def _cost_pico(prices: PriceList, tokens: np.ndarray, total_input: np.ndarray) -> np.ndarray:
    segment = np.searchsorted(np.asarray(prices.starts, dtype=np.int64), total_input, side="left")
    table = prices.pico_per_token()
    if table is not None:
        return np.einsum("ij,ij->i", tokens, table[segment])
    out = np.empty(len(tokens), dtype=np.int64)  # rare: a price with > 6 decimals per Mtok
    for row in range(len(tokens)):
        seg = prices.segments[int(segment[row])]
        pairs = zip(tokens[row], seg, strict=True)
        exact = sum((Decimal(int(t)) * p / MTOK for t, p in pairs), Decimal(0))
        out[row] = to_pico(exact)
    return out


def _days(batch: pa.RecordBatch | pa.Table) -> np.ndarray:
    ts = batch.column("timestamp").cast(pa.int64()).to_numpy()
    return ts // _US_PER_DAY


def _price_rows(
    batch: pa.RecordBatch | pa.Table,
    providers: pa.Array,
    models: pa.Array,
    mask: np.ndarray,
    settings: Settings,
    count_unpriced: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(paid pico, list pico, priced?, listed?) for rows where mask is true."""
    n = len(batch)
    paid = np.zeros(n, dtype=np.int64)
    listed = np.zeros(n, dtype=np.int64)
    priced = np.zeros(n, dtype=bool)
    has_list = np.zeros(n, dtype=bool)
    if not mask.any():
        return paid, listed, priced, has_list
    tokens, total_input = _token_matrix(batch)
    days = _days(batch)
    keys = pa.table({
        "p": providers, "m": models, "d": pa.array(days), "i": pa.array(np.arange(n)),
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
            paid[sub] = _cost_pico(price.paid, tokens[sub], total_input[sub])
            priced[sub] = True
            if price.list_ is not None:
                listed[sub] = _cost_pico(price.list_, tokens[sub], total_input[sub])
                has_list[sub] = True
    return paid, listed, priced, has_list


def _effective_slices(provider: str, model: str, day: int, rows: np.ndarray, ts_us: np.ndarray,
                      settings: Settings):
    """Usually one slice per day; if the catalog price changes within the day, one per instant."""
    start = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=day * _US_PER_DAY)
    end = start + dt.timedelta(days=1, microseconds=-1)
    if catalog_prices(provider, model, start) == catalog_prices(provider, model, end):
        yield start, rows
        return
    for instant in np.unique(ts_us[rows]):
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(instant))
        yield when, rows[ts_us[rows] == instant]


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

    External rows: status 'priced' or 'unpriced' (cost 0, list_cost null). Internal rows get
    cost 0, list_cost null and status null: their cost comes from GPU allocation.
    """
    external = ~internal_mask(batch, settings)
    paid, listed, priced, has_list = _price_rows(
        batch, batch.column("provider"), batch.column("model"), external, settings, True
    )
    status = pc.if_else(pa.array(external), pc.if_else(pa.array(priced), "priced", "unpriced"),
                        pa.scalar(None, pa.string()))
    return (
        pico_to_money(paid),
        pico_to_money(listed, has_list),
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

    Null for external rows and when the reference model itself has no price.
    """
    internal = internal_mask(batch, settings)
    providers = pa.repeat(pa.scalar(settings.providers.shadow_provider, pa.string()), len(batch))
    paid, _, priced, _ = _price_rows(
        batch, providers, shadow_models(batch, settings), internal, settings, False
    )
    return pico_to_money(paid, internal & priced)
