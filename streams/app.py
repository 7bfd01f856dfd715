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
from prometheus_client import Counter

from costpipe.kafka_config import faust_broker_options
from costpipe.settings import Settings, get_settings

log = logging.getLogger(__name__)
STALE_ACKS = Counter("costpipe_stale_acks_refused_total",
                     "Acks refused for messages fetched before the latest rebalance (re-read)")


def _refuse_stale_generation_acks() -> None:
    """Never acknowledge a message fetched before the latest rebalance.

    faust-streaming skips such a message in `Stream._py_aiter` (its generation_id is stale)
    but still acks it. If the skipped offset is the next one to commit, the commit moves past
    it, and the seek after the rebalance can then start beyond a message that no agent ever
    processed. Seen once in the SIGKILL reliability test: request offset 52 produced nothing
    on any output topic, 51 and 53 did, and its 964 events never reached the lake. Refusing
    the ack leaves the offset uncommitted, so it is read again, which at-least-once plus
    idempotent state makes safe.
    """
    if getattr(Consumer.ack, "_costpipe_guard", False):
        return
    original = Consumer.ack

    def ack(self: Consumer, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != self.app.consumer_generation_id:
            self._unacked_messages.discard(message)
            STALE_ACKS.inc()
            log.info("not acking %s@%d: fetched before the last rebalance, it will be read "
                     "again", message.tp, message.offset)
            return False
        return original(self, message)

    ack._costpipe_guard = True  # type: ignore[attr-defined]
    Consumer.ack = ack  # type: ignore[method-assign]


class _NeverAheadReadOffsets(dict):  # type: ignore[type-arg]
    """faust's per-partition read offsets, except that reading one always answers None."""

    def __getitem__(self, tp: Any) -> None:
        return None


def _never_drop_refetched_messages() -> None:
    """Deliver every fetched message, even one below faust's "read offset" for its partition.

    faust-streaming's fetch loop (`Consumer._drain_messages`) drops a message whose offset is
    below the last offset it handed on, and it advances that read offset even for messages it
    abandons when a rebalance suspends the flow. If the rest of a pre-rebalance batch is
    walked after the seek to the committed offset, the read offset ends up past messages no
    agent processed, and when they are fetched again they are dropped. faust's commit check
    (`min(acked) - committed > 1`) misses a hole of exactly one message, so the commit then
    moves past it. Seen in the SIGKILL reliability test with the stale-ack guard in place:
    request offset 54 never produced costs, 53 and 55 did (two costs messages in a row), and
    1,000 events were lost. Without the drop, a re-fetched message is processed again, which
    at-least-once delivery plus idempotent state already make safe. The drain loop is the only
    reader of these offsets (seeks and revocations only write them); with no read offset it
    also records no offset gaps, which only transactional or compacted input topics have:
    costpipe's agents read neither.
    """
    if getattr(Consumer.__init__, "_costpipe_guard", False):
        return
    original = Consumer.__init__

    def __init__(self: Consumer, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._read_offset = _NeverAheadReadOffsets()

    __init__._costpipe_guard = True  # type: ignore[attr-defined]
    Consumer.__init__ = __init__  # type: ignore[method-assign]


_refuse_stale_generation_acks()
_never_drop_refetched_messages()


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
