"""`costpipe dashboard`: the live web dashboard (costpipe.dashboard, docs/dashboard.md)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        listen: str | None = typer.Option(
            None, "--listen", help="HOST:PORT to serve on (default dashboard.listen, "
                                   "127.0.0.1:8080). Off loopback it needs --auth-token."),
        auth_token: str | None = typer.Option(
            None, "--auth-token", envvar="COSTPIPE_DASHBOARD__AUTH_TOKEN", show_envvar=False,
            help="Token the page asks for: open http://HOST:PORT/?token=TOKEN once (a cookie "
                 "keeps it) or send X-Costpipe-Token. Never logged."),
        lake: str | None = typer.Option(None, "--lake",
                                        help="Lake location (default lake.location)."),
        no_live: bool = typer.Option(
            False, "--no-live", help="Lake only: no Kafka consumer for live windows and "
                                     "alerts (e.g. a copied lake without a cluster)."),
    ) -> None:
        """Serve the dashboard: overview (shares vs target, costs, avoided spend, alerts),
        cost per operation, GPUs, a read-only SQL console and pipeline health, updating live
        as windows close. Reads the lake read-only; its own Kafka consumer group."""
        from costpipe.core.settings import get_settings
        from costpipe.dashboard.server import DashboardError, serve

        settings = get_settings()
        update: dict[str, object] = {}
        if listen is not None:
            update["listen"] = listen
        if auth_token is not None:
            update["auth_token"] = auth_token
        settings = settings.model_copy(update={
            "dashboard": settings.dashboard.model_copy(update=update),
            "lake": settings.lake.model_copy(update={"location": lake}) if lake
            else settings.lake})

        def ready(url: str) -> None:
            typer.echo(f"costpipe dashboard: serving {url} (Ctrl-C stops)", err=False)

        try:
            serve(settings, live=not no_live, on_ready=ready)
        except DashboardError as exc:
            typer.secho(f"costpipe dashboard: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
