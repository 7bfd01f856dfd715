"""The group's roll call: which workers run, where, and which lake each writes to.

Why: workers on different machines with the default local `lake.location` each write a part of
the lake, and each `costpipe sql` then sees only its part (350,726 + 150,045 of 500,771
requests in one run), silently. Every worker posts itself to the compacted members topic at
start and every ROLL_CALL_SECONDS; each reads the roll call and, when the live members write to
more than one lake, says so loudly (one log line, `costpipe_lake_locations`), and
`costpipe kafka status` prints the same line. A local folder is a different lake on another
host even with the same path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from costpipe.core.kafka_clients import confluent_consumer, confluent_producer
from costpipe.core.metrics import LAKE_LOCATIONS
from costpipe.core.settings import Settings

log = logging.getLogger(__name__)
ROLL_CALL_SECONDS = 30.0
ALIVE_SECONDS = 3 * ROLL_CALL_SECONDS


def lake_identity(settings: Settings, host: str | None = None) -> str:
    """What makes two workers write to the same lake: the URL, or host + path for a folder."""
    location = settings.lake.location
    if "://" in location and not location.startswith("file://"):
        endpoint = getattr(settings.lake, "s3_endpoint", None)
        return f"{location.rstrip('/')}" + (f" at {endpoint}" if endpoint else "")
    path = os.path.abspath(os.path.expanduser(location.removeprefix("file://")))
    return f"{host or socket.gethostname()}:{path}"


@dataclass(frozen=True)
class Member:
    worker: str
    host: str
    pid: int
    lake: str
    seen: float  # wall time of its last roll call


def read_members(settings: Settings, timeout: float = 10.0) -> list[Member]:
    """The latest roll call of every worker of the group (live or not), from the topic."""
    consumer = Consumer(confluent_consumer(settings, f"costpipe-members-{uuid.uuid4().hex[:8]}"))
    topic = settings.topics.members
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=timeout)
        if high <= low:
            return []
        consumer.assign([TopicPartition(topic, 0, low)])
        latest: dict[str, Member] = {}
        deadline = time.monotonic() + timeout
        position = low
        while position < high and time.monotonic() < deadline:
            for message in consumer.consume(500, 1.0):
                if message.error():
                    continue
                position = message.offset() + 1
                if message.value() is None:
                    continue
                try:
                    doc = json.loads(message.value())
                    member = Member(doc["worker"], doc["host"], int(doc["pid"]), doc["lake"],
                                    float(doc["seen"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if doc.get("group") == settings.servers.worker_group:
                    latest[member.worker] = member
        return list(latest.values())
    except KafkaException:
        return []
    finally:
        consumer.close()


def live_members(members: list[Member], now: float | None = None) -> list[Member]:
    """Those that posted within ALIVE_SECONDS."""
    now = time.time() if now is None else now
    return [m for m in members if now - m.seen <= ALIVE_SECONDS]


def split_lake_warning(members: list[Member], now: float | None = None) -> str | None:
    """One line when the live members write to more than one lake, else None."""
    live = live_members(members, now)
    lakes = sorted({m.lake for m in live})
    LAKE_LOCATIONS.set(len(lakes))
    if len(lakes) <= 1:
        return None
    where = "; ".join(
        f"{lake} ({', '.join(sorted(f'{m.host}:{m.pid}' for m in live if m.lake == lake))})"
        for lake in lakes)
    return (f"the workers of this group write to {len(lakes)} different lakes, so each "
            f"`costpipe sql` sees only a part: {where}. A group on several hosts needs one "
            "shared lake.location (object storage such as s3://bucket/costpipe)")


def idle_workers_warning(members: list[Member], settings: Settings,
                         now: float | None = None) -> str | None:
    """One line when the group has more live workers than some stage has partitions: the
    workers past that count get none of the stage's work (a partition has one owner)."""
    live = len(live_members(members, now))
    topics = settings.topics
    short = [(key, count) for key, count in (("topics.partitions", topics.partitions),
                                             ("topics.stage_partitions", topics.stage_count()))
             if count < live]
    if not short:
        return None
    what = ", ".join(f"{key} is {count}" for key, count in short)
    return (f"{live} workers run in this group but {what}: a partition has one owner, so "
            f"{live - min(c for _, c in short)} of them get no share of that work. Raise the "
            "setting to at least the number of workers (topics are made with it: new topics "
            "or a new topics.*.vN name), or run fewer workers")


class RollCall:
    """Posts this worker to the members topic and checks the others, in a daemon thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.worker = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lake = lake_identity(settings, self.host)
        self._stop = threading.Event()
        self._producer = Producer(confluent_producer(settings))
        self._thread = threading.Thread(target=self._run, name="costpipe-roll-call",
                                        daemon=True)
        self.last_warning: str | None = None
        self.last_idle_warning: str | None = None

    def start(self) -> None:
        self._thread.start()

    def _ensure_topic(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        from costpipe.core.kafka_clients import confluent_admin

        admin = AdminClient(confluent_admin(self.settings))
        topic = self.settings.topics.members
        if topic in admin.list_topics(timeout=10).topics:
            return
        futures = admin.create_topics([NewTopic(topic, 1, -1 if not self.settings
                                                .uses_local_broker else 1,
                                                config={"cleanup.policy": "compact"})])
        for future in futures.values():
            with contextlib.suppress(KafkaException):  # created meanwhile by another worker
                future.result(15)

    def post(self) -> None:
        doc: dict[str, Any] = {"worker": self.worker, "host": self.host, "pid": os.getpid(),
                               "lake": self.lake, "seen": time.time(),
                               "group": self.settings.servers.worker_group}
        self._producer.produce(self.settings.topics.members, key=self.worker.encode(),
                               value=json.dumps(doc).encode(), partition=0)
        self._producer.flush(5.0)

    def check(self) -> None:
        members = read_members(self.settings)
        warning = split_lake_warning(members)
        if warning and warning != self.last_warning:
            log.error("costpipe worker: %s", warning)
        self.last_warning = warning
        idle = idle_workers_warning(members, self.settings)
        if idle and idle != self.last_idle_warning:
            log.warning("costpipe worker: %s", idle)
        self.last_idle_warning = idle

    def _run(self) -> None:
        try:
            self._ensure_topic()
        except Exception:
            log.debug("members topic not checked; trying to post anyway", exc_info=True)
        while not self._stop.is_set():
            try:
                self.post()
                self.check()
            except Exception:  # a roll call must never take the worker down
                log.debug("roll call failed; trying again", exc_info=True)
            self._stop.wait(ROLL_CALL_SECONDS)
