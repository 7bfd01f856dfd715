"""Temporary `kafka_bootstrap` until tests/conftest.py provides it (reads the env var)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.skip("set KAFKA_BOOTSTRAP_SERVERS (tests/conftest.py will start a broker)")
    return servers
