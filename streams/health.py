"""Consumer lag of this worker's partitions, as a Prometheus gauge refreshed by a Faust timer.

Why end offset minus committed offset: it is the group lag Kafka tools report, and it counts
what the lake sink holds unflushed (not yet acknowledged) as still behind, which is the truth
about durability. One ListOffsets request per refresh for all owned partitions keeps it cheap.
Changelog partitions are left out: Faust reads them only during recovery and never commits them.
"""

from __future__ import annotations

import logging
from typing import Any

from costpipe.core.metrics import CONSUMER_LAG
from costpipe.streams.app import app

log = logging.getLogger(__name__)
LAG_REFRESH_SECONDS = 5.0
_shown: set[tuple[str, str]] = set()


def _lags(ends: dict[Any, int], committed: dict[Any, int | None],
          read: dict[Any, int | None]) -> dict[tuple[str, str], int]:
    """(topic, partition) -> lag; a partition with no commit yet counts from its read offset."""
    out: dict[tuple[str, str], int] = {}
    for tp, end in ends.items():
        if end is None:
            continue
        position = committed.get(tp)
        if position is None:
            last_read = read.get(tp)
            position = 0 if last_read is None else last_read + 1
        out[(tp.topic, str(tp.partition))] = max(0, int(end) - int(position))
    return out


@app.timer(interval=LAG_REFRESH_SECONDS)
async def refresh_consumer_lag() -> None:
    consumer = app.consumer
    owned = [tp for tp in consumer.assignment() if not tp.topic.endswith("-changelog")]
    try:
        ends = dict(await consumer.highwaters(*owned)) if owned else {}
    except Exception as exc:  # a rebalance or broker hiccup: keep the last values, try again
        log.debug("consumer lag not refreshed: %r", exc)
        return
    lags = _lags(ends, dict(consumer._committed_offset), dict(consumer._read_offset))
    for labels in _shown - lags.keys():  # revoked partitions stop being reported
        CONSUMER_LAG.remove(*labels)
    for labels, lag in lags.items():
        CONSUMER_LAG.labels(*labels).set(lag)
    _shown.clear()
    _shown.update(lags)
