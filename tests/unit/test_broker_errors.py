"""Broker problems end in one line that says what to install or change, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(tmp_path: Path, *args: str, port: int | None = None,
         **extra: str) -> subprocess.CompletedProcess[str]:
    """`costpipe kafka ...` on free ports (nothing listens there) with an empty cache."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env |= {
        "COSTPIPE_STATE_DIR": str(tmp_path / "state"),
        "COSTPIPE_CACHE_DIR": str(tmp_path / "cache"),
        "COSTPIPE_KAFKA__LOCAL_PORT": str(port or _free_port()),
        "COSTPIPE_KAFKA__LOCAL_CONTROLLER_PORT": str(_free_port()),
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "costpipe.cli", "kafka", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_missing_java_is_one_clear_line(tmp_path: Path) -> None:
    result = _run(tmp_path, "up", PATH=str(tmp_path / "empty-bin"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "`java` is not on PATH" in lines[0] and "install a Java 17+" in lines[0]


def test_missing_maven_is_one_clear_line(tmp_path: Path) -> None:
    java = subprocess.run(["which", "java"], capture_output=True, text=True).stdout.strip()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if java:
        (bin_dir / "java").symlink_to(java)
    result = _run(tmp_path, "up", PATH=str(bin_dir))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not on PATH" in lines[0]
    if java:
        assert "`mvn`" in lines[0] and "Maven" in lines[0]


def test_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = _run(tmp_path, "up", port=port)
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr and "kafka.local_port" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_names_the_key(tmp_path: Path) -> None:
    result = _run(tmp_path, "status", COSTPIPE_KAFKA__LOCAL_PORT="eighty")
    assert result.returncode == 2
    assert "kafka.local_port" in result.stderr and "Traceback" not in result.stderr


def test_status_of_stopped_local_broker(tmp_path: Path) -> None:
    port = _free_port()
    result = _run(tmp_path, "status", port=port)
    assert result.returncode == 1
    assert f"127.0.0.1:{port}: stopped" in result.stdout


def test_cluster_id_never_starts_with_a_dash(tmp_path, monkeypatch) -> None:
    """kafka-storage parses a leading "-" as an option: such an id must be skipped, and a saved
    one replaced (1 fresh broker in 64 failed to format before)."""
    import uuid

    from costpipe import broker

    paths = broker._Paths(tmp_path)
    dash_first = uuid.UUID(bytes=b"\xfb" + bytes(15))  # base64 "-w..." (0xfb -> '-')
    ids = iter([dash_first, uuid.UUID(int=1)])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(ids))
    paths.cluster_id.parent.mkdir(parents=True, exist_ok=True)
    paths.cluster_id.write_text("-stale\n")
    cluster = broker._cluster_id(paths)
    assert not cluster.startswith("-") and len(cluster) == 22
    assert broker._cluster_id(paths) == cluster  # saved and reused
