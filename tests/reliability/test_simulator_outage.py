"""Broker stopped in the middle of a paced simulator run: the simulator never stalls, every
event arrives once the broker is back (exact distinct count), nothing is dropped.

Uses a broker of its own (ports 29096/29097, state under tmp_path) so the session's broker and
other engineers' tests are never touched. The outage is the issue's 30 s.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from costpipe import broker
from costpipe.collectors.producer import BatchingProducer
from costpipe.collectors.simulator import simulate
from costpipe.core.settings import Settings
from costpipe.schemas.records import GPU_SAMPLE
from tests.integration.collectors_core.helpers import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

OUTAGE_S = 30.0


def test_broker_outage_mid_run_loses_nothing(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "state_dir": tmp_path / "state",
        "kafka": {"local_port": 29096, "local_controller_port": 29097},
        "topics": {"partitions": 2},
    })
    broker.ensure_running(settings)
    requests = BatchingProducer(settings, settings.topics.requests, metrics=False,
                                delivery_timeout_s=3.0)
    gpu = BatchingProducer(settings, settings.topics.gpu, GPU_SAMPLE, "gpu_sample",
                           metrics=False, delivery_timeout_s=3.0)
    ticks: list[float] = []
    restart_errors: list[str] = []

    def outage() -> None:
        time.sleep(4.0)
        broker.stop(settings)
        time.sleep(OUTAGE_S)
        for _ in range(3):  # the test is about the simulator: a slow restart is not its fault
            try:
                broker.ensure_running(settings)
                return
            except broker.BrokerError as exc:  # lost in this thread otherwise
                restart_errors.append(str(exc))
                time.sleep(5.0)

    chaos = threading.Thread(target=outage)
    try:
        chaos.start()
        summary = simulate(settings, rate=1000.0, duration_s=44, seed=11, gpus=4,
                           request_sink=requests.emit_batch, gpu_sink=gpu.emit_batch,
                           progress=lambda *_: ticks.append(time.perf_counter()))
        chaos.join()
        assert len(restart_errors) < 3, f"the test broker did not come back: {restart_errors}"
        requests.close(timeout=60.0)
        gpu.close(timeout=60.0)
        assert requests.stats["spooled"] > 0, "the outage should have sent events to the spool"
        assert requests.stats["spool_pending"] == 0 and gpu.stats["spool_pending"] == 0, (
            f"spool not drained 60 s after the restart: requests {requests.stats}, "
            f"gpu {gpu.stats}, broker running: {broker.status(settings).running}")
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert max(gaps) < 1.5, f"simulator stalled: {max(gaps):.2f} s between ticks"

        got = read_topic(settings, settings.topics.requests, summary.requests, timeout=60.0)
        assert pc.count_distinct(got.column("request_id")).as_py() == summary.requests
        samples = read_topic(settings, settings.topics.gpu, summary.gpu_samples, GPU_SAMPLE,
                             timeout=30.0)
        keys = pc.binary_join_element_wise(
            samples.column("gpu_uuid"), pc.cast(samples.column("timestamp"), "string"), "|")
        assert pc.count_distinct(keys).as_py() == summary.gpu_samples
        print(f"requests {summary.requests}, spooled {requests.stats['spooled']}, "
              f"replayed {requests.stats['replayed']}, duplicates "
              f"{got.num_rows - summary.requests}")
    finally:
        chaos.join()
        broker.stop(settings)
