"""Argument parsing and one-line failures shared by the collector-edge commands.

Why: `proxy`, `otlp` and `gpu` take the same kinds of inputs (host:port, durations, URLs) and
must all fail the same way on bad input: one line naming the option, exit status 2, no
traceback.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import NoReturn
from urllib.parse import urlsplit

import typer

from costpipe.core.settings import Settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def fail(command: str, message: str, code: int = 2) -> NoReturn:
    typer.secho(f"costpipe {command}: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def parse_time(command: str, option: str, value: str) -> dt.datetime:
    """ISO 8601 ('2026-12-01T10:00:00Z', offsets allowed) -> an aware datetime (UTC if none)."""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        fail(command, f"{option} must be ISO 8601 such as 2026-12-01T10:00:00Z (got {value!r})")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def parse_duration(command: str, option: str, value: str) -> float:
    """'500ms', '1s', '2m', '1.5' (seconds) -> seconds > 0."""
    match = _DURATION.match(value)
    seconds = float(match.group(1)) * _UNITS[match.group(2)] if match else 0.0
    if seconds <= 0:
        fail(command, f"{option} must be a positive duration such as 500ms, 1s or 2m "
                      f"(got {value!r})")
    return seconds


def parse_listen(command: str, option: str, value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(command, f"{option} must be HOST:PORT such as 127.0.0.1:8787 (got {value!r})")
    return host, int(port)


def parse_url(command: str, option: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fail(command, f"{option} must be an http(s) URL such as https://api.openai.com/v1 "
                      f"(got {value!r})")
    return value


def start_metrics(command: str, settings: Settings) -> None:
    """Serve the Prometheus counters; a busy port is a warning, not a reason to stop.

    Each collector command has its own default port (servers.<command>_metrics_port) so a
    proxy, an OTLP receiver, a GPU sampler and a worker can share one host; 0 turns it off.
    """
    from costpipe.core.metrics import start_metrics_server

    key = f"{command}_metrics_port"
    wanted = getattr(settings.servers, key, settings.servers.metrics_port)
    if wanted == 0:
        return
    try:
        port = start_metrics_server(settings, wanted)
    except OSError as exc:
        typer.secho(
            f"costpipe {command}: metrics endpoint not started on "
            f"{settings.servers.metrics_host}:{wanted} ({exc.strerror}); "
            f"set COSTPIPE_SERVERS__{key.upper()} to another port", err=True,
            fg=typer.colors.YELLOW)
        return
    typer.echo(f"metrics on http://{settings.servers.metrics_host}:{port}/metrics", err=True)
