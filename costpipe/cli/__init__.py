"""The `costpipe` command: one typer app; each command group lives in `costpipe/commands/`."""

from __future__ import annotations

import sys

import typer

from costpipe.cli.commands import register_all
from costpipe.core.settings import SettingsError

app = typer.Typer(
    name="costpipe",
    help=(
        "Cost and dependency telemetry for hybrid AI stacks: own models on own GPUs beside "
        "external API providers. Collectors -> Kafka -> Faust workers -> Parquet lake -> DuckDB."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register_all(app)


def main() -> None:
    """Entry point: settings and usage problems end in one line and a non-zero exit."""
    try:
        app()
    except SettingsError as exc:
        typer.secho(f"costpipe: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)


if __name__ == "__main__":
    main()
