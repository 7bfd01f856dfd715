"""Shared pytest fixtures: one real Kafka per test session, and per-test settings.

Kafka is never mocked. `kafka_bootstrap` uses `KAFKA_BOOTSTRAP_SERVERS` when it is set;
otherwise it starts the project's own broker (`costpipe.broker`) on test-only ports and a
test-only state folder, so it never collides with a `make run` broker on the default ports.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from costpipe import broker
from costpipe.core.settings import LakeSettings, Settings
from tests import secure_kafka

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_PORT = 29092
TEST_CONTROLLER_PORT = 29093
TEST_STATE_DIR = REPO_ROOT / ".costpipe" / "test-kafka"
KEEP_ENV = "COSTPIPE_TEST_KEEP_BROKER"


def session_broker_settings() -> Settings:
    """Settings of the session's own test broker (test ports, test state folder)."""
    return Settings.model_validate(
        {
            "state_dir": TEST_STATE_DIR,
            "kafka": {"local_port": TEST_PORT, "local_controller_port": TEST_CONTROLLER_PORT},
        }
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers ("host:port") of a real Kafka for this test session.

    `KAFKA_BOOTSTRAP_SERVERS` set: that cluster is used as is (nothing started or stopped).
    Otherwise the project's broker runs on 127.0.0.1:29092 with state in
    `.costpipe/test-kafka/`; one already running there is reused, and it is stopped at session
    end only if this session started it (set COSTPIPE_TEST_KEEP_BROKER=1 to keep it running).
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    settings = session_broker_settings()
    already = broker.status(settings).running
    try:
        bootstrap = broker.ensure_running(
            settings, secure=secure_kafka.listener(TEST_STATE_DIR))
    except broker.BrokerError as exc:
        pytest.fail(f"could not start the test Kafka broker: {exc}", pytrace=False)
    yield bootstrap
    if not already and not os.environ.get(KEEP_ENV):
        from costpipe.collectors.producer import close_shared

        close_shared(timeout=5.0)  # before the broker goes: no reconnect noise at exit
        broker.stop(settings)


@pytest.fixture(scope="session")
def secure_cluster(kafka_bootstrap: str) -> secure_kafka.SecureCluster:
    """The session broker's SASL_SSL listener (SCRAM over TLS, ACLs enforced); tests make
    their own users and grants. Not available when the tests run against an external cluster.
    """
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("the secure listener is the project's test broker's; "
                    "KAFKA_BOOTSTRAP_SERVERS points the tests elsewhere")
    if not broker._port_open(secure_kafka.SECURE_PORT):
        pytest.fail(f"the test broker on {kafka_bootstrap} has no SASL_SSL listener on "
                    f"{secure_kafka.SECURE_PORT} (started by an older tree?); stop it with "
                    f"`rm -rf {TEST_STATE_DIR}` after killing it, and run the tests again",
                    pytrace=False)
    from costpipe.core.kafka_clients import quiet_admin

    return secure_kafka.SecureCluster(
        bootstrap=f"127.0.0.1:{secure_kafka.SECURE_PORT}",
        cafile=TEST_STATE_DIR / "tls" / "ca.pem",
        admin=quiet_admin(session_broker_settings()))


@pytest.fixture
def settings_for_tests(tmp_path: Path, kafka_bootstrap: str) -> Settings:
    """A `Settings` for one test: the session's Kafka, private topics, lake under tmp_path.

    - `kafka.bootstrap_servers` = the `kafka_bootstrap` fixture's cluster;
    - every topic name gets a unique suffix (`costpipe.requests.t1a2b3c4.v1`, ...), so tests
      and parallel runs never read each other's messages; partitions = 2;
    - `lake.location` = tmp_path/"lake", `state_dir` = tmp_path/"state".

    Topics are not created up front (the broker auto-creates them with its default partition
    count); call `costpipe.broker.ensure_topics(settings)` when the partition count matters.
    Use a unique consumer `group.id` per test too (e.g. f"g-{uuid.uuid4().hex}").
    """
    suffix = f"t{uuid.uuid4().hex[:8]}"
    defaults = Settings().topics.model_dump()
    defaults.pop("partitions")
    defaults.pop("stage_partitions")
    topics = {
        key: f"{name.rsplit('.', 1)[0]}.{suffix}.{name.rsplit('.', 1)[1]}"
        for key, name in defaults.items()
    }
    return Settings.model_validate(
        {
            "state_dir": tmp_path / "state",
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "topics": {**topics, "partitions": 2},
            "lake": {"location": str(tmp_path / "lake")},
        }
    )


S3_TEST_REGION = "us-east-1"
S3_TEST_KEY = ("costpipe-test", "costpipe-test-secret")  # the local server accepts any keys


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:PORT` of one local S3-compatible server for the test session.

    moto's server (`moto[server]`) in a thread of the test process, on a free port of
    127.0.0.1: no network, no Docker. Each test takes its own bucket (`s3_lake_settings`).
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_lake_settings(s3_endpoint: str) -> LakeSettings:
    """`LakeSettings` of a lake at s3://<fresh bucket>/lake on the session's S3 server."""
    import pyarrow.fs as pafs

    bucket = f"costpipe-{uuid.uuid4().hex[:12]}"
    host = s3_endpoint.partition("://")[2]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", region=S3_TEST_REGION,
                           access_key=S3_TEST_KEY[0], secret_key=S3_TEST_KEY[1],
                           allow_bucket_creation=True)
    fs.create_dir(bucket)
    return LakeSettings(location=f"s3://{bucket}/lake", s3_endpoint=s3_endpoint,
                        s3_region=S3_TEST_REGION, s3_access_key_id=S3_TEST_KEY[0],
                        s3_secret_access_key=S3_TEST_KEY[1])
