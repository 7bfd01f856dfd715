"""The worker's guards around faust-streaming's commit bookkeeping (faust_workarounds.py)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

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
