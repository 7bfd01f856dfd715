"""Dead letters: what fails to decode, validate or process is kept with the reason, not lost.

Each bad message becomes one DEAD_LETTER row with the whole original bytes; each bad row of an
otherwise good envelope becomes one row holding that row as a JSON event (encoding `json`), so
`costpipe deadletter replay` can send it back once the cause is fixed. Duplicated request ids
are dead-lettered the same way (reason says where the first copy is), and a message that keeps
failing in a stage (`guarded`) after `ingest.poison_retries` retries goes here with the error,
so the stream moves on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

from costpipe.core.metrics import DEAD_LETTERS
from costpipe.schemas.codec import Decoded, encode_arrow, encode_json, rows_as_json
from costpipe.schemas.envelope import ARROW, JSON, headers_for
from costpipe.schemas.records import DEAD_LETTER

log = logging.getLogger(__name__)
PROCESSING = "<processing>"  # the field of a dead letter for a message a stage failed on


def _letter(topic: str, partition: int, offset: int, reason: str, field: str | None,
            encoding: str, original: bytes) -> dict[str, Any]:
    DEAD_LETTERS.labels(topic, field or "<message>").inc()
    return {"timestamp": dt.datetime.now(dt.UTC), "source_topic": topic,
            "source_partition": partition, "source_offset": offset, "reason": reason,
            "field": field, "encoding": encoding, "original": original}


def dead_letters(
    decoded: Decoded, original: bytes | None, raw_batch: pa.RecordBatch | None,
    topic: str, partition: int, offset: int,
) -> pa.RecordBatch | None:
    """DEAD_LETTER rows for the rejections of one decoded message, or None when it was clean."""
    if not decoded.rejections:
        return None
    by_row: dict[int, list[Any]] = {}
    out = []
    for rejection in decoded.rejections:
        if rejection.row is None:
            out.append(_letter(topic, partition, offset, str(rejection), None,
                               decoded.encoding, original or b""))
        else:
            by_row.setdefault(rejection.row, []).append(rejection)
    rendered: dict[int, bytes] = {}
    if by_row and raw_batch is not None:
        rendered = dict(zip(sorted(by_row), rows_as_json(raw_batch, list(by_row)), strict=True))
    for row, rejections in sorted(by_row.items()):
        for extra in rejections[1:]:
            DEAD_LETTERS.labels(topic, extra.field or "<message>").inc()
        reason = "; ".join(str(r) for r in rejections)
        body = rendered.get(row)
        out.append(_letter(topic, partition, offset, reason, rejections[0].field,
                           JSON if body is not None else decoded.encoding,
                           body if body is not None else original or b""))
    return pa.RecordBatch.from_pylist(out, schema=DEAD_LETTER)


def duplicate_letters(rows: pa.Table, first_offsets: list[int], topic: str, partition: int,
                      offset: int) -> pa.RecordBatch:
    """One dead letter per duplicated request id (the row as JSON, where its first copy is)."""
    out = [_letter(topic, partition, offset,
                   f"duplicate request_id: its first copy arrived at {topic}[{partition}]"
                   f"@{first}", "request_id", JSON, encode_json(row))
           for row, first in zip(rows.to_pylist(), first_offsets, strict=True)]
    return pa.RecordBatch.from_pylist(out, schema=DEAD_LETTER)


def failure_letter(stage: str, attempts: int, error: BaseException, topic: str, partition: int,
                   offset: int, encoding: str | None, original: bytes | None) -> pa.RecordBatch:
    reason = f"{stage} failed on this message {attempts} times: {error!r}"[:2000]
    return pa.RecordBatch.from_pylist([_letter(topic, partition, offset, reason, PROCESSING,
                                               encoding or ARROW, original or b"")],
                                      schema=DEAD_LETTER)


def dead_letter_message(batch: pa.RecordBatch) -> tuple[bytes, list[tuple[str, bytes]]]:
    return encode_arrow(batch), headers_for(ARROW, "dead_letter")


async def guarded(stage: str, retries: int, work: Callable[[], Awaitable[None]],
                  on_failure: Callable[[BaseException, int], Awaitable[None]]) -> bool:
    """Run `work`; on an error retry it up to `retries` times, then hand the last error to
    `on_failure` (which dead-letters the message). True when the work succeeded.

    Why: one poison message must not stop the pipeline (a worker that exits on it restarts
    from its committed offset and meets it again, forever). Each stage's work is idempotent
    per source message, so a retry after a partial attempt is safe.
    """
    for attempt in range(retries + 1):
        try:
            await work()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a poison message: retried, then dead-lettered
            log.exception("%s failed on a message (attempt %d of %d)", stage, attempt + 1,
                          retries + 1)
            last = exc
    await on_failure(last, retries + 1)
    return False
