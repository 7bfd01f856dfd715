"""`costpipe otlp`: the OTLP/HTTP receiver for OpenTelemetry GenAI spans."""

from __future__ import annotations

import typer

from costpipe.cli.commands._edges import fail, parse_listen, start_metrics
from costpipe.core.settings import get_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def otlp(
        listen: str | None = typer.Option(None, help="HOST:PORT [servers.otlp_listen]"),
        auth_token: str | None = typer.Option(
            None, help="Require exporters to send X-Costpipe-Token: TOKEN [servers.auth_token]"),
        metrics: bool = typer.Option(True, help="Serve Prometheus counters."),
    ) -> None:
        """Receive OTLP/HTTP traces (protobuf or JSON) and emit GenAI spans as request events."""
        from aiohttp import web

        from costpipe.collectors.otlp import OtlpReceiver
        from costpipe.collectors.producer import producer_for

        settings = get_settings()
        host, port = parse_listen("otlp", "--listen", listen or settings.servers.otlp_listen)
        producer = producer_for(settings, "requests")
        if metrics:
            start_metrics("otlp", settings)
        typer.echo(f"OTLP/HTTP on http://{host}:{port}/v1/traces "
                   f"(events -> {settings.topics.requests})", err=True)
        receiver = OtlpReceiver(settings, producer,
                                auth_token=auth_token or settings.servers.auth_token)
        try:
            web.run_app(receiver.app(), host=host, port=port, access_log=None, print=None)
        except OSError as exc:
            fail("otlp", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        finally:
            producer.close()
