"""Generate JSON Schema files for third-party producers from the Arrow schemas.

Why generated: `schemas/records.py` is the one source of truth; the checked-in
`schemas/jsonschema/<record>.v<N>.json` files are derived from it, and a test fails when they
drift. Regenerate with `python -m costpipe.schemas.jsonschema_gen`.

Mapping (what the JSON codec accepts): money as decimal strings, timestamps as ISO 8601
date-time strings, binary as hex, required = non-nullable fields that the codec does not
default, `description` from field metadata `doc`, the OpenTelemetry attribute from `otel`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from costpipe.core.settings import IngestSettings
from costpipe.schemas.codec import (
    FRACTION,
    JSON_DEFAULTS,
    NON_NEGATIVE,
    PERCENT,
    POSITIVE,
    TOKEN_FIELDS,
)
from costpipe.schemas.records import ALL_SCHEMAS, MAX_TOKENS, PROVIDER_KINDS, STATUSES

OUT_DIR = Path(__file__).parent / "jsonschema"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
BOUNDED_RECORDS = ("request_event", "gpu_sample")
ENUMS: dict[str, tuple[str, ...]] = {"provider_kind": PROVIDER_KINDS, "status": STATUSES}
INT_RANGES = {
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
}


def _decimal_pattern(type_: pa.Decimal128Type) -> str:
    whole = type_.precision - type_.scale
    return rf"^-?[0-9]{{1,{whole}}}(\.[0-9]{{1,{type_.scale}}})?$"


def _type_schema(field: pa.Field, record: str) -> dict[str, Any]:
    type_ = field.type
    if field.name in ENUMS:
        return {"type": "string", "enum": list(ENUMS[field.name])}
    if pa.types.is_string(type_):
        out: dict[str, Any] = {"type": "string"}
        if record in BOUNDED_RECORDS:  # what collectors and third parties send
            out["maxLength"] = IngestSettings().max_string_bytes
        if not field.nullable:
            out["minLength"] = 1
        return out
    if pa.types.is_integer(type_):
        low, high = INT_RANGES.get(type_, (None, None))
        if field.name in TOKEN_FIELDS:
            low, high = 0, MAX_TOKENS
        elif field.name in NON_NEGATIVE:
            low = 0
        return {"type": "integer", "minimum": low, "maximum": high}
    if pa.types.is_floating(type_):
        out = {"type": "number"}  # finite: JSON has no NaN or Infinity
        if field.name in NON_NEGATIVE:
            out["minimum"] = 0
        elif field.name in PERCENT:
            out.update(minimum=0, maximum=100)
        elif field.name in FRACTION:
            out.update(minimum=0, maximum=1)
        elif field.name in POSITIVE:
            out["exclusiveMinimum"] = 0
        return out
    if pa.types.is_decimal(type_):
        return {
            "type": "string",
            "pattern": _decimal_pattern(type_),
            "description_suffix": f"exact decimal string, up to {type_.scale} decimals (USD)",
        }
    if pa.types.is_timestamp(type_):
        return {"type": "string", "format": "date-time"}
    if pa.types.is_binary(type_):
        return {"type": "string", "contentEncoding": "base16", "pattern": "^([0-9a-fA-F]{2})*$"}
    raise TypeError(f"no JSON Schema mapping for Arrow type {type_} (field {field.name})")


def _property(field: pa.Field, record: str) -> dict[str, Any]:
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    prop = _type_schema(field, record)
    suffix = prop.pop("description_suffix", "")
    doc = meta.get("doc", "")
    description = "; ".join(part for part in (doc, suffix) if part)
    if "otel" in meta:
        prop["x-otel-attribute"] = meta["otel"]
        description = "; ".join(p for p in (description, f"OpenTelemetry: {meta['otel']}") if p)
    if description:
        prop["description"] = description
    if field.name in JSON_DEFAULTS:
        prop["default"] = JSON_DEFAULTS[field.name]
    if field.nullable:
        prop["type"] = [prop["type"], "null"]
        if "enum" in prop:
            prop["enum"] = [*prop["enum"], None]
    return prop


def json_schema(record: str, schema: pa.Schema) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) for one event of `schema`."""
    version = (schema.metadata or {}).get(b"costpipe.version", b"1").decode()
    required = [f.name for f in schema if not f.nullable and f.name not in JSON_DEFAULTS]
    return {
        "$schema": DRAFT,
        "$id": f"urn:costpipe:schema:{record}:v{version}",
        "title": f"costpipe {record} v{version}",
        "description": (
            f"One {record} event as a JSON object (one per Kafka message, header "
            "costpipe-encoding=json). Generated from schemas/records.py by "
            "`python -m costpipe.schemas.jsonschema_gen`; do not edit. Unknown keys are ignored."
        ),
        "type": "object",
        "properties": {field.name: _property(field, record) for field in schema},
        "required": required,
    }


def file_name(record: str, schema: pa.Schema) -> str:
    version = (schema.metadata or {}).get(b"costpipe.version", b"1").decode()
    return f"{record}.v{version}.json"


def render(record: str, schema: pa.Schema) -> str:
    return json.dumps(json_schema(record, schema), indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> file text for every schema in ALL_SCHEMAS."""
    return {file_name(r, s): render(r, s) for r, s in ALL_SCHEMAS.items()}


def main(out_dir: Path = OUT_DIR) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in generate().items():
        (out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
