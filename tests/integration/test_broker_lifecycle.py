"""`costpipe kafka up | status | down` against a broker of its own (not the session's one).

Runs on a third port pair and its own state folder, so the session fixture's broker and a
user's `make run` broker are never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

pytestmark = pytest.mark.integration

PORT, CONTROLLER_PORT = 29094, 29095


def _java_pids(server_properties: Path) -> list[int]:
    """Pids of Java processes started with this exact server.properties."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args and str(server_properties).encode() in args:
            pids.append(int(proc.name))
    return pids


def _costpipe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "costpipe.cli", "kafka", *args],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )


def test_up_twice_one_broker_down_leaves_no_java(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {
        "COSTPIPE_STATE_DIR": str(state),
        "COSTPIPE_KAFKA__LOCAL_PORT": str(PORT),
        "COSTPIPE_KAFKA__LOCAL_CONTROLLER_PORT": str(CONTROLLER_PORT),
        "COSTPIPE_TOPICS__PARTITIONS": "3",
    }
    server_properties = state.resolve() / "kafka" / "server.properties"
    try:
        first = _costpipe(env, "up")
        assert first.returncode == 0, first.stderr
        pids = _java_pids(server_properties)
        assert len(pids) == 1

        second = _costpipe(env, "up")
        assert second.returncode == 0, second.stderr
        assert _java_pids(server_properties) == pids, "a second `up` started another broker"

        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{PORT}"})
        topics = admin.list_topics(timeout=10).topics
        for name in ("costpipe.requests.v1", "costpipe.gpu.v1", "costpipe.deadletter.v1"):
            assert name in topics
            assert len(topics[name].partitions) == 3

        shown = _costpipe(env, "status")
        assert shown.returncode == 0
        assert f"127.0.0.1:{PORT}: running" in shown.stdout
        assert "costpipe.requests.v1: ok" in shown.stdout
    finally:
        down = _costpipe(env, "down")
    assert down.returncode == 0, down.stderr
    assert "Kafka stopped" in down.stdout
    assert _java_pids(server_properties) == []
    after = _costpipe(env, "status")
    assert after.returncode == 1 and "stopped" in after.stdout
