"""`costpipe heartbeat`: tell the workers by hand that event time has reached now (or --at)."""

from __future__ import annotations

import datetime as dt

import typer

from costpipe.cli.commands._edges import parse_time


def register(app: typer.Typer) -> None:
    @app.command()
    def heartbeat(
        at: str = typer.Option(None, "--at", help="Event time to claim (ISO 8601; default "
                               "now). Nothing stamped before it may still be on its way."),
    ) -> None:
        """Send a watermark heartbeat to every requests and GPU partition, so the last windows
        and GPU buckets close when the fleet is quiet. Collectors send these on their own
        while idle (collectors.heartbeat_seconds); this is for a fleet that has stopped."""
        from costpipe.collectors.heartbeat import send_watermark
        from costpipe.core.settings import get_settings

        until = dt.datetime.now(dt.UTC) if at is None else parse_time("heartbeat", "--at", at)
        try:
            sent = send_watermark(get_settings(), until, timeout=15.0)
        except Exception as exc:  # an unreachable broker: one line, not a traceback
            typer.secho(f"costpipe heartbeat: not delivered ({exc})", err=True,
                        fg=typer.colors.RED)
            raise typer.Exit(1) from None
        typer.echo(f"heartbeat at {until.isoformat()} sent to {sent} partition(s)")
