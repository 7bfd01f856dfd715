"""The broker SIGKILLed for 30 s while the worker runs and a hybrid fleet keeps sending.

The worker must carry on by itself once the broker is back (progress resumes, its health page
says ok), lose nothing, and keep GPU costing whole: every own-model request allocated to its
bucket (none left `gpu_unattributed`) and, per (GPU, bucket), allocated + idle = that GPU's
cost computed independently from the lake's own samples. Uses a broker of its own (ports
29098/29099, state under tmp_path), so the session's broker is never touched.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
import urllib.request
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import duckdb
import pytest

from costpipe import broker
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.producer import BatchingProducer
from costpipe.collectors.simulator import simulate
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE
from tests.reliability.support import lake_costs, wait_until
from tests.streams_support.harness import StreamsRun, free_port

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(600)]

OUTAGE_S = 30.0
PICO = Decimal("0.000000000001")


def _broker_pid(settings: Settings) -> int:
    state = broker.status(settings)
    assert state.pid, "the test broker should be running"
    return state.pid


def _expected_gpu_costs(lake: Path, settings: Settings) -> dict[tuple[str, int], Decimal]:
    """(gpu, bucket start µs) -> GPU cost from the lake's samples, by the documented rule:
    $/GPU-hour x bucket + energy (counter delta from the previous bucket's last sample)."""
    gpu = settings.gpu
    bucket_us = gpu.bucket_seconds * 1_000_000
    rows = duckdb.sql(
        f"SELECT gpu_uuid, epoch_us(timestamp) AS ts, energy_mj, power_w, interval_s "
        f"FROM read_parquet('{lake}/gpu_samples/**/*.parquet') ORDER BY gpu_uuid, ts").fetchall()
    out: dict[tuple[str, int], Decimal] = {}
    last_counter: dict[str, int] = {}
    by_bucket: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for uuid, ts, energy, power, interval in rows:
        by_bucket.setdefault((uuid, ts - ts % bucket_us), []).append((energy, power, interval))
    amortised = gpu.dollars_per_gpu_hour * gpu.bucket_seconds / Decimal(3600)
    for (uuid, bucket), samples in sorted(by_bucket.items()):
        previous = last_counter.get(uuid)
        final = samples[-1][0]
        if previous is not None and final is not None and final >= previous:
            energy_mj = final - previous
        else:
            energy_mj = int(sum((Decimal(repr(p)) * Decimal(repr(i)) * 1000
                                 for _, p, i in samples), Decimal(0)).to_integral_value())
        if final is not None:
            last_counter[uuid] = final
        cost = amortised + Decimal(energy_mj) / Decimal(3_600_000_000) * gpu.dollars_per_kwh \
            * gpu.pue
        out[(uuid, bucket)] = cost.quantize(PICO, rounding=ROUND_HALF_EVEN)
    return out


def test_a_broker_outage_keeps_every_own_model_request_allocated(tmp_path: Path) -> None:
    own = Settings.model_validate({
        "state_dir": tmp_path / "broker",
        "kafka": {"local_port": 29098, "local_controller_port": 29099},
        "topics": {"partitions": 2},
    })
    bootstrap = broker.ensure_running(own)
    web = free_port()
    run = StreamsRun(bootstrap, tmp_path, COSTPIPE_LAKE__FLUSH_SECONDS="1",
                     COSTPIPE_SERVERS__WORKER_WEB_PORT=web,
                     COSTPIPE_SERVERS__WORKER_STALL_SECONDS="60")
    settings = run.settings
    requests = BatchingProducer(settings, settings.topics.requests, metrics=False,
                                delivery_timeout_s=3.0, spool_dir=tmp_path / "spool-r")
    gpus = BatchingProducer(settings, settings.topics.gpu, GPU_SAMPLE, "gpu_sample",
                            metrics=False, delivery_timeout_s=3.0, spool_dir=tmp_path / "spool-g")
    killed_at: list[float] = []

    def outage() -> None:
        time.sleep(12.0)
        os.kill(_broker_pid(own), signal.SIGKILL)  # no clean shutdown: as a crash
        killed_at.append(time.monotonic())
        time.sleep(OUTAGE_S)
        broker.ensure_running(own)

    chaos = threading.Thread(target=outage)
    try:
        worker = run.start_worker()
        chaos.start()
        summary = simulate(settings, rate=400.0, duration_s=60, seed=7, gpus=4,
                           internal_share=0.5, request_sink=requests.emit_batch,
                           gpu_sink=gpus.emit_batch)
        chaos.join()
        requests.close(timeout=90.0)
        gpus.close(timeout=90.0)
        assert requests.stats["spooled"] > 0, "the outage should have sent events to the spool"
        assert requests.stats["spool_pending"] == 0 and gpus.stats["spool_pending"] == 0
        lake = tmp_path / "lake"

        def drained() -> bool:
            send_watermark(settings, dt.datetime.now(dt.UTC))
            return lake_costs(lake).rows >= summary.requests

        assert wait_until(drained, 240, every=3.0), run.logs()
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/costpipe/health",
                                    timeout=10) as reply:
            health = json.loads(reply.read())
        alive = worker.poll() is None
        time.sleep(5)  # the last idle lines and windows
        statuses = dict(duckdb.sql(
            f"SELECT pricing_status, count(*) FROM read_parquet('{lake}/costs/**/*.parquet') "
            "WHERE provider_kind = 'internal' AND record_type <> 'idle' GROUP BY ALL"
        ).fetchall())
        charged = {(g, int(b.timestamp() * 1_000_000)): c for g, b, c in duckdb.sql(
            f"SELECT gpu_uuid, bucket_start, sum(cost) FROM "
            f"read_parquet('{lake}/costs/**/*.parquet') WHERE provider_kind = 'internal' "
            "GROUP BY ALL").fetchall()}
        expected = _expected_gpu_costs(lake, settings)
    finally:
        chaos.join()
        run.stop_all()
        requests.close(timeout=5.0)
        gpus.close(timeout=5.0)
        broker.stop(own)
    assert alive, run.logs()
    assert health["status"] == "ok", health
    assert lake_costs(tmp_path / "lake").rows == summary.requests
    assert statuses == {"gpu_allocated": summary.internal_requests}, statuses
    closed = {k: v for k, v in charged.items() if k in expected}
    assert closed, "no GPU bucket closed"
    wrong = {k: (closed[k], expected[k]) for k in closed if closed[k] != expected[k]}
    assert not wrong, list(wrong.items())[:5]
