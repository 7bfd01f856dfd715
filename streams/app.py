"""The one Faust app of costpipe: configured from settings, agents register on import.

`app` is module level (Faust's convention; `streams.lake_sink` and `streams.agents` import it).
Store is memory + changelog topics (rocksdb is optional and not needed for our small state).
Agents keep concurrency 1 (faust-streaming #606) and read raw bytes: payloads are Arrow IPC
envelopes decoded with `schemas.codec`, headers come from `event.headers`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faust
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer

from costpipe.core.kafka_clients import faust_broker_options
from costpipe.core.metrics import REWINDS, STALE_ACKS
from costpipe.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _refuse_stale_generation_acks() -> None:
    """Never acknowledge a message that faust skipped around a rebalance.

    faust-streaming's `Stream._py_aiter` (streams.py, around lines 1287-1345) skips a message
    when its generation_id is stale (fetched before the latest rebalance) *or* when flow
    control is suspended (a rebalance is under way), and acks it all the same. If the skipped
    offset is the next one to commit, the commit moves past it, and the seek to the committed
    offset after the rebalance starts beyond a message that no agent ever processed.
    Seen three times in the SIGKILL reliability test, each time one request message whose
    events never reached the lake: offset 52 (before any guard), and offset 54 twice with a
    guard that only checked the generation (the skip then came from suspended flow control,
    before the generation changes). In the last case the costs topic showed it exactly: costs
    for request offsets 53 and 55 in two consecutive messages, nothing for 54.
    Refusing the ack leaves the offset uncommitted; faust seeks every assigned partition to
    its committed offset before resuming the flow, so the message is read again, which
    at-least-once delivery plus idempotent state make safe. An ack refused for a message that
    was processed just before the suspension only costs a duplicate, dropped downstream.
    """
    if getattr(Consumer.ack, "_costpipe_guard", False):
        return
    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        stale = generation is not None and generation != self.app.consumer_generation_id
        if stale or not self.app.flow_control.is_active():
            self._unacked_messages.discard(message)
            STALE_ACKS.inc()
            log.info("not acking %s@%d: fetched before or during a rebalance, it will be "
                     "read again", message.tp, message.offset)
            return False
        return original(self, message)

    ack._costpipe_guard = True  # type: ignore[attr-defined]
    Consumer.ack = ack  # type: ignore[method-assign]


MAX_REWINDS_PER_OFFSET = 3
_pending_rewinds: dict[Any, int] = {}  # tp -> committed offset that no agent acknowledged
_rewinds_done: dict[tuple[Any, int], int] = {}


def _commit_only_from_the_committed_offset() -> None:
    """Never commit past an unacknowledged message at the head; read it again instead.

    faust's `Consumer._new_offset` refuses to commit when the lowest acknowledged offset is
    more than one past the committed one (`min(acked) - committed > 1`), so a hole of exactly
    one message at the head is committed over. One way such a hole appears: after a rebalance
    faust seeks to the committed offset, the fetcher delivers that message before flow control
    resumes, the stream skips it (the guard above refuses its ack), and the next message is
    processed and acknowledged normally. No seek follows, so nothing would read it again.
    Seen in the SIGKILL reliability test even with the ack guard: request offset 52 had no
    costs, 51 and 53 were costed 13 ms apart in the same worker life, 964 events lost.
    Here the commit waits, and a timer (`_rewind_unprocessed`) seeks the partition back to
    that offset; what was processed after it is read again and dropped downstream as
    duplicates. An offset that is still missing after MAX_REWINDS_PER_OFFSET tries (a
    transaction marker or compacted record in someone else's topic) is accepted as a gap,
    with a warning.
    """
    if getattr(Consumer._new_offset, "_costpipe_guard", False):
        return
    original = Consumer._new_offset

    def _new_offset(self: Consumer, tp: Any) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed \
                and not self._gap[tp].overlaps(committed):
            tries = _rewinds_done.get((tp, committed), 0)
            if tries < MAX_REWINDS_PER_OFFSET:
                _pending_rewinds[tp] = committed
                return None
            log.warning("%s: offset %d was never acknowledged after %d re-reads; committing "
                        "past it as a gap", tp, committed, tries)
        return original(self, tp)

    _new_offset._costpipe_guard = True  # type: ignore[attr-defined]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


_refuse_stale_generation_acks()

# Faust stops delivering to *every* stream while more than `max_messages` (100) table writes
# wait to be sent ("producer buffer full" in the logs), and then sends 100 one by one. The
# allocator and the merger write a few hundred keys per second at full load, so the whole
# worker stalled again and again (~20 times per 2M-event run; +2 to +6 % events/s in 3 paired
# runs without it). The buffer still drains continuously; only the stall point moves. Bounded,
# because an allocator value can be ~100 KB.
ProducerBuffer.max_messages = 1_000  # bursts seen: 101-120 pending
_commit_only_from_the_committed_offset()


def create_app(settings: Settings) -> faust.App:
    return CostpipeApp(
        settings.servers.worker_group,
        **faust_broker_options(settings),
        store="memory://",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=1,
        web_host="127.0.0.1",
        web_port=settings.servers.worker_web_port,
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=10 * 1024 * 1024,
        producer_max_batch_size=8 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Topics created just before the worker starts can be missing from its first metadata;
        # Faust's assignor then skips them and nothing is assigned until the next refresh
        # (default 5 min: the first worker of a fresh deployment sat idle, seen in SIGKILL runs).
        consumer_metadata_max_age_ms=10_000,
        broker_commit_every=200,
        broker_session_timeout=10.0,  # a SIGKILLed worker's partitions move on within ~10 s
        broker_heartbeat_interval=3.0,
        broker_commit_interval=1.0,
        autodiscover=False,
    )


class CostpipeApp(faust.App):
    """faust.App whose agents stop the worker when they crash.

    A crashed agent would otherwise sit dead inside a live worker (Faust restarts the actor
    past the failing message, or not at all), stalling the pipeline silently. Exiting instead
    means uncommitted offsets are replayed by the restarted worker (at-least-once, idempotent
    state) and whatever supervises the worker sees a non-zero exit.
    """

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        await super()._on_agent_error(agent, exc)
        log.critical("agent %s crashed (%r): stopping the worker so it restarts from its "
                     "committed offsets", getattr(agent, "name", agent), exc)
        logging.shutdown()
        os._exit(70)


def raw_topic(name: str, partitions: int | None = None) -> Any:
    """A topic of raw bytes (keys and values): we decode envelopes ourselves."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


app = create_app(get_settings())


@app.timer(interval=1.0)
async def _rewind_unprocessed() -> None:
    """Seek partitions back to a committed offset that no agent acknowledged (see above)."""
    if not _pending_rewinds or not app.flow_control.is_active():
        return
    assignment = app.consumer.assignment()
    for tp, offset in list(_pending_rewinds.items()):
        del _pending_rewinds[tp]
        if tp not in assignment or app.consumer._committed_offset[tp] != offset:
            continue  # moved on (revoked, or a rebalance already sought it)
        _rewinds_done[(tp, offset)] = _rewinds_done.get((tp, offset), 0) + 1
        REWINDS.inc()
        log.warning("%s: offset %d was skipped and never acknowledged; reading the partition "
                    "again from there", tp, offset)
        await app.consumer.seek(tp, offset)
