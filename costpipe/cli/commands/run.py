"""`costpipe run`: the main job end to end on a simulated hybrid fleet (what `make run` runs)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        duration: int = typer.Option(75, min=10, max=86_400,
                                     help="Simulated seconds of traffic, paced in real time."),
        rate: float = typer.Option(150.0, min=1.0, help="Mean requests per second."),
        internal_share: float = typer.Option(0.45, min=0.0, max=1.0,
                                             help="Share of requests served by own models."),
        seed: int = typer.Option(42, help="Same seed, same traffic."),
        gpus: int = typer.Option(4, min=1, max=1024, help="Simulated own GPUs."),
        spike: list[str] = typer.Option(
            ["reasoning:6:45:15"], help="Injected cost spike OPERATION:FACTOR:AT_S:DURATION_S "
                                        "(repeatable)."),
        window_seconds: int = typer.Option(
            5, min=1, help="Window length for this run (short so a 75 s demo shows windows "
                           "closing and a spike alert; production default is 60)."),
        report: Path = typer.Option(Path("report.html"), "--report", help="HTML report path."),
        keep_running: bool = typer.Option(
            False, "--keep-running",
            help="Leave the worker, the broker and the dashboard running afterwards."),
        dashboard: bool = typer.Option(
            True, "--dashboard/--no-dashboard",
            help="Serve `costpipe dashboard` (dashboard.listen, 127.0.0.1:8080) during the run "
                 "and print its URL."),
    ) -> None:
        """Start Kafka, a worker and the dashboard, simulate a hybrid fleet with a cost spike,
        show live progress, then print the cost/dependency summary and write the HTML
        report."""
        import logging
        import os

        from rich.console import Console

        from costpipe.cli.mainjob import RunOptions, run_main_job
        from costpipe.collectors.simulator import Spike
        from costpipe.core.settings import get_settings

        for text in spike:
            try:
                Spike.parse(text)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--spike") from None
        os.environ.setdefault("COSTPIPE_WINDOWS__SECONDS", str(window_seconds))
        os.environ.setdefault("COSTPIPE_WINDOWS__ALLOWED_LATENESS_SECONDS", "10")
        os.environ.setdefault("COSTPIPE_GPU__BUCKET_SECONDS", "5")
        os.environ.setdefault("COSTPIPE_GPU__ALLOWED_LATENESS_SECONDS", "3")
        os.environ.setdefault("COSTPIPE_ALERTS__WARMUP_WINDOWS", "4")
        os.environ.setdefault("COSTPIPE_ALERTS__SPIKE_MIN_DOLLARS", "0.05")
        os.environ.setdefault("COSTPIPE_LAKE__FLUSH_SECONDS", "2")
        # librdkafka's transient start-up notices ("coordinator load in progress: retrying")
        # are noise in the demo's terminal; real failures still surface as errors.
        logging.getLogger("costpipe.kafka").setLevel(logging.ERROR)
        get_settings.cache_clear()
        settings = get_settings()
        options = RunOptions(duration_s=duration, rate=rate, internal_share=internal_share,
                             seed=seed, gpus=gpus, spikes=list(spike), report=report,
                             keep_running=keep_running, dashboard=dashboard)
        from costpipe.broker import BrokerError

        try:
            code = run_main_job(settings, options, Console())
        except (RuntimeError, BrokerError) as exc:
            typer.secho(f"costpipe run: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        raise typer.Exit(code)
