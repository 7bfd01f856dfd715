"""The checked-in JSON Schema files match the Arrow schemas, and the codec honours them."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from costpipe.schemas import ALL_SCHEMAS, JSON, decode, encode_json, headers_for
from costpipe.schemas.jsonschema_gen import OUT_DIR, file_name, generate
from tests.strategies import NOW, rows

PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _validator(record: str) -> Draft202012Validator:
    path = OUT_DIR / file_name(record, ALL_SCHEMAS[record])
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_checked_in_files_are_up_to_date() -> None:
    expected = generate()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in OUT_DIR.glob("*.json")}
    assert sorted(on_disk) == sorted(expected), "run `python -m costpipe.schemas.jsonschema_gen`"
    for name, text in expected.items():
        assert on_disk[name] == text, \
            f"{name} is stale: run `python -m costpipe.schemas.jsonschema_gen`"


def test_request_event_schema_shape() -> None:
    schema = json.loads((OUT_DIR / "request_event.v2.json").read_text(encoding="utf-8"))
    props = schema["properties"]
    assert {"request_id", "timestamp", "operation", "provider", "model"} <= set(schema["required"])
    assert "cache_read_tokens" not in schema["required"]  # the JSON codec defaults it to 0
    assert props["timestamp"]["format"] == "date-time"
    assert props["input_tokens"]["x-otel-attribute"] == "gen_ai.usage.input_tokens"
    assert props["team"]["type"] == ["string", "null"]
    cost = json.loads((OUT_DIR / "cost_record.v2.json").read_text(encoding="utf-8"))
    assert cost["properties"]["cost"]["type"] == "string"
    assert "pattern" in cost["properties"]["cost"]


@pytest.mark.parametrize("record", sorted(ALL_SCHEMAS))
@PROFILE
@given(data=st.data())
def test_codec_accepts_events_valid_under_the_json_schema(
    record: str, data: st.DataObject
) -> None:
    schema = ALL_SCHEMAS[record]
    event = data.draw(rows(schema))
    if data.draw(st.booleans()):  # third parties may leave out nullable fields entirely
        event = {k: v for k, v in event.items() if v is not None}
    wire = encode_json(event)
    errors = list(_validator(record).iter_errors(json.loads(wire)))
    assert not errors, [e.message for e in errors]
    decoded = decode(wire, headers_for(JSON, record), schema, now=NOW)
    assert decoded.ok, decoded.rejections
    assert decoded.batch.num_rows == 1


def test_wrong_type_fails_both_schema_and_codec() -> None:
    event = {
        "request_id": "r-1", "timestamp": "2026-06-01T11:00:00Z", "operation": "chat",
        "provider": "openai", "model": "gpt-4o-mini", "input_tokens": "12",
        "output_tokens": 3,
    }
    assert not _validator("request_event").is_valid(event)
    decoded = decode(json.dumps(event).encode(), headers_for(JSON, "request_event"),
                     ALL_SCHEMAS["request_event"], now=NOW)
    assert [r.field for r in decoded.rejections] == ["input_tokens"]
    assert _validator("request_event").is_valid(event | {"input_tokens": 12})
