"""Request-event helpers shared by the proxy and the OTLP receiver.

Why: both edges build `REQUEST_EVENT` rows from partial information; filling ids, timestamps,
`provider_kind` and the non-null token defaults in one place keeps them identical.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

import pyarrow as pa

from costpipe.core.settings import Settings
from costpipe.schemas.records import REQUEST_EVENT

TOKEN_DEFAULTS: dict[str, int] = {
    "input_tokens": 0,
    "output_tokens": 0,
    "cache_read_tokens": 0,
    "cache_write_tokens": 0,
}
FIELDS = frozenset(REQUEST_EVENT.names)
_NAMES = tuple(REQUEST_EVENT.names)  # Schema.names builds a new list on every call


class EventSink(Protocol):
    """What the edges need from the shared producer (`collectors.producer.BatchingProducer`)."""

    def emit(self, event: Mapping[str, Any]) -> None: ...

    def emit_batch(self, batch: pa.RecordBatch | pa.Table) -> None: ...


def request_event(settings: Settings, **fields: Any) -> dict[str, Any]:
    """A complete REQUEST_EVENT dict: given fields plus ids, defaults and provider_kind."""
    event: dict[str, Any] = dict.fromkeys(_NAMES)
    event.update(TOKEN_DEFAULTS)
    event["request_id"] = uuid.uuid4().hex
    event["timestamp"] = dt.datetime.now(dt.UTC)
    event["status"] = "ok"
    event.update({k: v for k, v in fields.items() if k in FIELDS and v is not None})
    if event.get("provider") and not event.get("provider_kind"):
        event["provider_kind"] = (
            "internal" if settings.is_internal(event["provider"]) else "external"
        )
    return event
