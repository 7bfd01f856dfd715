"""The spool reports its unreplayed size in bytes (the `costpipe_producer_spool_bytes` gauge)."""

from __future__ import annotations

from pathlib import Path

from costpipe.collectors.spool import Spool


def test_pending_bytes_follow_append_and_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=4096)
    assert spool.pending_bytes() == 0
    spool.append([(b"k", b"x" * 1000, 10) for _ in range(10)])
    assert 10_000 < spool.pending_bytes() < 11_000
    assert spool.pending_records == 10
    records = spool.read(4)
    spool.commit(records[-1], rows=40, records=4)
    assert 6_000 < spool.pending_bytes() < 7_000
    rest = spool.read(100)
    spool.commit(rest[-1], rows=60, records=6)
    assert spool.pending_bytes() == 0
    spool.close()
