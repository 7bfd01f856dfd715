"""The progress watchdog: stalled means messages wait and nothing is read, or a long rebalance;
a stalled worker replaces itself with a fresh process that counts the restart."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, NamedTuple

import pytest

from costpipe.streams import watchdog
from costpipe.streams.app import app


class TopicPartition(NamedTuple):
    topic: str
    partition: int


TP = TopicPartition("costpipe.requests.v1", 0)
ALERTS = TopicPartition("costpipe.alerts.v1", 0)


class FakeConsumer:
    def __init__(self) -> None:
        self.read: dict[Any, int | None] = {TP: 10, ALERTS: 3}
        self.high: dict[Any, int] = {TP: 12, ALERTS: 50}  # the log end: offset 11 waits

    def assignment(self) -> set[Any]:
        return {TP, ALERTS}

    @property
    def _read_offset(self) -> dict[Any, int | None]:
        return self.read

    def highwater(self, tp: Any) -> int:
        return self.high[tp]


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> FakeConsumer:
    fake = FakeConsumer()
    monkeypatch.setattr(type(app), "consumer", property(lambda self: fake))
    monkeypatch.setattr(type(app), "rebalancing", False, raising=False)
    watchdog._read.clear()
    watchdog._rebalancing_since[0] = None
    return fake


def test_waiting_messages_and_no_reads_age_a_partition(consumer: FakeConsumer) -> None:
    assert watchdog.progress_age(100.0) == 0.0  # first look
    assert watchdog.progress_age(130.0) == 30.0  # offset 11 waits, nothing read since
    consumer.read[TP] = 11
    assert watchdog.progress_age(131.0) == 0.0  # progress (and now caught up)


def test_a_caught_up_partition_and_the_alerts_topic_never_stall(consumer: FakeConsumer) -> None:
    consumer.high[TP] = 11  # offset 10 read, the log ends at 11: nothing waits
    watchdog.progress_age(0.0)
    assert watchdog.progress_age(1000.0) == 0.0  # the webhook may wait on alerts on purpose


def test_a_long_rebalance_ages_too(consumer: FakeConsumer, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    consumer.high[TP] = 11
    monkeypatch.setattr(type(app), "rebalancing", True, raising=False)
    watchdog.progress_age(10.0)
    assert watchdog.progress_age(70.0) == 60.0


def test_a_restart_is_a_fresh_process_that_counts_it() -> None:
    """`restart` execs `python -m costpipe.cli <same arguments>` in the same process."""
    script = ("import sys; sys.argv = ['costpipe', '--help']\n"
              "from costpipe.streams import watchdog\n"
              "watchdog.restart('stall')\n")
    env = {k: v for k, v in os.environ.items() if k != watchdog.RESTARTS_ENV}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout and "worker" in done.stdout  # the CLI ran after the exec


def test_the_restart_count_survives_the_exec_in_the_metric() -> None:
    script = ("from prometheus_client import REGISTRY\n"
              "from costpipe.streams import watchdog\n"
              "print(REGISTRY.get_sample_value('costpipe_worker_restarts_total', "
              "{'reason': 'stall'}))\n")
    env = {**os.environ, watchdog.RESTARTS_ENV: "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2.0"
