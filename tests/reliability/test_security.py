"""Privacy and exposure: canaries in prompts, responses and API keys never reach Kafka, logs,
the spool or the lake; listeners bind to 127.0.0.1 by default; optional token auth on the
proxy and the OTLP receiver; Kafka SASL/SSL settings reach both Kafka clients; `costpipe sql`
refuses writes without `--write`.

Canaries enter through the SDK's OpenAI wrapper (a stub upstream answers with a canary), the
proxy (canary prompt, canary API key, canary answer) and the OTLP receiver (gen_ai.prompt,
gen_ai.completion, input/output message attributes and span events), while a real worker
turns the events into costs, windows and lake files. Then every byte we can find is searched:
every topic of the run (Faust changelogs included), the worker's logs, this process's logs,
the producer spool (an SDK producer aimed at a dead broker spools its events) and every lake
file (raw bytes and decoded Parquet values).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from aiohttp import web
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from costpipe import analytics
from costpipe.collectors import sdk
from costpipe.collectors.openai_wrapper import wrap_openai
from costpipe.collectors.otlp import OtlpReceiver
from costpipe.collectors.producer import BatchingProducer
from costpipe.core.kafka_clients import (
    confluent_admin,
    confluent_consumer,
    confluent_producer,
    faust_broker_options,
)
from costpipe.core.settings import Settings
from tests.openai_stub import StubUpstream, start_site
from tests.otlp_payloads import export_request, span
from tests.proxy_harness import Servers
from tests.reliability.support import wait_until
from tests.streams_support.harness import StreamsRun

pytestmark = [pytest.mark.reliability]

CANARY = f"CANARY{uuid.uuid4().hex[:12]}"
PROMPT, ANSWER, KEY = f"{CANARY}-prompt", f"{CANARY}-answer", f"sk-{CANARY}-apikey"
TOKEN = "costpipe-test-token"


class CanaryUpstream(StubUpstream):
    """The stub upstream, answering non-streaming chats with the canary text."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        doc = await request.json()
        if doc.get("stream"):
            return await super().chat(request)
        self.requests.append(doc)
        return web.json_response({
            "id": "chatcmpl-canary", "object": "chat.completion", "created": int(time.time()),
            "model": doc["model"], "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": ANSWER}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})


def _contains(blob: bytes) -> bool:
    """Canary in raw bytes, or in the values of an Arrow IPC stream / Parquet file."""
    if CANARY.encode() in blob:
        return True
    for read in (lambda b: pa.ipc.open_stream(pa.py_buffer(b)).read_all(),
                 lambda b: pq.read_table(pa.BufferReader(b))):
        try:
            table = read(blob)
        except Exception:  # not that format
            continue
        if CANARY in repr(table.to_pylist()):
            return True
    return False


def _topic_hits(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Canary hits per topic, reading every topic up to where it ends now (idle collectors
    keep sending heartbeats, so "until quiet" would never end)."""
    consumer = Consumer(confluent_consumer(settings, f"canary-{uuid.uuid4().hex}"))
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        for partition in (meta.partitions if meta and meta.partitions else {}):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=10)
            if high > low:
                ends[(topic, partition)] = high
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
    hits: dict[str, int] = {}
    seen = 0
    deadline = time.monotonic() + 120
    while ends and time.monotonic() < deadline:
        for msg in consumer.consume(500, 0.5):
            if msg.error():
                continue
            if msg.offset() + 1 >= ends.get((msg.topic(), msg.partition()), 0):
                ends.pop((msg.topic(), msg.partition()), None)
            seen += 1
            parts = [msg.key() or b"", msg.value() or b""]
            parts += [k.encode() + (v or b"") for k, v in (msg.headers() or [])]
            if any(_contains(p) for p in parts):
                hits[msg.topic()] = hits.get(msg.topic(), 0) + 1
    consumer.close()
    assert seen > 0, "read nothing from the topics"
    return hits


def _file_hits(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.is_file() and _contains(p.read_bytes())]


def _serve(loop: asyncio.AbstractEventLoop, app: web.Application) -> tuple[Any, str]:
    return asyncio.run_coroutine_threadsafe(start_site(app), loop).result(10)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_canaries_never_reach_kafka_logs_spool_or_lake(kafka_bootstrap: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1")
    settings = run.settings
    producer = BatchingProducer(settings, settings.topics.requests, spool_dir=tmp_path / "spool",
                                metrics=False)
    dead = Settings.model_validate({**settings.model_dump(), "kafka": {
        "bootstrap_servers": "127.0.0.1:9"}})
    spooling = BatchingProducer(dead, settings.topics.requests, metrics=False,
                                spool_dir=tmp_path / "spool-offline", delivery_timeout_s=1.0)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    upstream = CanaryUpstream()
    import openai

    worker = run.start_worker()
    try:
        # 1. SDK wrapper: online and (spooled) offline
        up_runner, up_url = _serve(loop, upstream.app())
        for sink in (producer, spooling):
            sdk.configure(settings, sink)
            client = wrap_openai(openai.OpenAI(base_url=up_url + "/v1", api_key=KEY,
                                               max_retries=0), operation="chat")
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
            assert reply.choices[0].message.content == ANSWER
        # 2. proxy with token auth
        with Servers(upstream, producer, settings, provider="openai", auth_token=TOKEN) as px:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
            auth = {"Authorization": f"Bearer {KEY}"}
            assert requests.post(px.url + "/v1/chat/completions", json=body, headers=auth,
                                 timeout=10).status_code == 401
            assert requests.post(px.url + "/v1/chat/completions", json=body, timeout=10,
                                 headers={**auth, "X-Costpipe-Token": "wrong"}).status_code == 401
            ok = requests.post(px.url + "/v1/chat/completions", json=body, timeout=10,
                               headers={**auth, "X-Costpipe-Token": TOKEN})
            assert ok.status_code == 200 and ANSWER in ok.text
            client = openai.OpenAI(base_url=px.url + "/v1", api_key=KEY, max_retries=0,
                                   default_headers={"X-Costpipe-Token": TOKEN})
            list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                messages=[{"role": "user", "content": PROMPT}]))
        # 3. OTLP receiver with token auth: canaries in attributes and span events
        receiver = OtlpReceiver(settings, producer, auth_token=TOKEN)
        otlp_runner, otlp_url = _serve(loop, receiver.app())
        spans = []
        for key in ("gen_ai.prompt", "gen_ai.completion", "gen_ai.input.messages",
                    "gen_ai.output.messages", "gen_ai.system_instructions"):
            one = span({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 5,
                        "gen_ai.usage.output_tokens": 3, key: PROMPT})
            event = one.events.add()
            event.name = "gen_ai.content.prompt"
            attr = event.attributes.add()
            attr.key, attr.value.string_value = "gen_ai.prompt", PROMPT
            spans.append(one)
        payload = export_request(spans).SerializeToString()
        proto = {"Content-Type": "application/x-protobuf"}
        assert requests.post(otlp_url + "/v1/traces", data=payload, headers=proto,
                             timeout=10).status_code == 401
        assert requests.post(otlp_url + "/v1/traces", data=payload, timeout=10,
                             headers={**proto, "X-Costpipe-Token": TOKEN}).status_code == 200
        producer.flush()
        spooling.close(timeout=3.0)
        assert spooling.stats["spool_pending"] > 0, "the offline event should sit in the spool"
        # 4. the worker costs all 1 + 2 + 5 events into the lake
        def lake_rows() -> int:
            con = analytics.connect(location=str(tmp_path / "lake"))
            try:
                return con.execute("SELECT count(*) FROM costs").fetchall()[0][0]
            finally:
                con.close()

        assert wait_until(lambda: lake_rows() >= 8, 90), run.logs()
        assert worker.poll() is None, run.logs()
        admin = AdminClient(confluent_admin(settings))
        names = [t for t in admin.list_topics(timeout=10).topics
                 if run.env["COSTPIPE_SERVERS__WORKER_GROUP"] in t
                 or t.startswith(settings.topics.requests.split(".")[0])]
        hits = _topic_hits(settings, names)
    finally:
        sdk.configure()
        producer.close()
        run.stop_all()
        for runner in ("up_runner", "otlp_runner"):
            if runner in locals():
                asyncio.run_coroutine_threadsafe(locals()[runner].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    print(f"\ncanary search: {len(names)} topics, worker logs, caplog, spool, lake")
    assert not hits, f"canary on Kafka topics: {hits}"
    files = _file_hits(tmp_path / "lake", tmp_path / "spool", tmp_path / "spool-offline",
                       tmp_path / "state", tmp_path / "worker")
    assert not files, f"canary in files: {files}"
    assert any((tmp_path / "spool-offline").rglob("*")), "spool should hold the offline event"
    assert CANARY not in run.logs() and CANARY not in caplog.text
    assert not [p for p in tmp_path.glob("worker*.log") if CANARY in p.read_text()]


def test_listeners_bind_to_loopback_by_default() -> None:
    servers = Settings().servers
    assert servers.proxy_listen.startswith("127.0.0.1:")
    assert servers.otlp_listen.startswith("127.0.0.1:")
    assert servers.metrics_host == "127.0.0.1"
    from costpipe.streams.app import app
    assert app.conf.web_bind == "127.0.0.1"


def test_sasl_ssl_settings_reach_both_kafka_clients(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=test-ca", "-keyout", str(tmp_path / "ca.key"), "-out",
                    str(ca)], check=True, capture_output=True, timeout=60)
    settings = Settings.model_validate({"kafka": {
        "bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc", "sasl_password": "pw-secret",
        "ssl_cafile": str(ca)}})
    for config in (confluent_producer(settings), confluent_consumer(settings, "g"),
                   confluent_admin(settings)):
        assert config["bootstrap.servers"] == "k1:9093,k2:9093"
        assert config["security.protocol"] == "SASL_SSL"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512"
        assert (config["sasl.username"], config["sasl.password"]) == ("svc", "pw-secret")
        assert config["ssl.ca.location"] == str(ca)
    faust_options = faust_broker_options(settings)
    assert faust_options["broker"] == "kafka://k1:9093;kafka://k2:9093"
    creds = faust_options["broker_credentials"]
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "svc", "pw-secret", "SCRAM-SHA-512")
    assert creds.ssl_context is not None
    assert "pw-secret" not in repr(settings)


def test_sql_refuses_writes_without_flag(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTPIPE_")}
    lake = ["--lake", str(tmp_path / "lake")]
    for statement in ("CREATE TABLE t AS SELECT 1", "COPY (SELECT 1) TO 'x.csv'",
                      "SELECT 1; DROP VIEW costs", "ATTACH 'x.db'", "INSTALL httpfs"):
        done = subprocess.run([sys.executable, "-m", "costpipe.cli", "sql", statement, *lake],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "--write" in done.stderr, (statement, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x.db").exists()
    done = subprocess.run([sys.executable, "-m", "costpipe.cli", "sql", "--write",
                           "COPY (SELECT 42 AS x) TO 'x.csv'", *lake], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.csv").exists()
