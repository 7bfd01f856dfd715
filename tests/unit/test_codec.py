"""Envelope codec properties: both encodings round-trip every schema; bad input names the field.

Strategies come from `tests/strategies.py`, derived from the Arrow schemas themselves, so a
field added to `schemas/records.py` is covered without touching this file.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costpipe.schemas import (
    ALL_SCHEMAS,
    ARROW,
    JSON,
    decode,
    encode_arrow,
    encode_json,
    headers_for,
)
from costpipe.schemas.codec import ARROW_EOS
from costpipe.schemas.envelope import ENCODING_HEADER
from tests.strategies import NOW, rows

SCHEMA_NAMES = sorted(ALL_SCHEMAS)
PROFILE = settings(max_examples=30, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


def _same(decoded: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected, strict=True):
        for name, value in want.items():
            assert got[name] == value, name


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_arrow_round_trip(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    events = data.draw(st.lists(rows(schema), min_size=1, max_size=20))
    batch = pa.RecordBatch.from_pylist(events, schema=schema)
    result = decode(encode_arrow(batch), headers_for(ARROW, name), schema, now=NOW)
    assert result.ok, result.rejections
    assert result.encoding == ARROW
    assert result.batch.schema.equals(schema)
    _same(result.batch.to_pylist(), events)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_json_round_trip(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    event = data.draw(rows(schema))
    result = decode(encode_json(event), headers_for(JSON, name), schema, now=NOW)
    assert result.ok, result.rejections
    assert result.encoding == JSON
    _same(result.batch.to_pylist(), [event])


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_json_missing_required_field_is_named(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    event = data.draw(rows(schema))
    defaults = {"cache_read_tokens", "cache_write_tokens", "status"}  # JSON fills these in
    required = [f.name for f in schema if not f.nullable and f.name not in defaults]
    missing = data.draw(st.sampled_from(required))
    del event[missing]
    result = decode(encode_json(event), headers_for(JSON, name), schema, now=NOW)
    assert result.batch.num_rows == 0
    assert [r.field for r in result.rejections] == [missing]
    assert "required" in str(result.rejections[0])


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_json_wrong_type_is_named(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    event = data.draw(rows(schema))
    wrong = data.draw(st.sampled_from(schema.names))
    event[wrong] = data.draw(st.sampled_from([True, [1], {"a": 1}]))
    result = decode(encode_json(event), headers_for(JSON, name), schema, now=NOW)
    assert result.batch.num_rows == 0
    assert [r.field for r in result.rejections] == [wrong]
    assert str(result.rejections[0]).startswith(f"field {wrong!r}: value ")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_arrow_missing_required_column_is_named(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    events = data.draw(st.lists(rows(schema), min_size=1, max_size=5))
    missing = data.draw(st.sampled_from([f.name for f in schema if not f.nullable]))
    batch = pa.RecordBatch.from_pylist(events, schema=schema)
    batch = batch.drop_columns([missing])
    result = decode(encode_arrow(batch), headers_for(ARROW, name), schema, now=NOW)
    assert result.batch.num_rows == 0
    assert [r.field for r in result.rejections] == [missing]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@PROFILE
@given(data=st.data())
def test_arrow_wrong_column_type_is_named(name: str, data: st.DataObject) -> None:
    schema = ALL_SCHEMAS[name]
    events = data.draw(st.lists(rows(schema), min_size=1, max_size=5))
    candidates = [f.name for f in schema if not pa.types.is_string(f.type)
                  and not pa.types.is_binary(f.type)]
    wrong = data.draw(st.sampled_from(candidates))
    batch = pa.RecordBatch.from_pylist(events, schema=schema)
    index = batch.schema.get_field_index(wrong)
    batch = batch.set_column(index, wrong, pa.array(["not a value"] * batch.num_rows))
    result = decode(encode_arrow(batch), headers_for(ARROW, name), schema, now=NOW)
    assert result.batch.num_rows == 0
    assert {r.field for r in result.rejections} == {wrong}
    assert sorted(r.row for r in result.rejections) == list(range(batch.num_rows))
    assert "cannot be represented" in result.rejections[0].reason


def _request() -> dict[str, Any]:
    return {
        "request_id": "r-1", "timestamp": NOW, "operation": "chat_support",
        "provider": "openai", "provider_kind": "external", "model": "gpt-4o-mini",
        "input_tokens": 120, "output_tokens": 30, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "status": "ok",
    }


def test_arrow_null_in_required_field_rejects_only_that_row() -> None:
    schema = ALL_SCHEMAS["request_event"]
    good = _request()
    bad = dict(good, input_tokens=None)
    index = schema.get_field_index("input_tokens")
    relaxed = schema.set(index, schema.field(index).with_nullable(True))
    batch = pa.RecordBatch.from_pylist([good, bad, good], schema=relaxed)
    result = decode(encode_arrow(batch), headers_for(ARROW, "request_event"), schema, now=NOW)
    assert result.batch.num_rows == 2
    (rejection,) = result.rejections
    assert (rejection.field, rejection.row, rejection.value) == ("input_tokens", 1, None)


def test_bad_value_names_field_value_and_rule() -> None:
    schema = ALL_SCHEMAS["request_event"]
    event = dict(_request(), provider_kind="partner", output_tokens=-3)
    result = decode(encode_json(event), headers_for(JSON, "request_event"), schema, now=NOW)
    texts = sorted(str(r) for r in result.rejections)
    assert result.batch.num_rows == 0
    assert texts == [
        "field 'output_tokens': value -3 must be between 0 and 100000000",
        "field 'provider_kind': value 'partner' must be one of internal, external",
    ]


@pytest.mark.parametrize(
    ("value", "headers", "expected"),
    [
        (None, None, "empty message"),
        (b"", headers_for(JSON, "request_event"), "empty message"),
        (b"{not json", headers_for(JSON, "request_event"), "is not valid JSON"),
        (b"[1, 2]", headers_for(JSON, "request_event"), "must be an object"),
        (b"\x00garbage", headers_for(ARROW, "request_event"), "truncated Arrow stream"),
        (b"\x00garbage" + ARROW_EOS, headers_for(ARROW, "request_event"),
         "undecodable arrow message"),
        (b"{}", [(ENCODING_HEADER, b"avro")], "must be 'arrow' or 'json'"),
    ],
)
def test_garbage_never_raises(value: bytes | None, headers: Any, expected: str) -> None:
    result = decode(value, headers, ALL_SCHEMAS["request_event"], now=NOW)
    assert result.batch.num_rows == 0
    assert expected in str(result.rejections[0])


def test_trusted_topics_skip_value_rules_only_when_the_schema_matches_exactly():
    """The worker's own topics skip the value rules; a foreign-shaped batch is still checked."""
    from costpipe.schemas.codec import conform
    from costpipe.schemas.records import COST_RECORD

    row = {name: None for name in COST_RECORD.names}
    row.update({"record_id": "r1", "record_type": "request", "timestamp": NOW,
                "operation": "text", "cost": 0, "list_cost": 0, "shadow_cost": 0,
                "provider": "openai", "provider_kind": "external", "model": "m",
                "input_tokens": -5, "output_tokens": 1, "cache_read_tokens": 0,
                "cache_write_tokens": 0, "pricing_status": "priced",
                "status": "ok"})
    exact = conform(pa.Table.from_pylist([row], schema=COST_RECORD), COST_RECORD)
    headers = headers_for("arrow", "cost_record")
    trusted = decode(encode_arrow(exact), headers, COST_RECORD, trusted=True)
    assert trusted.ok and trusted.batch.num_rows == 1
    assert not decode(encode_arrow(exact), headers, COST_RECORD).ok  # untrusted: checked
    relaxed = pa.Table.from_pylist([row])  # inferred types: not the contract's schema
    assert not decode(encode_arrow(relaxed), headers, COST_RECORD, trusted=True).ok


def test_envelopes_are_bounded_by_rows_and_by_bytes_and_keep_every_row_in_order():
    from costpipe.schemas.codec import encode_envelopes

    table = pa.table({"i": list(range(10_000)), "s": ["x" * 100] * 10_000})
    by_rows = list(encode_envelopes(table, 3_000, 8 * 1024 * 1024))
    assert [rows for _, rows in by_rows] == [3_000, 3_000, 3_000, 1_000]
    small = list(encode_envelopes(table, 10_000, max_bytes=200_000))
    assert all(len(payload) <= 200_000 for payload, _ in small) and len(small) > 4
    back = pa.concat_tables(pa.ipc.open_stream(p).read_all() for p, _ in small)
    assert back.column("i").to_pylist() == list(range(10_000))


# ---------------------------------------------------------------- hostile input (hardening)


def _requests(n: int = 3, **overrides: Any) -> list[dict[str, Any]]:
    return [{**_request(), "request_id": f"r-{i}", **overrides} for i in range(n)]


def test_one_bad_value_in_a_float_token_column_refuses_only_its_row() -> None:
    schema = ALL_SCHEMAS["request_event"]
    batch = pa.RecordBatch.from_pylist(_requests(3), schema=schema)
    index = schema.get_field_index("output_tokens")
    batch = batch.set_column(index, "output_tokens", pa.array([30.0, 1e30, 7.0]))
    result = decode(encode_arrow(batch), headers_for(ARROW, "request_event"), schema, now=NOW)
    assert result.batch.column("request_id").to_pylist() == ["r-0", "r-2"]
    assert result.batch.column("output_tokens").to_pylist() == [30, 7]
    assert [(r.field, r.row) for r in result.rejections] == [("output_tokens", 1)]


def test_a_truncated_arrow_envelope_is_refused_never_silently_empty() -> None:
    schema = ALL_SCHEMAS["request_event"]
    whole = encode_arrow(pa.RecordBatch.from_pylist(_requests(3), schema=schema))
    for cut in (len(whole) - 8, len(whole) // 2, 200):
        result = decode(whole[:cut], headers_for(ARROW, "request_event"), schema, now=NOW)
        assert result.batch.num_rows == 0 and result.rejections, cut
        assert result.rejections[0].row is None


@pytest.mark.parametrize(("overrides", "field"), [
    ({"latency_ms": float("inf")}, "latency_ms"),
    ({"ttft_ms": float("nan")}, "ttft_ms"),
    ({"cache_read_tokens": 121}, "cache_read_tokens"),
    ({"cache_read_tokens": 100, "cache_write_tokens": 21}, "cache_read_tokens"),
    ({"model": "m" * 10_000}, "model"),
    ({"team": "t" * 257}, "team"),
    ({"timestamp": NOW + dt.timedelta(minutes=6)}, "timestamp"),
    ({"timestamp": NOW - dt.timedelta(days=401)}, "timestamp"),
])
def test_values_that_must_be_refused_are_refused_with_a_reason(
        overrides: dict[str, Any], field: str) -> None:
    schema = ALL_SCHEMAS["request_event"]
    rows_ = _requests(2)
    rows_[1].update(overrides)
    batch = pa.RecordBatch.from_pylist(rows_, schema=schema)
    result = decode(encode_arrow(batch), headers_for(ARROW, "request_event"), schema, now=NOW)
    assert result.batch.column("request_id").to_pylist() == ["r-0"]
    assert [(r.field, r.row) for r in result.rejections] == [(field, 1)]
    assert result.rejections[0].reason


def test_json_infinity_and_nan_are_refused() -> None:
    for text in ('"latency_ms": Infinity', '"latency_ms": NaN', '"ttft_ms": -Infinity'):
        event = encode_json({**_request(), "timestamp": NOW.isoformat()})[:-1] + \
            f", {text}}}".encode()
        result = decode(event, headers_for(JSON, "request_event"), now=NOW)
        assert result.batch.num_rows == 0, text
        assert "finite" in str(result.rejections[0]), result.rejections


def test_a_gpu_sample_with_nan_or_out_of_range_readings_is_refused() -> None:
    schema = ALL_SCHEMAS["gpu_sample"]
    good = {"timestamp": NOW, "host": "h", "gpu_uuid": "GPU-1", "gpu_index": 0,
            "utilization_pct": 50.0, "power_w": 200.0, "energy_mj": 10, "interval_s": 1.0}
    bad = [{"utilization_pct": float("nan")}, {"utilization_pct": 101.0},
           {"power_w": float("inf")}, {"power_w": -1.0}, {"interval_s": 0.0},
           {"energy_mj": -5}, {"temperature_c": float("nan")}]
    batch = pa.RecordBatch.from_pylist([good] + [{**good, **b} for b in bad], schema=schema)
    result = decode(encode_arrow(batch), headers_for(ARROW, "gpu_sample"), schema, now=NOW)
    assert result.batch.num_rows == 1
    assert sorted(r.row for r in result.rejections) == list(range(1, len(bad) + 1))
