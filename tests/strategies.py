"""Hypothesis strategies derived from the Arrow schemas (`from tests.strategies import rows`).

Why derived: a field added to `schemas/records.py` is covered by every property test at once.
`rows(schema)` draws one valid event (a dict) that the codec accepts at `NOW`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from costpipe.core.settings import IngestSettings
from costpipe.schemas.codec import (
    COUNT_UNITS,
    FRACTION,
    NON_NEGATIVE,
    PARTS,
    PERCENT,
    POSITIVE,
    SECONDS_UNITS,
    TOKEN_FIELDS,
)
from costpipe.schemas.records import MAX_AUDIO_SECONDS, MAX_TOKENS, PROVIDER_KINDS, STATUSES

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
MAX_EVENT_AGE = dt.timedelta(days=IngestSettings().max_age_days)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


def value(field: pa.Field) -> st.SearchStrategy[Any]:
    """A valid non-null value for one field (honours the codec's validation rules)."""
    type_, name = field.type, field.name
    if name == "provider_kind":
        return st.sampled_from(PROVIDER_KINDS)
    if name == "status":
        return st.sampled_from(STATUSES)
    if name in TOKEN_FIELDS or name in COUNT_UNITS:
        return st.integers(0, MAX_TOKENS)
    if name in SECONDS_UNITS:
        return st.floats(0, MAX_AUDIO_SECONDS, allow_nan=False)
    if name in NON_NEGATIVE:
        if pa.types.is_integer(type_):
            return st.integers(0, 2**62)
        return st.floats(0, 1e7, allow_nan=False)
    if name in PERCENT:
        return st.floats(0, 100, allow_nan=False)
    if name in FRACTION:
        return st.floats(0, 1, allow_nan=False)
    if name in POSITIVE:
        return st.floats(0.001, 3600, allow_nan=False)
    if pa.types.is_string(type_):
        return TEXT.filter(bool) if not field.nullable else TEXT
    if pa.types.is_int32(type_):
        return st.integers(-(2**31), 2**31 - 1)
    if pa.types.is_integer(type_):
        return st.integers(-(2**63), 2**63 - 1)
    if pa.types.is_floating(type_):
        return st.floats(allow_nan=False, allow_infinity=False)
    if pa.types.is_decimal(type_):
        return st.decimals(-(10**12), 10**12, places=12, allow_nan=False, allow_infinity=False)
    if pa.types.is_timestamp(type_):
        return st.datetimes(
            min_value=(NOW - MAX_EVENT_AGE + dt.timedelta(days=1)).replace(tzinfo=None),
            max_value=NOW.replace(tzinfo=None),
            timezones=st.just(dt.UTC),
        )
    if pa.types.is_binary(type_):
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {type_}")


def rows(schema: pa.Schema) -> st.SearchStrategy[dict[str, Any]]:
    """One valid event of `schema`; nullable fields may be None."""
    parts = {
        field.name: (st.none() | value(field)) if field.nullable else value(field)
        for field in schema
    }
    drawn = st.fixed_dictionaries(parts)
    if "cache_read_tokens" not in schema.names:
        return drawn
    return drawn.map(_consistent_tokens)


def _consistent_tokens(row: dict[str, Any]) -> dict[str, Any]:
    """Cached tokens are part of the prompt: cache_read + cache_write <= input."""
    total = row["input_tokens"]
    row["cache_read_tokens"] = min(row["cache_read_tokens"], total)
    row["cache_write_tokens"] = min(row["cache_write_tokens"], total - row["cache_read_tokens"])
    for parent, parts in PARTS.items():  # parents before their parts' own parts
        room = row.get(parent) or 0
        for name in parts:
            if row.get(name) is not None:
                row[name] = min(row[name], room)
                room -= row[name]
    return row
