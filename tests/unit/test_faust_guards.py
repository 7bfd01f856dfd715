"""The worker's guards around faust-streaming's commit bookkeeping (faust_workarounds.py)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP as FaustTP
from intervaltree import IntervalTree
from prometheus_client import REGISTRY

import costpipe.streams.app  # noqa: F401  (installs the workarounds)
from costpipe.streams import faust_workarounds as worker_app

TP = FaustTP("costpipe.requests.v1", 1)


def _consumer(acked: list[int], committed: int | None) -> SimpleNamespace:
    return SimpleNamespace(
        _acked=defaultdict(list, {TP: list(acked)}),
        _acked_index=defaultdict(set, {TP: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP: committed}),
        _gap=defaultdict(IntervalTree),
    )


def _reset() -> None:
    worker_app.pending_rewinds.clear()
    worker_app.rewinds.clear()
    worker_app.delivered.clear()


def test_a_one_message_hole_at_the_head_is_not_committed_over_but_read_again():
    _reset()
    consumer = _consumer([53, 54, 55], committed=52)  # 52 skipped, never acknowledged
    assert Consumer._new_offset(consumer, TP) is None
    assert worker_app.pending_rewinds == {TP: 52}


def test_contiguous_acks_commit_as_before():
    _reset()
    consumer = _consumer([52, 53, 54], committed=52)
    assert Consumer._new_offset(consumer, TP) == 55
    assert not worker_app.pending_rewinds


def _sought_back(offset: int, delivered_before: int, at: float = 0.0) -> None:
    worker_app.rewinds[TP] = worker_app.Rewind(offset, None, at, delivered_before)


def test_a_re_read_that_is_slow_to_come_is_waited_for_however_many_commits_pass():
    """A busy worker (a backlog after a broker outage) may take many commit intervals to reach
    the offset again: the commit waits, and no second seek restarts the re-read meanwhile."""
    _reset()
    _sought_back(52, delivered_before=60, at=time.monotonic())
    sensor = worker_app.DeliverySensor()
    sensor.on_message_in(TP, 61, None)  # fetched before the seek: not the re-read
    consumer = _consumer([53, 54, 55], committed=52)
    for _ in range(20):
        assert Consumer._new_offset(consumer, TP) is None
    assert not worker_app.pending_rewinds
    sensor.on_message_in(TP, 52, None)  # the re-read reached it: processing, wait for its ack
    assert Consumer._new_offset(consumer, TP) is None
    assert not worker_app.pending_rewinds


def test_an_offset_the_re_read_goes_past_is_accepted_as_a_gap():
    _reset()
    _sought_back(52, delivered_before=60, at=time.monotonic())
    worker_app.DeliverySensor().on_message_in(TP, 53, None)  # 52 does not exist
    consumer = _consumer([53, 54], committed=52)
    assert Consumer._new_offset(consumer, TP) == 55
    assert TP not in worker_app.rewinds


def test_a_re_read_that_went_nowhere_is_sought_again_after_the_patience():
    _reset()
    _sought_back(52, delivered_before=60,
                 at=time.monotonic() - worker_app.REREAD_PATIENCE_SECONDS - 1)
    consumer = _consumer([53, 54], committed=52)
    assert Consumer._new_offset(consumer, TP) is None
    assert worker_app.pending_rewinds == {TP: 52}


def test_another_faust_version_is_refused_with_what_to_do():
    with pytest.raises(worker_app.FaustVersionError) as caught:
        worker_app.check_version("0.16.0")
    message = str(caught.value)
    assert "0.16.0" in message and "faust-streaming==0.15.3" in message
    worker_app.check_version()  # the installed one is supported


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_an_ack_from_a_stale_generation_is_refused_and_counted():
    app = SimpleNamespace(consumer_generation_id=7,
                          flow_control=SimpleNamespace(is_active=lambda: True))
    class Message(SimpleNamespace):
        __hash__ = object.__hash__

    message = Message(generation_id=6, tp=TP, offset=52)
    consumer = SimpleNamespace(app=app, _unacked_messages={message})
    before = _counter("costpipe_stale_acks_refused_total")
    assert Consumer.ack(consumer, message) is False
    assert message not in consumer._unacked_messages  # so a rebalance does not wait on it
    assert _counter("costpipe_stale_acks_refused_total") == before + 1


def test_a_rewind_seeks_back_to_the_unacknowledged_offset_and_counts_it():
    _reset()
    worker_app.delivered[TP] = 60
    worker_app.pending_rewinds[TP] = 52
    sought: list[tuple] = []

    async def seek_wait(offsets):
        sought.extend(offsets.items())

    consumer = SimpleNamespace(assignment=lambda: {TP}, _committed_offset={TP: 52},
                               seek_wait=seek_wait)
    app = SimpleNamespace(consumer=consumer, flow_control=SimpleNamespace(is_active=lambda: True),
                          topics=_Topics())
    before = _counter("costpipe_unprocessed_rewinds_total")
    asyncio.run(worker_app.rewind_unprocessed(app))
    assert sought == [(TP, 52)]
    assert worker_app.rewinds[TP].offset == 52 and worker_app.rewinds[TP].delivered_before == 60
    assert _counter("costpipe_unprocessed_rewinds_total") == before + 1


class _Message(SimpleNamespace):
    __hash__ = object.__hash__

    def incref(self, n: int = 1) -> None:
        self.refcount += n


def _delivered(offset: int, unacked: set) -> tuple[bool, _Message]:
    message = _Message(tp=TP, offset=offset, refcount=1)
    unacked.add(message)
    app = SimpleNamespace(consumer=SimpleNamespace(_unacked_messages=unacked))
    return worker_app.held_back(app, message), message


def _fresh_order() -> None:
    for state in (worker_app.expected, worker_app.held_low, worker_app.pending_seeks,
                  worker_app._seeks_done):
        state.clear()


def test_a_message_after_one_that_never_reached_the_agent_is_held_back_until_the_re_read():
    """Offset 11 skipped around a rebalance, 12 delivered: processing 12 first would make the
    allocator take 11, read again later, for a replay (its own-model rows lost)."""
    _fresh_order()
    unacked: set = set()
    assert [_delivered(o, unacked)[0] for o in (9, 10)] == [False, False]
    held, message = _delivered(12, unacked)
    assert held and message.refcount == 2 and message not in unacked  # never acked
    assert worker_app.pending_seeks == {TP: 11}
    assert _delivered(13, unacked)[0]  # fetched before the seek: held too
    assert [_delivered(o, unacked)[0] for o in (11, 12, 13)] == [False, False, False]
    assert worker_app.expected[TP] == 14 and TP not in worker_app.held_low


def _seek_held(done: list) -> None:
    async def seek_wait(offsets):
        done.extend(offsets.items())

    worker_app._sought_at.clear()
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {TP},
                                                   seek_wait=seek_wait),
                          flow_control=SimpleNamespace(is_active=lambda: True))
    asyncio.run(worker_app.seek_held_back(app))


def test_an_offset_two_re_reads_go_past_is_taken_as_absent():
    _fresh_order()
    unacked: set = set()
    sought: list = []
    _delivered(10, unacked)
    assert _delivered(12, unacked)[0]  # 11 missing: held, read again from 11
    _seek_held(sought)
    assert _delivered(12, unacked)[0]  # one re-read started at 12: not yet evidence
    _seek_held(sought)
    assert _delivered(12, unacked)[0] is False  # the second did too: 11 does not exist
    assert worker_app.expected[TP] == 13 and sought == [(TP, 11), (TP, 11)]


def test_a_copy_of_the_held_message_fetched_before_the_re_read_is_no_evidence():
    """A SIGKILL run: 72 held (68..71 missing), and a second copy of 72 came 2 ms later, before
    any seek; taking 68..71 for absent lost four requests messages."""
    _fresh_order()
    unacked: set = set()
    sought: list = []
    _delivered(67, unacked)
    assert _delivered(72, unacked)[0] and _delivered(72, unacked)[0]  # both held
    _seek_held(sought)
    assert [_delivered(o, unacked)[0] for o in (68, 69, 70, 71, 72)] == [False] * 5
    assert worker_app.expected[TP] == 73 and TP not in worker_app.held_low


def test_re_reads_of_processed_offsets_go_through_in_order():
    _fresh_order()
    unacked: set = set()
    assert [_delivered(o, unacked)[0] for o in (5, 6, 7, 5, 6, 7, 8)] == [False] * 7


class _Queue:
    def __init__(self, size: int = 0) -> None:
        self.size = size

    def empty(self) -> bool:
        return self.size == 0


def _tail_app(position: int, committed: int | None, *, unacked: tuple = (), acked: tuple = (),
              queued: int = 0, active: bool = True) -> SimpleNamespace:
    state = SimpleNamespace(has_valid_position=True, position=position)
    assignment = SimpleNamespace(tps={TP}, state_value=lambda tp: state)
    aiokafka = SimpleNamespace(_subscription=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment)))
    sought: list[tuple] = []

    async def seek_wait(offsets):
        sought.extend(offsets.items())

    consumer = SimpleNamespace(
        _thread=SimpleNamespace(_ensure_consumer=lambda: aiokafka),
        _unacked_messages={_Message(tp=TP, offset=o, refcount=1) for o in unacked},
        _acked=defaultdict(list, {TP: list(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP: committed}),
        seek_wait=seek_wait, sought=sought)
    return SimpleNamespace(
        consumer=consumer, consumer_generation_id=3,
        flow_control=SimpleNamespace(is_active=lambda: active),
        topics=_Topics([SimpleNamespace(queue=_Queue(queued))]))


class _Topics(list):
    def acks_enabled_for(self, topic: str) -> bool:
        return True


def test_messages_fetched_after_the_commit_that_reached_no_agent_are_read_again():
    """A SIGKILL recovery test: the new owner's fetch of requests[0]@7 was dropped by Faust
    around its first rebalance, and no later message came to reveal the hole."""
    _fresh_order()
    worker_app._tails.clear()
    app = _tail_app(position=8, committed=7)
    wait = worker_app.DROPPED_TAIL_SECONDS
    assert worker_app.dropped_tails(app, now=100.0) == {}  # first sight: maybe on its way
    assert worker_app.dropped_tails(app, now=100.0 + wait / 2) == {}
    assert worker_app.dropped_tails(app, now=100.0 + wait) == {TP: 7}
    worker_app.expected[TP] = 5
    worker_app.dropped_tails(app, now=time.monotonic() - wait)  # seen a while ago
    asyncio.run(worker_app.reread_dropped_tails(app))
    assert app.consumer.sought == [(TP, 7)] and worker_app.expected[TP] == 7


@pytest.mark.parametrize("state", [
    {"unacked": (7,)},  # an agent is on it (or holds it until its state is saved)
    {"acked": (7,)},  # done, the commit is on its way
    {"queued": 1},  # still in an agent's queue
    {"active": False},  # a rebalance: Faust seeks to the committed offsets itself
    {"position": 7},  # nothing fetched past the commit
])
def test_messages_in_flight_are_never_taken_for_dropped(state):
    _fresh_order()
    worker_app._tails.clear()
    app = _tail_app(**{"position": 8, "committed": 7, **state})
    for now in (0.0, 60.0, 120.0):
        assert worker_app.dropped_tails(app, now=now) == {}


def test_a_changelog_whose_partitions_are_not_known_yet_is_no_mismatch():
    from faust.exceptions import PartitionsMismatch
    from faust.tables.base import Collection

    known: dict[str, int] = {"windows": 2, "alerting-changelog": 0}
    table = SimpleNamespace(
        _verified_source_topics_for_partitions=set(), changelog_topic_name="alerting-changelog",
        name="alerting", app=SimpleNamespace(consumer=SimpleNamespace(
            topic_partitions=lambda topic: known.get(topic))))
    Collection._verify_source_topic_partitions(table, "windows")  # not known yet: no verdict
    assert not table._verified_source_topics_for_partitions
    known["alerting-changelog"] = 2
    Collection._verify_source_topic_partitions(table, "windows")
    assert table._verified_source_topics_for_partitions == {"windows"}
    known["alerting-changelog"], table._verified_source_topics_for_partitions = 3, set()
    with pytest.raises(PartitionsMismatch):
        Collection._verify_source_topic_partitions(table, "windows")
