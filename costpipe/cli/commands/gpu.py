"""`costpipe gpu`: run the NVML sampler and send GPU samples to Kafka."""

from __future__ import annotations

import signal
import threading

import typer

from costpipe.cli.commands._edges import fail, parse_duration, start_metrics
from costpipe.core.settings import get_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def gpu(
        interval: str = typer.Option("1s", help="Sampling interval: 500ms, 1s, 10s, ..."),
        once: bool = typer.Option(False, "--once", help="Take one sample, send it, print it."),
        metrics: bool = typer.Option(True, help="Serve Prometheus counters."),
    ) -> None:
        """Sample every GPU (and MIG instance) with NVML and send GPU samples to Kafka."""
        from costpipe.collectors.gpu import GpuSampler, GpuUnavailable, run

        seconds = parse_duration("gpu", "--interval", interval)
        settings = get_settings()  # first: a bad config is named before any NVML probing
        sampler = GpuSampler(interval_s=seconds)
        try:
            count = sampler.open()
        except GpuUnavailable as exc:
            fail("gpu", str(exc), code=3)
        from costpipe.collectors.producer import producer_for

        producer = producer_for(settings, "gpu")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        try:
            if once:
                run(sampler, producer, ticks=1, on_batch=_print_batch)
                return
            if metrics:
                start_metrics("gpu", settings)
            typer.echo(f"sampling {count} GPU(s) every {seconds:g}s -> {settings.topics.gpu}",
                       err=True)
            run(sampler, producer, stop=stop)
        finally:
            sampler.close()
            producer.close()


def _print_batch(batch: object) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("gpu", "uuid", "mig", "util %", "mem used GiB", "power W", "energy mJ", "temp C")
    for row in batch.to_pylist():  # type: ignore[attr-defined]
        mem = row["memory_used_bytes"]
        table.add_row(
            str(row["gpu_index"]), row["gpu_uuid"], row["mig_instance"] or "",
            _show(row["utilization_pct"]), _show(None if mem is None else mem / 1024**3),
            _show(row["power_w"]), _show(row["energy_mj"]), _show(row["temperature_c"]),
        )
    Console().print(table)


def _show(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if isinstance(value, float) else str(value)
