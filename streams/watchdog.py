"""Progress watchdog: a worker that stops reading while work waits notices and restarts itself.

Why: a consumer can stop for good without dying (seen: a rebalance after a broker restart that
waited forever; `faust_workarounds.bounded_wait_empty` removes that cause). Its web status kept
answering OK, so nothing supervising it could tell. Every WATCH_SECONDS the watchdog compares,
for each owned partition, the offset read last with the partition's end: while messages wait
and nothing is read for `servers.worker_stall_seconds` (or a rebalance lasts that long), the
worker is stalled. It says so in the log, at `/costpipe/health` (503) and in
`costpipe_worker_progress_age_seconds`, and then restarts itself in place (the same process id,
a fresh interpreter: `os.execv`), counting it in `costpipe_worker_restarts_total` of the new
process. Nothing is lost: whatever was not committed is read again.

The alerts topic is left out: the webhook sender waits there on purpose while the webhook is
down (alerts are retried until acknowledged).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from costpipe.core.metrics import WORKER_PROGRESS_AGE, WORKER_RESTARTS
from costpipe.core.settings import get_settings
from costpipe.streams.app import app

log = logging.getLogger(__name__)
WATCH_SECONDS = 5.0
RESTARTS_ENV = "_COSTPIPE_WORKER_RESTARTS"  # carried across the restart (not a setting)

_settings = get_settings()
_read: dict[Any, tuple[int | None, float]] = {}  # tp -> (last read offset, since when)
_rebalancing_since: list[float | None] = [None]
health: dict[str, Any] = {"status": "ok", "progress_age_s": 0.0}

for _reason, _count in [("stall", os.environ.get(RESTARTS_ENV, "0"))]:
    if _count.isdigit() and int(_count):
        WORKER_RESTARTS.labels(_reason).inc(int(_count))
WORKER_RESTARTS.labels("stall")


def _watched(tp: Any) -> bool:
    return not tp.topic.endswith("-changelog") and tp.topic != _settings.topics.alerts \
        and "__assignor" not in tp.topic


def progress_age(now: float) -> float:
    """Seconds since a partition with waiting messages last had a message read (0 if none)."""
    consumer = app.consumer
    ages = [0.0]
    owned = [tp for tp in consumer.assignment() if _watched(tp)]
    for tp in owned:
        read = consumer._read_offset.get(tp)
        last, since = _read.get(tp, (None, now))
        if read != last:
            _read[tp] = (read, now)
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # not fetched yet: nothing known to wait
            continue
        position = -1 if read is None else read
        if high is not None and high > position + 1:
            ages.append(now - since)
    for tp in [tp for tp in _read if tp not in owned]:
        del _read[tp]
    if app.rebalancing:
        _rebalancing_since[0] = _rebalancing_since[0] or now
        ages.append(now - _rebalancing_since[0])
    else:
        _rebalancing_since[0] = None
    return max(ages)


def restart(reason: str) -> None:
    """Replace this process with a fresh worker (same pid, same arguments)."""
    count = int(os.environ.get(RESTARTS_ENV, "0")) + 1
    os.environ[RESTARTS_ENV] = str(count)
    log.critical("worker restarting itself (%s; restart %d of this process)", reason, count)
    logging.shutdown()
    args = [sys.executable, "-m", "costpipe.cli", *sys.argv[1:]]
    os.execv(sys.executable, args)


@app.timer(interval=WATCH_SECONDS)
async def watch_progress() -> None:
    now = time.monotonic()
    age = progress_age(now)
    WORKER_PROGRESS_AGE.set(round(age, 1))
    health["progress_age_s"] = round(age, 1)
    limit = _settings.servers.worker_stall_seconds
    if age < limit:
        health["status"] = "ok"
        return
    health["status"] = "stalled"
    log.error("worker stalled: nothing read for %.0f s while messages wait (or stuck in a "
              "rebalance); restarting", age)
    restart("stall")


@app.page("/costpipe/health")
async def health_page(web: Any, request: Any) -> Any:
    """200 {"status": "ok"} while the worker makes progress, 503 when it is stalled."""
    status = 200 if health["status"] == "ok" else 503
    return web.json({**health, "assigned": len(app.consumer.assignment())}, status=status)
