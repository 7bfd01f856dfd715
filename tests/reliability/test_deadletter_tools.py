"""`costpipe deadletter tail` shows what the worker refused; `replay` brings it back once.

A request stamped 20 minutes ahead (a host with a skewed clock) is refused while its neighbour
is costed. `tail --json` names the source, the field and the reason with a safe preview. After
the fix (here: a worker that accepts an hour of skew), `replay` sends it back; replaying twice
still costs it once.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from costpipe import analytics
from costpipe.schemas.records import DEAD_LETTER, REQUEST_EVENT
from tests.reliability.support import wait_until
from tests.streams_support.harness import StreamsRun

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(240)]


def _request(rid: str, when: dt.datetime) -> dict:
    return {"request_id": rid, "timestamp": when, "operation": "chat", "provider": "openai",
            "provider_kind": "external", "model": "gpt-4o-mini", "input_tokens": 100,
            "output_tokens": 10, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "status": "ok"}


def _cli(run: StreamsRun, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "costpipe.cli", *args], env=run.env,
                          capture_output=True, text=True, timeout=60, cwd=run.tmp)
    assert done.returncode == 0, done.stderr
    return done


def _lake_ids(root: Path) -> list[str]:
    if not any((root / "costs").rglob("*.parquet")):
        return []
    con = analytics.connect(location=str(root))
    try:
        return [r[0] for r in con.execute("SELECT record_id FROM costs").fetchall()]
    finally:
        con.close()


def test_tail_shows_the_refusal_and_replay_after_the_fix_costs_it_once(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1")
    lake = tmp_path / "lake"
    now = dt.datetime.now(dt.UTC)
    batch = pa.RecordBatch.from_pylist(
        [_request("on-time", now - dt.timedelta(minutes=10)),
         _request("skewed", now + dt.timedelta(minutes=20))], schema=REQUEST_EVENT)
    try:
        run.start_worker()
        run.send(run.settings.topics.requests, [batch], "request_event")
        assert wait_until(lambda: "on-time" in _lake_ids(lake), 90, every=1.0), run.logs()
        run.read(run.settings.topics.deadletter, DEAD_LETTER, lambda t: t.num_rows >= 1)

        letters = [json.loads(line) for line in
                   _cli(run, "deadletter", "tail", "--json").stdout.splitlines()]
        (letter,) = letters
        assert letter["source_topic"] == run.settings.topics.requests
        assert letter["field"] == "timestamp" and "ahead" in letter["reason"]
        assert "skewed" in letter["original"] and len(letter["original"]) <= 200
        table = _cli(run, "deadletter", "tail").stdout
        assert "1 dead letter(s)" in table and "ahead" in table

        run.stop_all()
        run.env["COSTPIPE_INGEST__MAX_FUTURE_SECONDS"] = "3600"  # the fix
        run.start_worker()
        for _ in range(2):  # replay is idempotent
            out = _cli(run, "deadletter", "replay", "--reason", "ahead").stdout
            assert "replayed 1 dead letter(s)" in out, out
        assert wait_until(lambda: "skewed" in _lake_ids(lake), 90, every=1.0), run.logs()
        wait_until(lambda: False, 5)  # time for a second copy to land, if one would
        ids = _lake_ids(lake)
    finally:
        run.stop_all()
    assert sorted(ids) == ["on-time", "skewed"], ids
