"""docker-compose.yml stays honest without Docker: every `costpipe <cmd> --flag` it runs exists
in the CLI, its settings env parses, and Kafka is the official image in KRaft mode."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from costpipe.cli import app
from costpipe.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, Any] = COMPOSE["services"]
CLI = typer.main.get_command(app)
COSTPIPE_SERVICES = sorted(
    name for name, spec in SERVICES.items() if (spec.get("command") or [None])[0] == "costpipe"
)
# Commands still being written in parallel when this test was committed; non-strict, so they
# turn into XPASS once registered. Remove an entry as soon as its command lands.
PENDING: dict[str, str] = {}


def _cases() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.xfail(reason=PENDING[name], strict=False))
        if name in PENDING else name
        for name in COSTPIPE_SERVICES
    ]


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")  # typer may ship its own click: duck-type groups


def _resolve(argv: list[str]) -> tuple[Any, list[str]]:
    """Walk `costpipe group sub ...` down to the command; return it and the remaining args."""
    command: Any = CLI
    rest = list(argv[1:])
    while _is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"`{' '.join(argv)}`: no command {name!r} in the CLI"
        command = command.commands[name]
    return command, rest


def test_expected_services_present() -> None:
    assert {"kafka", "worker", "simulator", "proxy", "otlp"} <= set(SERVICES)
    assert {"worker", "simulator", "proxy", "otlp"} <= set(COSTPIPE_SERVICES)
    assert "lake" in COMPOSE["volumes"]
    assert any(v.startswith("lake:") for v in SERVICES["worker"]["volumes"])


@pytest.mark.parametrize("service", _cases())
def test_service_command_and_flags_exist(service: str) -> None:
    argv = SERVICES[service]["command"]
    command, rest = _resolve(argv)
    assert not _is_group(command), f"{argv} names a group, not a command"
    flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=", 1)[0] in flags, f"{service}: {token} is not an option"


@pytest.mark.parametrize("service", COSTPIPE_SERVICES)
def test_service_environment_is_valid_settings(service: str) -> None:
    environment = {k: str(v) for k, v in SERVICES[service]["environment"].items()}
    assert environment["COSTPIPE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    settings = load_settings(environ=environment)
    assert not settings.uses_local_broker
    assert settings.bootstrap_servers == "kafka:9092"


def test_kafka_is_official_image_in_kraft_mode() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    cluster_id = str(env["CLUSTER_ID"])
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID: 16-byte base64"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 10 * 1024 * 1024


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    assert "pip install ." in text
    for package in ("costpipe", "collectors", "streams", "schemas", "analytics", "lake"):
        assert f"COPY {package} " in text
