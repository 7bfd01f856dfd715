"""Dead letters: a message (or rows of it) that fails to decode or validate is kept, not lost.

Each rejection becomes one DEAD_LETTER row with the reason, the field, the source
topic/partition/offset and the original bytes (the whole message when it could not be decoded,
the offending row as JSON when only some rows were bad), so it can be fixed and replayed.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from costpipe.core.metrics import DEAD_LETTERS
from costpipe.schemas.codec import ARROW, Decoded, encode_arrow, headers_for, rows_as_json
from costpipe.schemas.records import DEAD_LETTER


def dead_letters(
    decoded: Decoded, original: bytes | None, raw_batch: pa.RecordBatch | None,
    topic: str, partition: int, offset: int,
) -> pa.RecordBatch | None:
    """DEAD_LETTER rows for the rejections of one decoded message, or None when it was clean."""
    if not decoded.rejections:
        return None
    now = dt.datetime.now(dt.UTC)
    row_bytes: dict[int, bytes] = {}
    rows = [r.row for r in decoded.rejections if r.row is not None]
    if rows and raw_batch is not None:
        rendered = rows_as_json(raw_batch, rows)
        row_bytes = dict(zip(sorted(set(rows)), rendered, strict=True))
    out = []
    for rejection in decoded.rejections:
        field = rejection.field or "<message>"
        DEAD_LETTERS.labels(topic, field).inc()
        out.append({
            "timestamp": now,
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "reason": str(rejection),
            "field": rejection.field,
            "encoding": decoded.encoding,
            "original": row_bytes.get(rejection.row, original or b"")
            if rejection.row is not None else (original or b""),
        })
    return pa.RecordBatch.from_pylist(out, schema=DEAD_LETTER)


def dead_letter_message(batch: pa.RecordBatch) -> tuple[bytes, list[tuple[str, bytes]]]:
    return encode_arrow(batch), headers_for(ARROW, "dead_letter")
