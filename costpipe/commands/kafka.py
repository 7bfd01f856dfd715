"""`costpipe kafka up | down | status` (placeholder until the broker manager lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    kafka = typer.Typer(help="Run the local Apache Kafka broker (KRaft) or check the cluster.")
    app.add_typer(kafka, name="kafka")

    @kafka.command()
    def status() -> None:
        """Say whether the broker answers."""
        typer.echo("not built yet")
