"""Secure Kafka end to end: SASL/SCRAM over TLS with ACLs, on the session broker's SASL_SSL
listener (private CA made by the test, SCRAM users and ACLs made per test through Kafka's admin
API). A collector principal may only write the requests and GPU topics, a worker principal owns
its outputs, internal topics and group, an analyst principal may read nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from costpipe.broker import secure
from costpipe.cli.summary import reconcile
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.producer import BatchingProducer
from costpipe.collectors.simulator import simulate
from costpipe.core.kafka_clients import confluent_consumer
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE
from tests.reliability.support import wait_until
from tests.secure_kafka import SecureCluster
from tests.streams_support.harness import StreamsRun, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(420)]

CANARY = "Zq9-canary-secret-7Hx"


def _secure_run(kafka_bootstrap: str, cluster: SecureCluster, tmp: Path,
                **overrides: str) -> tuple[StreamsRun, dict[str, tuple[str, str]]]:
    """A run's topics (made by the admin), and a collector, worker and analyst user."""
    run = StreamsRun(kafka_bootstrap, tmp, **overrides)
    t = run.settings.topics
    members = f"{t.requests.rsplit('.', 2)[0]}.members.v1"
    run.env["COSTPIPE_TOPICS__MEMBERS"] = members
    users = {role: cluster.user(role) for role in ("collector", "worker", "analyst")}
    group = run.env["COSTPIPE_SERVERS__WORKER_GROUP"]
    cluster.grant(secure.collector_grants(users["collector"][0], [t.requests, t.gpu]))
    cluster.grant(secure.worker_grants(
        users["worker"][0], inputs=[t.requests, t.gpu], group=group,
        outputs=[t.costs, t.partials, t.windows, t.alerts, t.deadletter, t.gpuwork, members]))
    return run, users


def _settings(run: StreamsRun, cluster: SecureCluster, user: tuple[str, str],
              tmp: Path) -> Settings:
    base = run.settings.model_dump()
    base["kafka"] = {**base["kafka"], **cluster.kafka_settings(*user)}
    base["state_dir"] = tmp
    base["topics"]["members"] = run.env["COSTPIPE_TOPICS__MEMBERS"]
    return Settings.model_validate(base)


def test_a_simulated_fleet_through_sasl_ssl_with_acls_is_exact(
        kafka_bootstrap: str, secure_cluster: SecureCluster, tmp_path: Path) -> None:
    run, users = _secure_run(kafka_bootstrap, secure_cluster, tmp_path,
                             COSTPIPE_WINDOWS__SECONDS="10",
                             COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS="5")
    run.env.update(secure_cluster.env(*users["worker"]))
    metrics_port = free_port()
    run.env["COSTPIPE_SERVERS__METRICS_PORT"] = str(metrics_port)
    secrets = [password for _, password in users.values()]
    collector = _settings(run, secure_cluster, users["collector"], tmp_path / "collector")
    worker_view = _settings(run, secure_cluster, users["worker"], tmp_path / "view")
    requests = BatchingProducer(collector, collector.topics.requests, metrics=False)
    gpu = BatchingProducer(collector, collector.topics.gpu, GPU_SAMPLE, "gpu_sample",
                           metrics=False)
    try:
        run.start_worker()
        summary = simulate(collector, rate=100.0, duration_s=40, seed=5, gpus=4,
                           start=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60),
                           as_fast_as_possible=True, request_sink=requests.emit_batch,
                           gpu_sink=gpu.emit_batch)
        requests.close(timeout=30.0)
        gpu.close(timeout=30.0)
        assert requests.stats["spool_pending"] == 0, requests.stats

        def exact() -> bool:
            send_watermark(collector, dt.datetime.now(dt.UTC))
            return not reconcile(worker_view, summary)

        assert wait_until(exact, 180, every=3.0), (reconcile(worker_view, summary),
                                                    run.logs())
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=10).read().decode()
        for worker in run.workers:  # the lake is checked: no need to wait for a clean stop
            worker.kill()
    finally:
        run.stop_all()
    logs = run.logs()
    assert "Traceback" not in logs, logs
    help_text = _cli(["worker", "--help"], run.env, tmp_path).stdout
    lake_bytes = b"".join(p.read_bytes() for p in (tmp_path / "lake").rglob("*") if p.is_file())
    for secret in secrets:  # no password in logs, metrics, --help or the lake
        assert secret not in logs and secret not in page and secret not in help_text
        assert secret.encode() not in lake_bytes
    assert "costpipe_" in page and lake_bytes

    # `alerts tail` as an operator who may read the alerts; the analyst may read nothing.
    operator = secure_cluster.user("operator")
    secure_cluster.grant([
        secure.Grant(operator[0], secure.AclOperation.READ, secure.ResourceType.TOPIC,
                     worker_view.topics.alerts),
        secure.Grant(operator[0], secure.AclOperation.READ, secure.ResourceType.GROUP,
                     "costpipe-alerts-tail-", prefixed=True)])
    tail = _cli(["alerts", "tail", "--from-beginning", "--idle-exit", "4"],
                {**run.env, **secure_cluster.env(*operator)}, tmp_path)
    assert tail.returncode == 0, tail.stdout + tail.stderr
    refused = _cli(["alerts", "tail", "--from-beginning", "--idle-exit", "10"],
                   {**run.env, **secure_cluster.env(*users["analyst"])}, tmp_path)
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1 and f"User:{users['analyst'][0]}" in out, out
    assert "Traceback" not in out, out
    analyst = _settings(run, secure_cluster, users["analyst"], tmp_path / "analyst")
    consumer = Consumer(confluent_consumer(analyst, f"analyst-{users['analyst'][0]}"))
    try:
        consumer.assign([TopicPartition(analyst.topics.requests, 0, 0)])
        messages = []
        deadline = time.monotonic() + 15
        while not messages and time.monotonic() < deadline:
            messages = consumer.consume(10, 1.0)
    finally:
        consumer.close()
    assert messages and all(m.error() for m in messages), "the analyst read data"
    denied = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}
    assert {m.error().code() for m in messages} <= denied, [m.error() for m in messages]


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costpipe.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_kafka_status_names_the_setting_for_a_wrong_password_and_an_untrusted_ca(
        kafka_bootstrap: str, secure_cluster: SecureCluster, tmp_path: Path) -> None:
    run, users = _secure_run(kafka_bootstrap, secure_cluster, tmp_path)
    env = {**run.env, **secure_cluster.env(users["collector"][0], CANARY)}
    wrong = _cli(["kafka", "status"], env, tmp_path)
    out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0, out
    assert "kafka.sasl_password" in out and "Traceback" not in out, out
    assert CANARY not in out

    other_ca = tmp_path / "other-ca.pem"
    import trustme

    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    env = {**run.env, **secure_cluster.env(*users["collector"], cafile=other_ca)}
    untrusted = _cli(["kafka", "status"], env, tmp_path)
    out = untrusted.stdout + untrusted.stderr
    assert untrusted.returncode != 0, out
    assert "kafka.ssl_cafile" in out and "Traceback" not in out, out

    env = {**run.env, **secure_cluster.env(*users["collector"])}
    good = _cli(["kafka", "status"], env, tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert users["collector"][1] not in good.stdout + good.stderr


def test_a_denied_collector_spools_and_delivers_once_granted(
        kafka_bootstrap: str, secure_cluster: SecureCluster, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    run, users = _secure_run(kafka_bootstrap, secure_cluster, tmp_path)
    name = users["analyst"][0]  # no grant yet
    settings = _settings(run, secure_cluster, users["analyst"], tmp_path / "collector")
    producer = BatchingProducer(settings, settings.topics.requests, metrics=False,
                                delivery_timeout_s=3.0)
    try:
        summary = simulate(settings, rate=50.0, duration_s=10, seed=3, internal_share=0.0,
                           as_fast_as_possible=True, request_sink=producer.emit_batch,
                           gpu_sink=lambda _b: None, flush_timeout_s=5.0)
        producer.flush(5.0)
        assert wait_until(lambda: producer.stats["spool_pending"] == summary.requests, 30), \
            producer.stats
        denied = [r.getMessage() for r in caplog.records if "denies" in r.getMessage()]
        assert denied and name in denied[0] and settings.topics.requests in denied[0], denied
        secure_cluster.grant(secure.collector_grants(name, [settings.topics.requests]))
        assert wait_until(lambda: producer.stats["spool_pending"] == 0, 60), producer.stats
    finally:
        producer.close(timeout=10.0)
    reader = Consumer(confluent_consumer(run.settings, f"r-{name}"))
    try:
        got = 0
        for partition in range(run.settings.topics.partitions):
            low, high = reader.get_watermark_offsets(
                TopicPartition(run.settings.topics.requests, partition), timeout=10)
            got += high - low
    finally:
        reader.close()
    assert got >= 1 and producer.stats["sent"] == summary.requests, producer.stats

    # A wrong password: the collector keeps its events and names the settings to fix.
    caplog.clear()
    wrong = _settings(run, secure_cluster, (name, CANARY), tmp_path / "wrong")
    producer = BatchingProducer(wrong, wrong.topics.requests, metrics=False,
                                delivery_timeout_s=3.0)
    try:
        producer.emit({"request_id": "r-wrong-password", "operation": "chat",
                       "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1,
                       "output_tokens": 1})
        producer.flush(5.0)
        assert wait_until(lambda: producer.stats["spool_pending"] == 1, 30), producer.stats
        hints = [r.getMessage() for r in caplog.records
                 if "kafka.sasl_password" in r.getMessage()]
        assert hints and "kept in the spool" in hints[0], caplog.text[-2000:]
        assert CANARY not in caplog.text
        assert "SASL authentication error" not in caplog.text, "librdkafka's lines too"
        began = time.monotonic()
        producer.emit({"request_id": "r-wrong-password-2", "operation": "chat",
                       "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 1,
                       "output_tokens": 1})
        producer.flush(30.0)  # a refusal ends the wait: waiting would not help
        assert time.monotonic() - began < 10.0
    finally:
        producer.close(timeout=3.0)


def test_a_worker_denied_a_topic_stops_naming_it_and_its_principal(
        kafka_bootstrap: str, secure_cluster: SecureCluster, tmp_path: Path) -> None:
    run, users = _secure_run(kafka_bootstrap, secure_cluster, tmp_path)
    t = run.settings.topics
    name = users["worker"][0]
    secure_cluster.revoke([secure.Grant(name, op, secure.ResourceType.TOPIC, t.gpu)
                           for op in (secure.AclOperation.READ, secure.AclOperation.DESCRIBE)])
    env = {**run.env, **secure_cluster.env(*users["worker"])}
    result = _cli(["worker", "--workdir", str(tmp_path / "w")], env, tmp_path, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert t.gpu in out and f"User:{name}" in out and "Traceback" not in out, out
    assert users["worker"][1] not in out
    assert os.environ.get("COSTPIPE_KAFKA__SASL_PASSWORD") is None

    wrong = _cli(["worker", "--workdir", str(tmp_path / "w")],
                 {**run.env, **secure_cluster.env(name, CANARY)}, tmp_path, timeout=120)
    out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "kafka.sasl_password" in out, out
    assert CANARY not in out and "Traceback" not in out, out
    print(result.stderr, wrong.stderr)
