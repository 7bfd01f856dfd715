"""Hypothesis-generated bad input, mixed with good events, into a running `costpipe worker`.

Bad: undecodable JSON and Arrow bytes, truncated Arrow envelopes, wrong types, negative and
huge (beyond MAX_TOKENS and beyond int64) token counts, ancient and far-future timestamps, a
near-1 MB garbage message, and Arrow batches where only some rows are bad. Good: JSON events,
Arrow batches, events of unknown providers (good input: counted, priced 0 as 'unpriced'), an
event whose tag is as long as a field may be (256 bytes; a 500 KB one is refused), every good
event sent five times and once more with another timestamp (retries). Bad also: NaN and
Infinity, nulls in required fields, over-long text, cache tokens above input, a float token
column (whole numbers cast, 1e30 refused row by row). Checks: every good event is in the lake
exactly once and the lake total equals genai-prices' price for them, no bad one is there,
every message holding something bad has dead letters naming a reason, and the worker is
still alive (never crashed).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from genai_prices import Usage, calc_price
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costpipe import analytics
from costpipe.core.kafka_clients import confluent_producer
from costpipe.schemas.codec import encode_arrow, encode_json
from costpipe.schemas.envelope import ARROW, JSON, headers_for
from costpipe.schemas.records import DEAD_LETTER, MAX_TOKENS, REQUEST_EVENT
from tests.reliability.support import wait_until
from tests.streams_support.harness import StreamsRun

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(300)]

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
TOKEN_FIELDS = ("input_tokens", "output_tokens")
GOOD_KINDS = ("json-good", "json-unknown-provider", "arrow-good", "json-long-tag",
              "json-retry-earlier")


def good(request_id: str, provider: str = "openai", model: str = "gpt-4o-mini",
         **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "timestamp": NOW - dt.timedelta(minutes=30),
            "operation": "chat", "provider": provider, "model": model, "input_tokens": 120,
            "output_tokens": 30, "cache_read_tokens": 0, "cache_write_tokens": 0,
            "status": "ok", **extra}


def arrow(rows: list[dict[str, Any]]) -> bytes:
    return encode_arrow(pa.RecordBatch.from_pylist(rows, schema=pa.schema(
        [f.with_nullable(True) for f in REQUEST_EVENT])))


not_a_number = st.one_of(st.text(st.characters(categories=["L"]), min_size=1, max_size=8),
                         st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_tokens = st.one_of(st.integers(max_value=-1, min_value=-(2**70)),
                       st.integers(min_value=MAX_TOKENS + 1, max_value=2**70))
ancient = st.datetimes(min_value=dt.datetime(1900, 1, 1),
                       max_value=(NOW - dt.timedelta(days=402)).replace(tzinfo=None))
future = st.datetimes(min_value=(NOW + dt.timedelta(hours=3)).replace(tzinfo=None),
                      max_value=dt.datetime(9999, 1, 1))


@st.composite
def bad_message(draw: st.DrawFn, n: int) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """(kind, value, headers) of one message that holds at least one bad event."""
    kind = draw(st.sampled_from(["json-garbage", "arrow-garbage", "arrow-truncated",
                                 "json-wrong-type", "json-tokens", "json-time",
                                 "arrow-tokens", "arrow-time", "arrow-mixed",
                                 "json-non-finite", "arrow-non-finite", "arrow-null",
                                 "json-long-text", "json-cache-above-input",
                                 "arrow-float-tokens"]))
    rid = f"bad-{n}"
    if kind == "json-non-finite":  # Python's json writes Infinity/NaN, as some clients do
        event = good(rid, latency_ms=draw(st.sampled_from([math.inf, -math.inf, math.nan])))
        return kind, json.dumps(event, default=str).encode(), headers_for(JSON, "request_event")
    if kind == "arrow-non-finite":
        value = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        return kind, arrow([good(rid, latency_ms=value)]), headers_for(ARROW, "request_event")
    if kind == "arrow-null":
        row = good(rid)
        row[draw(st.sampled_from(["timestamp", "provider", "model", "operation"]))] = None
        return kind, arrow([row]), headers_for(ARROW, "request_event")
    if kind == "json-long-text":
        field = draw(st.sampled_from(["model", "operation", "team"]))
        event = good(rid, **{field: "m" * draw(st.integers(257, 20_000))})
        return kind, encode_json(event), headers_for(JSON, "request_event")
    if kind == "json-cache-above-input":
        event = good(rid, input_tokens=10, cache_read_tokens=draw(st.integers(11, 10**6)))
        return kind, encode_json(event), headers_for(JSON, "request_event")
    if kind == "arrow-float-tokens":  # a float column: whole numbers cast, 1e30 cannot be
        size = draw(st.integers(2, 6))
        rows = [good(f"good-float-{n}-{i}", input_tokens=120.0) for i in range(size)]
        rows[draw(st.integers(0, size - 1))] = good(rid, input_tokens=draw(
            st.sampled_from([1e30, 0.5, -3.0, math.inf])))
        schema = pa.schema([pa.field("input_tokens", pa.float64()) if f.name == "input_tokens"
                            else f.with_nullable(True) for f in REQUEST_EVENT])
        return kind, encode_arrow(pa.RecordBatch.from_pylist(rows, schema=schema)), \
            headers_for(ARROW, "request_event")
    if kind == "json-garbage":
        value = draw(st.one_of(st.binary(max_size=300),
                               st.text(max_size=200).map(str.encode),
                               st.just(b'{"request_id": "bad", "input_tokens": 1'),
                               st.just(b"[1, 2, 3]"), st.just(b"null")))
        return kind, value, headers_for(JSON, "request_event")
    if kind == "arrow-garbage":
        return kind, draw(st.binary(max_size=300)), headers_for(ARROW, "request_event")
    if kind == "arrow-truncated":
        whole = arrow([good(rid)])
        cut = draw(st.integers(1, len(whole) - 1))
        return kind, whole[:cut], headers_for(ARROW, "request_event")
    if kind == "json-wrong-type":
        event = good(rid)
        event[draw(st.sampled_from([*TOKEN_FIELDS, "timestamp"]))] = draw(not_a_number)
        return kind, json.dumps(event, default=str).encode(), headers_for(JSON, "request_event")
    if kind == "json-tokens":
        event = good(rid, **{draw(st.sampled_from(TOKEN_FIELDS)): draw(bad_tokens)})
        return kind, json.dumps(event, default=str).encode(), headers_for(JSON, "request_event")
    if kind == "json-time":
        when = draw(st.one_of(ancient, future)).replace(tzinfo=dt.UTC)
        return kind, encode_json(good(rid, timestamp=when)), headers_for(JSON, "request_event")
    if kind == "arrow-tokens":
        value = draw(st.integers(max_value=-1, min_value=-(2**63)) | st.integers(
            min_value=MAX_TOKENS + 1, max_value=2**63 - 1))
        row = good(rid, **{draw(st.sampled_from(TOKEN_FIELDS)): value})
        return kind, arrow([row]), headers_for(ARROW, "request_event")
    if kind == "arrow-time":
        when = draw(st.one_of(ancient, future)).replace(tzinfo=dt.UTC)
        return kind, arrow([good(rid, timestamp=when)]), headers_for(ARROW, "request_event")
    # arrow-mixed: good rows with one bad row among them; the good ones must still count
    size = draw(st.integers(2, 6))
    at = draw(st.integers(0, size - 1))
    rows = [good(f"good-mix-{n}-{i}") for i in range(size)]
    rows[at] = good(rid, input_tokens=-draw(st.integers(1, 10**6)))
    return kind, arrow(rows), headers_for(ARROW, "request_event")


def generate(count: int) -> list[tuple[str, bytes, list[tuple[str, bytes]]]]:
    out: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def collect(data: st.DataObject) -> None:
        out.append(data.draw(bad_message(len(out))))

    collect()
    return out


def test_bad_input_is_dead_lettered_and_good_input_counted(kafka_bootstrap: str,
                                                           tmp_path: Path) -> None:
    run = StreamsRun(kafka_bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1")
    topic = run.settings.topics.requests
    bad = generate(300)
    goods: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
    for i in range(60):
        goods.append(("json-good", encode_json(good(f"good-json-{i}")),
                      headers_for(JSON, "request_event")))
    goods.append(("json-unknown-provider", encode_json(good("good-unknown", "acme-llm", "x-1")),
                  headers_for(JSON, "request_event")))
    goods.append(("arrow-good", arrow([good(f"good-arrow-{i}") for i in range(500)]),
                  headers_for(ARROW, "request_event")))
    goods.append(("json-long-tag", encode_json(good("good-long-tag", feature="f" * 256)),
                  headers_for(JSON, "request_event")))  # the longest text a field may hold
    # a client retry with another timestamp (2 h earlier): costed once, like every good event
    # here, which is sent five times (goods * 5 below)
    goods.append(("json-retry-earlier", encode_json(good(
        "good-json-0", timestamp=NOW - dt.timedelta(hours=2, minutes=30))),
        headers_for(JSON, "request_event")))
    oversized = ("oversized-garbage", b"{" + b"x" * 990_000, headers_for(JSON, "request_event"))
    huge_tag = ("json-huge-tag", encode_json(good("bad-huge-tag", feature="f" * 500_000)),
                headers_for(JSON, "request_event"))  # 500 KB in one text field: refused
    messages = [m for pair in zip(bad, goods * 5, strict=False) for m in pair] + [oversized,
                                                                                  huge_tag]
    messages += goods[len(bad):] if len(goods) > len(bad) else []
    producer = Producer(confluent_producer(run.settings, **{"message.max.bytes": 1_000_000}))
    offsets: dict[tuple[int, int], str] = {}

    def delivered(err: Any, msg: Any, kind: str) -> None:
        assert err is None, err
        offsets[(msg.partition(), msg.offset())] = kind

    worker = run.start_worker()
    try:
        for i, (kind, value, headers) in enumerate(messages):
            producer.produce(topic, value=value, headers=headers, key=str(i % 7).encode(),
                             on_delivery=lambda e, m, k=kind: delivered(e, m, k))
            producer.poll(0)
        assert producer.flush(30) == 0
        want_good = {f"good-json-{i}" for i in range(60)} | {f"good-arrow-{i}" for i in range(500)}
        want_good |= {"good-unknown", "good-long-tag"}
        for kind, value, _ in bad:
            if kind in ("arrow-mixed", "arrow-float-tokens"):
                batch = pa.ipc.open_stream(value).read_next_batch()
                want_good |= {r for r in batch.column("request_id").to_pylist()
                              if r.startswith("good-")}

        def lake_ids() -> set[str]:
            con = analytics.connect(location=str(tmp_path / "lake"))
            try:
                return {r[0] for r in con.execute("SELECT record_id FROM costs").fetchall()}
            finally:
                con.close()

        wait_until(lambda: len(lake_ids()) >= len(want_good), 120, every=1.0)
        bad_offsets = {o for o, kind in offsets.items()
                       if kind not in GOOD_KINDS}
        letters = run.read(run.settings.topics.deadletter, DEAD_LETTER,
                           lambda t: bad_offsets <= set(zip(
                               t.column("source_partition").to_pylist(),
                               t.column("source_offset").to_pylist(), strict=True)),
                           timeout=60)
        time.sleep(2)
        alive = worker.poll() is None
        ids = lake_ids()
        con = analytics.connect(location=str(tmp_path / "lake"))
        unknown = con.execute("SELECT pricing_status, cost FROM costs WHERE record_id = "
                              "'good-unknown'").fetchall()
        rows, distinct, lake_total = con.execute(
            "SELECT count(*), count(DISTINCT record_id), sum(cost) FROM costs").fetchall()[0]
        con.close()
    finally:
        run.stop_all()
    lettered = set(zip(letters.column("source_partition").to_pylist(),
                       letters.column("source_offset").to_pylist(), strict=True))
    missing = sorted((offsets[o], o) for o in bad_offsets - lettered)
    kinds = sorted({k for k, _, _ in bad})
    print(f"\nbad messages {len(bad_offsets)} ({len(bad)} hypothesis + 1 oversized; kinds "
          f"{kinds}), dead-letter rows {letters.num_rows}, good events {len(want_good)}, "
          f"in lake {len(ids & want_good)}, lost {len(want_good - ids)}")
    assert alive, run.logs()
    assert want_good <= ids, f"lost good events: {sorted(want_good - ids)[:5]}"
    assert not {i for i in ids if i.startswith("bad-")}, "a bad event reached the lake"
    assert not missing, f"bad messages without a dead letter: {missing[:5]}\n{run.logs()}"
    assert all(r for r in letters.column("reason").to_pylist())
    assert unknown and unknown[0][0] == "unpriced" and unknown[0][1] == 0
    assert "Traceback" not in run.logs(), run.logs()
    # the oracle: every good event costed once, at genai-prices' own price for it
    unit = calc_price(Usage(input_tokens=120, output_tokens=30), "gpt-4o-mini",
                      provider_id="openai",
                      genai_request_timestamp=NOW - dt.timedelta(minutes=30)).total_price
    priced = len(want_good) - 1  # good-unknown costs 0
    assert (rows, distinct) == (len(want_good), len(want_good)), (rows, distinct)
    assert lake_total == (unit * priced).quantize(Decimal("1e-12")), (lake_total, unit, priced)
