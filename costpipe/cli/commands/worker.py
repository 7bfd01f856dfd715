"""`costpipe worker`: run the stream processors (one Faust worker; start more to scale out)."""

from __future__ import annotations

import importlib.util
import os
from enum import StrEnum
from pathlib import Path

import typer


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        workdir: Path = typer.Option(None, "--workdir",
                                     help="Folder for Faust's data (default: <state_dir>/worker)"),
        web_port: int = typer.Option(None, "--web-port", min=1024, max=65535,
                                     help="Faust web endpoint port on 127.0.0.1"),
        metrics_port: int = typer.Option(None, "--metrics-port", min=0, max=65535,
                                         help="Prometheus /metrics port (0 = off)"),
        loglevel: LogLevel = typer.Option(LogLevel.warning, "--loglevel",
                                          help="How much the worker logs."),
    ) -> None:
        """Start a worker: costing, GPU allocation, windows, alerts, dead letters, lake sink.

        Workers with the same settings form one consumer group and share the partitions.
        """
        if web_port is not None:
            os.environ["COSTPIPE_SERVERS__WORKER_WEB_PORT"] = str(web_port)
        from costpipe.core.settings import get_settings

        settings = get_settings()
        folder = workdir or settings.state_dir / "worker"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise typer.BadParameter(f"cannot create {folder}: {exc.strerror}",
                                     param_hint="--workdir") from None
        port = settings.servers.metrics_port if metrics_port is None else metrics_port
        if port:
            from prometheus_client import start_http_server

            try:
                start_http_server(port, addr=settings.servers.metrics_host)
            except OSError as exc:
                typer.secho(f"costpipe worker: metrics port {port} unavailable ({exc.strerror});"
                            " use --metrics-port", err=True, fg=typer.colors.YELLOW)
        import costpipe.streams.agents
        from costpipe.streams.app import app as faust_app

        if importlib.util.find_spec("costpipe.streams.lake_sink") is not None:
            import costpipe.streams.lake_sink  # noqa: F401
        faust_app.conf.datadir = str(folder)
        faust_app.main_argv = None
        faust_app.worker_init()
        from faust.worker import Worker

        worker = Worker(faust_app, loglevel=loglevel.value.upper(), quiet=True)
        # Faust drives its terminal spinner by setting the root logger to DEBUG, so every
        # debug call in aiokafka and Faust built a log record (~3 % of the worker's CPU).
        worker.spinner = None
        worker.execute_from_commandline()
