"""Billed usage units: which of the price catalog's units a request carries, and how to count them.

The catalog (genai-prices) prices a model in units of its unit registry: tokens by direction,
modality and cache use, characters, audio seconds, requests, tool calls, pages... Units nest
(`input_audio_tokens` is part of `input_tokens`); a price applies to the units left after every
more specific *priced* unit took its share (the registry's own leaf rule), so a model without an
audio price bills audio tokens as input tokens, and one with it bills them once.

What a request reports, by registry usage key:
- the four token columns, always (0 when absent);
- `BILLED_UNITS` of the request event (null = not reported; as a refinement it counts as 0);
- `audio_seconds` = input + output audio seconds (the registry's parent of both);
- `requests` = 1.
Audio seconds are counted in whole milliseconds (rounded half-even) so money stays integral.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from genai_prices.data_units import unit_data
from genai_prices.units import UnitDef, UnitRegistry

from costpipe.schemas.records import BILLED_UNITS, SECONDS_UNITS

TOKEN_COLUMNS: Final = ("input_tokens", "output_tokens", "cache_read_tokens",
                        "cache_write_tokens")
SECONDS: Final = SECONDS_UNITS  # input, output
DERIVED: Final[dict[str, tuple[str, ...]]] = {"audio_seconds": SECONDS}
ALWAYS_ONE: Final = ("requests",)
# A priced unit no event carries counts as 0 when it is an add-on to a price we do carry (a web
# search on top of tokens); when it is the model's only way to bill, the request is unpriced_unit.
ADD_ON_FAMILIES: Final = frozenset({"tool_calls", "requests"})
CARRIED: Final = (*TOKEN_COLUMNS, *BILLED_UNITS, *DERIVED, *ALWAYS_ONE)
MS_PER_SECOND: Final = 1000
# Minimum billed quantity per request that genai-prices applies in code, not in its data
# (0.2.3, `ModelInfo.calc_price`): Groq bills Whisper at least 10 s of audio per request.
MINIMUM_BILLED: Final[dict[tuple[str, str], tuple[str, float]]] = {
    ("groq", "whisper-large-v3"): ("input_audio_seconds", 10.0),
    ("groq", "whisper-large-v3-turbo"): ("input_audio_seconds", 10.0),
}


@lru_cache(maxsize=1)
def registry() -> UnitRegistry:
    return UnitRegistry(unit_data)


def unit_for_price_key(price_key: str) -> UnitDef | None:
    try:
        return registry().unit_for_price_key(price_key)
    except KeyError:
        return None


def is_descendant(ancestor: UnitDef, unit: UnitDef) -> bool:
    return ancestor is not unit and ancestor.dimensions.items() <= unit.dimensions.items()


def resolution(usage_key: str) -> int:
    """Counts per catalog quantity step: 1000 for seconds (counted in ms), else 1."""
    return MS_PER_SECOND if usage_key in SECONDS or usage_key in DERIVED else 1


@dataclass(frozen=True)
class PricedUnits:
    """The units one price list bills, most specific first, and what a request must report."""

    units: tuple[UnitDef, ...]
    required: tuple[str, ...]  # carried root units: unreported on a row -> unpriced_unit
    uncarried: tuple[str, ...]  # root units no event carries: every row is unpriced_unit

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(u.usage_key for u in self.units)


def priced_units(price_keys: Mapping[str, object]) -> PricedUnits:
    """Split a model's stated prices (price key -> price) into carried units and gaps."""
    stated = [u for key in price_keys if (u := unit_for_price_key(key)) is not None]
    roots = [u for u in stated if not any(is_descendant(a, u) for a in stated)]
    carried = sorted((u for u in stated if u.usage_key in CARRIED),
                     key=lambda u: (-len(u.dimensions), u.usage_key))
    uncarried = tuple(u.usage_key for u in roots if u.usage_key not in CARRIED
                      and u.dimensions.get("family") not in ADD_ON_FAMILIES)
    required = tuple(u.usage_key for u in roots if u.usage_key in BILLED_UNITS
                     or u.usage_key in DERIVED)
    return PricedUnits(tuple(carried), required, uncarried)


class BatchUsage:
    """The carried units of one batch as numpy columns, each read once, however many
    (provider, model) groups the batch holds."""

    def __init__(self, batch: pa.RecordBatch | pa.Table) -> None:
        self.batch = batch
        self.rows = len(batch)
        self.names = frozenset(batch.schema.names)
        self._values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._failed: np.ndarray | None = None

    def values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(int64 counts at `resolution(key)`, reported?) of one carried unit, every row."""
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = self._read(key)
        return found

    def _read(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        n = self.rows
        if key in ALWAYS_ONE:  # a failed call is not billed per request either
            return (~self.failed()).astype(np.int64), np.ones(n, dtype=bool)
        if key in DERIVED:
            parts = [self.values(part) for part in DERIVED[key]]
            return (np.sum([p[0] for p in parts], axis=0),
                    np.logical_or.reduce([p[1] for p in parts]))
        if key not in self.names:
            return np.zeros(n, dtype=np.int64), np.full(n, key in TOKEN_COLUMNS)
        column = self.batch.column(key)
        if key in TOKEN_COLUMNS:
            return pc.fill_null(column, 0).to_numpy().astype(np.int64), np.ones(n, dtype=bool)
        values = pc.fill_null(column, 0).to_numpy()
        scale = resolution(key)
        counts = (values.astype(np.int64) if scale == 1
                  else np.rint(values.astype(np.float64) * scale).astype(np.int64))
        return counts, np.asarray(pc.is_valid(column).to_numpy(zero_copy_only=False), dtype=bool)

    def failed(self) -> np.ndarray:
        """Rows of failed calls: they bill nothing and may report no usage."""
        if self._failed is None:
            if "status" in self.names:
                failed = pc.fill_null(pc.equal(self.batch.column("status"), "error"), False)
                self._failed = np.asarray(failed.to_numpy(zero_copy_only=False), dtype=bool)
            else:
                self._failed = np.zeros(self.rows, dtype=bool)
        return self._failed


def _minimum_billed(usage: BatchUsage, rows: np.ndarray, provider: str, model: str
                    ) -> dict[str, np.ndarray]:
    """Counts replaced by a provider's minimum billed audio, as genai-prices does: the
    request's audio seconds (input + output), raised to the minimum when non-zero, billed as
    input audio."""
    rule = MINIMUM_BILLED.get((provider, model))
    if rule is None:
        return {}
    name, minimum = rule
    total = usage.values("audio_seconds")[0][rows]
    raised = np.where(total > 0, np.maximum(total, round(minimum * MS_PER_SECOND)), total)
    return {name: raised, "audio_seconds": raised, SECONDS[1]: np.zeros_like(raised)}


def leaf_counts(usage: BatchUsage, rows: np.ndarray, units: PricedUnits, provider: str = "",
                model: str = "") -> tuple[np.ndarray, np.ndarray]:
    """([rows, units] int64 counts each price applies to, rows missing a required unit).

    Leaf rule: a unit's count less the leaf counts of its priced descendants, floored at 0.
    """
    replaced = _minimum_billed(usage, rows, provider, model)
    leaves = np.zeros((len(rows), len(units.units)), dtype=np.int64)
    for i, unit in enumerate(units.units):
        value = replaced.get(unit.usage_key)
        if value is None:
            value = usage.values(unit.usage_key)[0][rows]
        below = [j for j, d in enumerate(units.units[:i]) if is_descendant(unit, d)]
        if below:
            value = value - leaves[:, below].sum(axis=1)
        leaves[:, i] = np.maximum(value, 0)
    missing = np.full(len(rows), bool(units.uncarried))
    for key in units.required:
        missing |= ~usage.values(key)[1][rows]
    if missing.any():
        missing &= ~usage.failed()[rows]
    return leaves, missing
