"""Contracts shared by every stage: Arrow schemas per topic, the envelope protocol (headers)
and the codec."""

from costpipe.core.money import MONEY
from costpipe.schemas.codec import Decoded, Rejection, decode, encode_arrow, encode_json
from costpipe.schemas.envelope import (
    ARROW,
    ENCODING_HEADER,
    JSON,
    RECORD_HEADER,
    header_value,
    headers_for,
)
from costpipe.schemas.records import (
    ALERT,
    ALL_SCHEMAS,
    COST_RECORD,
    DEAD_LETTER,
    GPU_SAMPLE,
    REQUEST_EVENT,
    WINDOW_AGGREGATE,
)

__all__ = [
    "ALERT",
    "ALL_SCHEMAS",
    "ARROW",
    "COST_RECORD",
    "DEAD_LETTER",
    "ENCODING_HEADER",
    "GPU_SAMPLE",
    "JSON",
    "MONEY",
    "RECORD_HEADER",
    "REQUEST_EVENT",
    "WINDOW_AGGREGATE",
    "Decoded",
    "Rejection",
    "decode",
    "encode_arrow",
    "encode_json",
    "header_value",
    "headers_for",
]
