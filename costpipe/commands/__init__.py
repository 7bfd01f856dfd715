"""Command groups of the `costpipe` CLI; each module exposes `register(app)`."""

from __future__ import annotations

import importlib

import typer

# One line per command module; the order is the order in `costpipe --help`.
COMMAND_MODULES = [
    "costpipe.commands.run",
    "costpipe.commands.kafka",
    "costpipe.commands.analytics",
    "costpipe.commands.proxy",
    "costpipe.commands.otlp",
    "costpipe.commands.gpu",
    "costpipe.commands.simulate",
    "costpipe.commands.worker",
    "costpipe.commands.alerts",
]


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
