"""The one Faust app of costpipe: configured from settings, agents register on import.

`app` is module level (Faust's convention; `costpipe.streams.lake_sink` and
`costpipe.streams.agents` import it). Store is memory + changelog topics (rocksdb is optional and
not needed for our small state). Agents keep concurrency 1 and read raw bytes: payloads are
Arrow IPC envelopes decoded with `costpipe.schemas.codec`, headers come from `event.headers`.
The faust-streaming patches live in `costpipe.streams.faust_workarounds`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import faust

from costpipe.core import limits
from costpipe.core.kafka_clients import faust_broker_options
from costpipe.core.settings import Settings, get_settings
from costpipe.streams import faust_workarounds

log = logging.getLogger(__name__)

faust_workarounds.install()


def create_app(settings: Settings) -> faust.App:
    app = CostpipeApp(
        settings.servers.worker_group,
        **faust_broker_options(settings),
        store="memory://",
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=1,
        table_standby_replicas=settings.servers.worker_standby_replicas,
        web_host="127.0.0.1",
        web_port=settings.servers.worker_web_port,
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=limits.request_bytes(settings.kafka),
        producer_max_batch_size=limits.request_bytes(settings.kafka),
        consumer_max_fetch_size=limits.fetch_bytes(settings.kafka),
        consumer_metadata_max_age_ms=faust_workarounds.CONSUMER_METADATA_MAX_AGE_MS,
        broker_commit_every=200,
        broker_session_timeout=10.0,  # a SIGKILLed worker's partitions move on within ~10 s
        broker_heartbeat_interval=3.0,
        broker_commit_interval=1.0,
        autodiscover=False,
    )
    app.sensors.add(faust_workarounds.DeliverySensor())
    return app


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
    """Re-read offsets that were skipped and never acknowledged (faust_workarounds)."""
    await faust_workarounds.rewind_unprocessed(app)
