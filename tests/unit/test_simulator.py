"""Simulator: determinism, fleet shape, GPU physics, and the exact expected list cost."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from genai_prices import Usage, calc_price
from typer.testing import CliRunner

from costpipe.cli import app
from costpipe.collectors.simulator import SimulationSummary, Spike, simulate
from costpipe.core.money import MONEY_QUANTUM
from costpipe.core.settings import Settings
from costpipe.schemas.codec import validate
from costpipe.schemas.records import GPU_SAMPLE, REQUEST_EVENT

START = dt.datetime(2025, 6, 1, 23, 59, 50, tzinfo=dt.UTC)  # crosses a UTC day


def _run(**kwargs) -> tuple[SimulationSummary, pa.Table, pa.Table]:
    requests: list[pa.Table] = []
    gpus: list[pa.Table] = []
    options = {"rate": 60.0, "duration_s": 20, "seed": 3, "gpus": 3, "start": START,
               "as_fast_as_possible": True, **kwargs}
    summary = simulate(Settings(), request_sink=requests.append, gpu_sink=gpus.append,
                       **options)
    return summary, pa.concat_tables(requests), pa.concat_tables(gpus)


def test_same_seed_same_events_and_valid_contracts():
    first, requests, gpu = _run()
    second, requests_again, gpu_again = _run()
    assert requests.equals(requests_again) and gpu.equals(gpu_again)
    assert first.expected_external_list_cost == second.expected_external_list_cost
    _, requests_other, _ = _run(seed=4)
    assert not requests_other.equals(requests)
    now = START + dt.timedelta(minutes=1)
    assert validate(requests.combine_chunks().to_batches()[0], REQUEST_EVENT, now=now)[1] == []
    assert validate(gpu.combine_chunks().to_batches()[0], GPU_SAMPLE, now=now)[1] == []
    assert requests.num_rows == first.requests
    assert pc.count_distinct(requests.column("request_id")).as_py() == requests.num_rows
    assert gpu.num_rows == first.gpu_samples == 3 * 20
    ops = set(requests.column("operation").to_pylist())
    assert ops == {"voice", "text", "code_completion", "reasoning", "embeddings"}


def test_internal_share_and_gpu_attribution():
    summary, requests, _ = _run(rate=400.0, internal_share=0.4)
    assert summary.internal_share == pytest.approx(0.4, abs=0.03)
    internal = requests.filter(pc.equal(requests.column("provider_kind"), "internal"))
    assert internal.column("gpu_uuid").null_count == 0
    assert set(internal.column("provider").to_pylist()) <= set(Settings().providers.internal)
    external = requests.filter(pc.equal(requests.column("provider_kind"), "external"))
    assert external.column("gpu_uuid").null_count == external.num_rows


def test_gpu_samples_follow_load_and_energy_integrates_power():
    _, _, quiet = _run(rate=20.0)
    _, _, busy = _run(rate=20.0, spikes=[Spike("text", 40.0, 5, 10)])
    assert pc.mean(busy.column("utilization_pct")).as_py() > \
        pc.mean(quiet.column("utilization_pct")).as_py() + 5
    for table in (quiet, busy):
        for uuid in set(table.column("gpu_uuid").to_pylist()):
            one = table.filter(pc.equal(table.column("gpu_uuid"), uuid))
            energy = np.asarray(one.column("energy_mj"))
            power = np.asarray(one.column("power_w"))
            steps = np.diff(energy)
            assert (steps > 0).all()
            assert np.allclose(steps, power[1:] * 1000.0, atol=1.0)  # 1 s x W = J


def test_spike_multiplies_one_operation():
    _, base, _ = _run(rate=200.0)
    _, spiked, _ = _run(rate=200.0, spikes=[Spike.parse("reasoning:10:5:5")])

    def count(table: pa.Table) -> int:
        return pc.sum(pc.equal(table.column("operation"), "reasoning")).as_py()

    assert count(spiked) > 3 * count(base)


def test_expected_list_cost_equals_per_request_genai_prices():
    summary, requests, _ = _run(rate=30.0, duration_s=20)
    expected = Decimal(0)
    for row in requests.filter(pc.equal(requests.column("provider_kind"), "external")).to_pylist():
        price = calc_price(
            Usage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
                  cache_read_tokens=row["cache_read_tokens"],
                  cache_write_tokens=row["cache_write_tokens"],
                  input_characters=row["input_characters"],
                  output_audio_tokens=row["output_audio_tokens"]),
            model_ref=row["model"], provider_id=row["provider"],
            genai_request_timestamp=row["timestamp"])
        expected += price.total_price.quantize(MONEY_QUANTUM)
    assert expected > 0
    assert summary.expected_external_list_cost == expected
    voice = requests.filter(pc.equal(requests.column("model"), "tts-1"))
    assert voice.num_rows > 0 and pc.sum(voice.column("input_characters")).as_py() > 0
    assert summary.unpriced_models == []
    assert sum(m.list_cost for m in summary.by_model if m.list_cost is not None) == expected


def test_expected_list_cost_matches_the_streams_catalog():
    from costpipe.streams import pricing

    summary, requests, _ = _run(rate=200.0)
    _cost, list_cost, _status = pricing.price_batch(requests, Settings())
    assert pc.sum(list_cost).as_py() == summary.expected_external_list_cost


def test_cli_rejects_bad_arguments_in_one_line():
    runner = CliRunner()
    for args, needle in (
        (["simulate", "--spike", "voice:x"], "--spike"),
        (["simulate", "--spike", "dance:2:1:1"], "operation must be one of"),
        (["simulate", "--internal-share", "1.5"], "--internal-share"),
        (["simulate", "--start", "yesterday"], "--start"),
        (["simulate", "--gpus", "0"], "--gpus"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert needle in result.output and "Traceback" not in result.output
