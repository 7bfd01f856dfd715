"""The worker's guards around faust-streaming's commit bookkeeping (faust_workarounds.py)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from intervaltree import IntervalTree
from prometheus_client import REGISTRY

import costpipe.streams.app  # noqa: F401  (installs the workarounds)
from costpipe.streams import faust_workarounds as worker_app

TP = ("costpipe.requests.v1", 1)


def _consumer(acked: list[int], committed: int | None) -> SimpleNamespace:
    return SimpleNamespace(
        _acked=defaultdict(list, {TP: list(acked)}),
        _acked_index=defaultdict(set, {TP: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP: committed}),
        _gap=defaultdict(IntervalTree),
    )


def test_a_one_message_hole_at_the_head_is_not_committed_over_but_read_again():
    worker_app.pending_rewinds.clear()
    worker_app.rewinds_done.clear()
    consumer = _consumer([53, 54, 55], committed=52)  # 52 skipped, never acknowledged
    assert Consumer._new_offset(consumer, TP) is None
    assert worker_app.pending_rewinds == {TP: 52}


def test_contiguous_acks_commit_as_before():
    worker_app.pending_rewinds.clear()
    consumer = _consumer([52, 53, 54], committed=52)
    assert Consumer._new_offset(consumer, TP) == 55
    assert not worker_app.pending_rewinds


def test_an_offset_that_never_comes_is_accepted_as_a_gap_after_a_few_re_reads():
    worker_app.pending_rewinds.clear()
    worker_app.rewinds_done.clear()
    worker_app.rewinds_done[(TP, 52)] = worker_app.MAX_REWINDS_PER_OFFSET
    consumer = _consumer([53, 54], committed=52)
    assert Consumer._new_offset(consumer, TP) == 55


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
    worker_app.pending_rewinds.clear()
    worker_app.rewinds_done.clear()
    worker_app.pending_rewinds[TP] = 52
    sought: list[tuple] = []

    async def seek(tp, offset):
        sought.append((tp, offset))

    consumer = SimpleNamespace(assignment=lambda: {TP}, _committed_offset={TP: 52}, seek=seek)
    app = SimpleNamespace(consumer=consumer, flow_control=SimpleNamespace(is_active=lambda: True))
    before = _counter("costpipe_unprocessed_rewinds_total")
    asyncio.run(worker_app.rewind_unprocessed(app))
    assert sought == [(TP, 52)]
    assert worker_app.rewinds_done == {(TP, 52): 1}
    assert _counter("costpipe_unprocessed_rewinds_total") == before + 1
