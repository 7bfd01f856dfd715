"""`costpipe alerts tail` as a real subprocess against a real Kafka alerts topic.

Why: the command is how an operator watches alerts live; it must show every alert (past ones
with --from-beginning, new ones as they arrive, even when its output is a pipe) and stop
cleanly on Ctrl-C without a traceback.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pytest
from confluent_kafka import Producer

from costpipe.core.kafka_clients import confluent_producer
from costpipe.core.settings import Settings
from costpipe.schemas.codec import encode_arrow
from costpipe.schemas.envelope import headers_for
from costpipe.schemas.records import ALERT

pytestmark = pytest.mark.integration

COSTPIPE = Path(sys.executable).with_name("costpipe")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _alert(rule: str, key: str, message: str, window_start: dt.datetime | None) -> dict[str, Any]:
    return {"alert_id": uuid.uuid4().hex[:20], "timestamp": dt.datetime.now(dt.UTC),
            "rule": rule, "severity": "critical" if rule.startswith("budget") else "warning",
            "key": key, "window_start": window_start, "observed": 12.5, "threshold": 3.0,
            "message": message}


def _produce(settings: Settings, alert: dict[str, Any]) -> None:
    producer = Producer(confluent_producer(settings))
    batch = pa.RecordBatch.from_pylist([alert], schema=ALERT)
    producer.produce(settings.topics.alerts, value=encode_arrow(batch),
                     headers=headers_for("arrow", "alert"))
    assert producer.flush(10) == 0


def _reader(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_for(proc: subprocess.Popen[str], lines: queue.Queue[str], seen: list[str],
              needles: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(any(n in line for line in seen) for n in needles):
        left = deadline - time.monotonic()
        if left <= 0:
            missing = [n for n in needles if not any(n in line for line in seen)]
            ended = "" if proc.poll() is None else (
                f"\nexited {proc.returncode}; stderr:\n{proc.stderr.read() if proc.stderr else ''}")
            pytest.fail(f"not shown within {timeout}s: {missing}\noutput:\n{''.join(seen)}{ended}")
        try:
            seen.append(lines.get(timeout=min(left, 0.5)))
        except queue.Empty:
            continue


def test_tail_shows_past_and_live_alerts_and_stops_on_sigint(
    settings_for_tests: Settings, kafka_bootstrap: str
) -> None:
    settings = settings_for_tests
    start = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
    first = _alert("spike", "chat/openai/gpt-4o", "cost $12.5 vs baseline $1.0 (k=3)", start)
    second = _alert("budget_hour", "2025-01-01T12", "external spend $12.50 over budget $3",
                    None)  # window_start is nullable in ALERT
    _produce(settings, first)  # before the tail starts: shown thanks to --from-beginning

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "COSTPIPE_TOPICS__ALERTS": settings.topics.alerts, "COLUMNS": "200"}
    env.pop("PYTHONUNBUFFERED", None)  # output to a pipe must still be live
    proc = subprocess.Popen([str(COSTPIPE), "alerts", "tail", "--from-beginning"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _wait_for(proc, lines, seen, [first["rule"], first["key"], first["message"]], timeout=15)
        _produce(settings, second)  # while the tail runs: shown live
        _wait_for(proc, lines, seen, [second["rule"], second["key"], second["message"]], timeout=10)
        assert proc.poll() is None, "tail exited on its own"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr and "Traceback" not in "".join(seen), stderr
    assert rc == 0, f"exit {rc} after SIGINT; stderr:\n{stderr}"
