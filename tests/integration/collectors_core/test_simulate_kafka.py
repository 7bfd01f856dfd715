"""`simulate` through the shared producers into the real broker: exact counts arrive, and the
Prometheus endpoint shows the producer counters."""

from __future__ import annotations

import urllib.request

import pytest

from costpipe.collectors.simulator import simulate
from costpipe.core.metrics import start_metrics_server
from costpipe.schemas.records import GPU_SAMPLE
from tests.integration.collectors_core.helpers import read_topic

pytestmark = pytest.mark.integration


def test_simulated_fleet_arrives_exactly(settings_for_tests):
    settings = settings_for_tests.model_copy(
        update={"servers": settings_for_tests.servers.model_copy(update={"metrics_port": 0})})
    summary = simulate(settings, rate=1500.0, duration_s=4, seed=5, gpus=2,
                       as_fast_as_possible=True)
    assert summary.producer_stats[settings.topics.requests]["sent"] == summary.requests
    requests = read_topic(settings, settings.topics.requests, summary.requests)
    assert requests.num_rows == summary.requests
    samples = read_topic(settings, settings.topics.gpu, summary.gpu_samples, GPU_SAMPLE)
    assert samples.num_rows == summary.gpu_samples == 8

    port = start_metrics_server(settings)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines()
                if line.startswith("costpipe_producer_events_sent_total")
                and settings.topics.requests in line)
    assert float(line.rsplit(" ", 1)[1]) >= summary.requests
