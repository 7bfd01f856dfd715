"""GPU sampler against fake NVML devices (the pynvml calls are replaced, not the sampler)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pyarrow as pa
import pynvml
import pytest
from typer.testing import CliRunner

from costpipe.cli import app
from costpipe.collectors.gpu import GpuSampler, GpuUnavailable, run
from costpipe.schemas.codec import validate
from costpipe.schemas.records import GPU_SAMPLE
from tests.fake_nvml import GIB, FakeGpu, FakeNvml


class BatchList:
    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def emit_batch(self, batch: Any) -> None:
        self.batches.append(batch)


def test_one_gpu_all_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([FakeGpu(0)]).install(monkeypatch)
    with GpuSampler(interval_s=2.0, host="node-1") as sampler:
        batch = sampler.sample()
    assert batch.schema.equals(GPU_SAMPLE)
    valid, rejections = validate(batch, GPU_SAMPLE)
    assert rejections == [] and valid.num_rows == 1
    row = batch.to_pylist()[0]
    assert row["gpu_uuid"].startswith("GPU-") and row["gpu_index"] == 0
    assert row["host"] == "node-1" and row["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert row["utilization_pct"] == 50.0 and row["power_w"] == 300.0
    assert (row["memory_used_bytes"], row["memory_total_bytes"]) == (10 * GIB, 80 * GIB)
    assert row["energy_mj"] == 1_000_000 and row["temperature_c"] == 60.0
    assert row["interval_s"] == 2.0 and row["mig_instance"] is None


def test_eight_gpus_one_batch_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([FakeGpu(i, util=i * 10) for i in range(8)]).install(monkeypatch)
    sink = BatchList()
    with GpuSampler(interval_s=0.01) as sampler:
        emitted = run(sampler, sink, ticks=3)
    assert emitted == 24 and [b.num_rows for b in sink.batches] == [8, 8, 8]
    assert sink.batches[0].column("utilization_pct").to_pylist() == [i * 10.0 for i in range(8)]
    assert len(set(sink.batches[0].column("gpu_uuid").to_pylist())) == 8


def test_mig_instances_get_their_own_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([FakeGpu(0, mig=[(1, 3 * GIB), (2, 4 * GIB)]), FakeGpu(1)]).install(monkeypatch)
    with GpuSampler() as sampler:
        rows = sampler.sample().to_pylist()
    assert [(r["gpu_index"], r["mig_instance"]) for r in rows] == [
        (0, None), (0, "1"), (0, "2"), (1, None)]
    parent, mig1, mig2, whole = rows
    assert mig1["gpu_uuid"] == "MIG-0-0" and mig1["memory_used_bytes"] == 3 * GIB
    assert mig2["memory_total_bytes"] == 10 * GIB
    assert mig1["utilization_pct"] is None
    # one physical GPU is charged once: each instance its memory share (10 of 80 GiB), the
    # parent the unpartitioned rest; the board's power split the same way, no energy counter
    assert (mig1["gpu_fraction"], mig2["gpu_fraction"], parent["gpu_fraction"]) == (
        0.125, 0.125, 0.75)
    assert mig1["power_w"] + mig2["power_w"] + parent["power_w"] == pytest.approx(300.0)
    assert parent["energy_mj"] is None and mig1["energy_mj"] is None
    assert whole["gpu_fraction"] is None and whole["energy_mj"] == 1_000_000


def test_a_mig_gpu_costs_exactly_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent + instances of a MIG GPU add up to the cost of the same GPU unsplit (to the
    pico-dollar rounding of each row), never to the parent in full plus the instances."""
    from decimal import Decimal

    import pyarrow.compute as pc

    from costpipe.core.settings import Settings
    from costpipe.streams.allocation.allocator import GpuAllocator

    def bucket_cost(gpu: FakeGpu) -> Decimal:
        FakeNvml([gpu]).install(monkeypatch)
        allocator = GpuAllocator(Settings.model_validate(
            {"gpu": {"bucket_seconds": 10, "allowed_lateness_seconds": 0},
             "topics": {"partitions": 1}}), {})
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        with GpuSampler(interval_s=1.0) as sampler:
            for second in range(10):
                allocator.add_samples(sampler.sample(start + dt.timedelta(seconds=second)),
                                      f"gpu:0:{second}", "gpu:0")
        end = int((start + dt.timedelta(seconds=60)).timestamp() * 1_000_000)
        allocator.note_requests(end, "requests:t:0")
        allocator.note_samples_until(end, "gpu:0")
        return pc.sum(allocator.close_ready().column("cost")).as_py()

    split = bucket_cost(FakeGpu(0, mig=[(1, 3 * GIB), (2, 4 * GIB)], energy_mj=0))
    whole = bucket_cost(FakeGpu(0, energy_mj=0))
    assert whole > Decimal("0.005")  # would be ~2x if the parent were charged in full too
    assert abs(split - whole) <= Decimal("3E-12")  # each of 3 rows rounds to the pico-dollar


def test_gpu_lost_mid_run_logged_once_others_continue(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpus = [FakeGpu(i) for i in range(3)]
    FakeNvml(gpus).install(monkeypatch)
    sink = BatchList()
    with GpuSampler(interval_s=0.001) as sampler, caplog.at_level(logging.ERROR):
        run(sampler, sink, ticks=1)
        gpus[1].lost = True
        run(sampler, sink, ticks=3)
    assert [b.num_rows for b in sink.batches] == [3, 2, 2, 2]
    assert sink.batches[-1].column("gpu_index").to_pylist() == [0, 2]
    lost_lines = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost_lines) == 1 and "GPU 1" in lost_lines[0].getMessage()


def test_nvml_error_on_one_field_makes_it_null(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(0, failing={"energy": pynvml.NVMLError_NotSupported,
                              "power": pynvml.NVMLError_Unknown})
    FakeNvml([gpu, FakeGpu(1)]).install(monkeypatch)
    with GpuSampler() as sampler:
        first, second = sampler.sample().to_pylist()
    assert first["energy_mj"] is None and first["power_w"] is None
    assert first["utilization_pct"] == 50.0 and first["temperature_c"] == 60.0
    assert second["energy_mj"] == 1_000_000


@pytest.mark.parametrize("error", [pynvml.NVMLError_LibraryNotFound,
                                   pynvml.NVMLError_DriverNotLoaded])
def test_no_driver_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, error: Any) -> None:
    FakeNvml([], init_error=error).install(monkeypatch)
    with pytest.raises(GpuUnavailable, match=r"^no NVIDIA driver/GPU found: "):
        GpuSampler().open()


def test_zero_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([]).install(monkeypatch)
    with pytest.raises(GpuUnavailable, match="0 GPUs"):
        GpuSampler().open()


def test_cli_without_driver_prints_one_line_and_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound).install(monkeypatch)
    result = CliRunner().invoke(app, ["gpu", "--once"])
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("costpipe gpu: no NVIDIA driver/GPU found")
    assert "Traceback" not in result.output


def test_cli_rejects_bad_interval() -> None:
    result = CliRunner().invoke(app, ["gpu", "--interval", "fast"])
    assert result.exit_code == 2
    assert "--interval" in result.output and "Traceback" not in result.output
