"""Command groups of the `costpipe` CLI; each module exposes `register(app)`."""

from __future__ import annotations

import importlib

import typer

# One line per command module; the order is the order in `costpipe --help`.
COMMAND_MODULES = [
    "costpipe.cli.commands.run",
    "costpipe.cli.commands.kafka",
    "costpipe.cli.commands.analytics",
    "costpipe.cli.commands.dashboard",
    "costpipe.cli.commands.lake",
    "costpipe.cli.commands.plan",
    "costpipe.cli.commands.exposure",
    "costpipe.cli.commands.forecast",
    "costpipe.cli.commands.proxy",
    "costpipe.cli.commands.otlp",
    "costpipe.cli.commands.gpu",
    "costpipe.cli.commands.simulate",
    "costpipe.cli.commands.worker",
    "costpipe.cli.commands.alerts",
    "costpipe.cli.commands.deadletter",
    "costpipe.cli.commands.heartbeat",
]


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
