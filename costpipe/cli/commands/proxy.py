"""`costpipe proxy`: the OpenAI-compatible metering proxy."""

from __future__ import annotations

import typer

from costpipe.cli.commands._edges import fail, parse_listen, parse_url, start_metrics
from costpipe.core.settings import get_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def proxy(
        upstream: str = typer.Option(..., help="Upstream base URL, e.g. https://api.openai.com/v1"
                                     " or http://vllm:8000/v1"),
        provider: str = typer.Option(..., help="Provider name recorded on events, e.g. openai,"
                                     " own-vllm (internal if listed in providers.internal)"),
        listen: str | None = typer.Option(None, help="HOST:PORT [servers.proxy_listen]"),
        operation_header: str = typer.Option("X-Costpipe-Operation",
                                             help="Request header naming the operation"),
        auth_token: str | None = typer.Option(
            None, help="Require clients to send X-Costpipe-Token: TOKEN [servers.auth_token]"),
        inject_usage: bool = typer.Option(
            True, help="Ask streaming upstreams for usage (stream_options.include_usage)"),
        metrics: bool = typer.Option(True, help="Serve Prometheus counters."),
    ) -> None:
        """Forward OpenAI-compatible calls to UPSTREAM and emit one request event per call."""
        from costpipe.collectors.producer import producer_for
        from costpipe.collectors.proxy import Proxy, ProxyConfig, serve

        settings = get_settings()
        parse_url("proxy", "--upstream", upstream)
        if not provider.strip():
            fail("proxy", "--provider must not be empty")
        host, port = parse_listen("proxy", "--listen", listen or settings.servers.proxy_listen)
        config = ProxyConfig(
            upstream=upstream, provider=provider, operation_header=operation_header,
            auth_token=auth_token or settings.servers.auth_token, inject_usage=inject_usage,
        )
        producer = producer_for(settings, "requests")
        if metrics:
            start_metrics("proxy", settings)
        typer.echo(f"proxy http://{host}:{port} -> {upstream} (provider {provider}, "
                   f"events -> {settings.topics.requests})", err=True)
        try:
            serve(Proxy(settings, config, producer), host, port)
        except OSError as exc:
            fail("proxy", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        finally:
            producer.close()
