"""Duplicate request ids: the index decides the same first copy whatever the replay."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from costpipe.lake.layout import open_lake
from costpipe.streams.dedup import HOUR_US, IndexJournal, RequestIdIndex, index_from_journal

DAY_US = 24 * HOUR_US
T0 = 1_780_000_000_000_000


def _check(index: RequestIdIndex, ids: list[str], offset: int, ts: int = T0) -> list[bool]:
    dup, _ = index.check(pa.array(ids), np.full(len(ids), ts, dtype=np.int64), offset)
    return dup.tolist()


def test_a_repeat_is_a_duplicate_in_later_messages_and_within_one() -> None:
    index = RequestIdIndex(DAY_US)
    assert _check(index, ["a", "b", "a"], 10) == [False, False, True]
    assert _check(index, ["b", "c"], 11) == [True, False]
    assert _check(index, ["a"], 12, ts=T0 - 2 * HOUR_US) == [True]  # 2 h earlier stamp


def test_a_replayed_message_keeps_its_own_rows() -> None:
    index = RequestIdIndex(DAY_US)
    _check(index, ["a", "b"], 10)
    assert _check(index, ["a", "b"], 10) == [False, False]  # the same message again
    assert _check(index, ["a"], 11) == [True]


def test_the_lowest_offset_wins_after_a_replay_from_older_offsets() -> None:
    index = RequestIdIndex(DAY_US)
    _check(index, ["x"], 20)  # processed before a crash
    assert _check(index, ["x"], 15) == [False]  # replay: 15 comes first, it is the first
    assert _check(index, ["x"], 20) == [True]


def test_a_dead_letter_replay_is_costed_once_even_if_its_refused_original_was_indexed() -> None:
    """A new owner's re-read of the partition indexes rows by today's rules: a row its
    predecessor refused (dead-lettered at offset 5) may be in the index. Its replay is not a
    duplicate of that refused row, but a second replay is a duplicate of the first."""
    index = RequestIdIndex(DAY_US)
    _check(index, ["skewed", "other"], 5)
    replay = index.check(pa.array(["skewed"]), np.array([T0]), 30, replay_of=5)[0]
    assert replay.tolist() == [False]
    again = index.check(pa.array(["skewed"]), np.array([T0]), 31, replay_of=5)[0]
    assert again.tolist() == [True]
    assert index.check(pa.array(["skewed"]), np.array([T0]), 30, replay_of=5)[0].tolist() \
        == [False]  # the first replay read again after a crash keeps its rows
    costed = index.check(pa.array(["other"]), np.array([T0]), 32, replay_of=9)[0]
    assert costed.tolist() == [True]  # a replay of a row whose copy was costed elsewhere


def test_ids_older_than_the_horizon_are_forgotten() -> None:
    index = RequestIdIndex(HOUR_US)
    _check(index, ["old"], 1, ts=T0)
    _check(index, ["new"], 2, ts=T0 + 3 * HOUR_US)
    assert _check(index, ["old"], 3, ts=T0 + 3 * HOUR_US) == [False]
    assert _check(index, ["new"], 4, ts=T0 + 3 * HOUR_US) == [True]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=6),
                min_size=1, max_size=12),
       st.integers(0, 11))
def test_any_replay_point_gives_the_same_decisions(messages: list[list[str]], cut: int) -> None:
    """Process every message, crash, replay from `cut`: the decisions equal a clean run's."""
    clean = RequestIdIndex(DAY_US)
    expected = [_check(clean, ids, offset) for offset, ids in enumerate(messages)]
    crashed = RequestIdIndex(DAY_US)
    for offset, ids in enumerate(messages):
        _check(crashed, ids, offset)
    cut = min(cut, len(messages) - 1)
    replayed = [_check(crashed, ids, offset) for offset, ids in enumerate(messages)
                if offset >= cut]
    assert replayed == expected[cut:]
    firsts = {i for offset, ids in enumerate(messages)
              for i, d in zip(ids, expected[offset], strict=True) if not d}
    assert firsts == {i for ids in messages for i in ids}  # every id kept exactly once


def test_the_journal_rebuilds_the_same_index(tmp_path) -> None:
    lake = open_lake(str(tmp_path / "lake"))
    journal = IndexJournal(lake, "costpipe.requests.v1", 3)
    live = RequestIdIndex(DAY_US)
    for offset, ids in enumerate([["a", "b"], ["c"], ["a", "d"]]):
        ts = np.full(len(ids), T0, dtype=np.int64)
        dup, _ = live.check(pa.array(ids), ts, offset)
        journal.record(pa.array(ids).filter(pa.array(~dup)), offset, ts[~dup])
    taken = journal.take()
    assert taken is not None
    journal.write(*taken)
    rows, last = journal.load(DAY_US)
    assert last == 2
    rebuilt = index_from_journal(rows, DAY_US)
    assert _check(rebuilt, ["a", "c", "e"], 3) == [True, True, False]
    assert _check(rebuilt, ["a"], 0) == [False]  # the first copy itself, replayed
