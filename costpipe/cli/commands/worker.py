"""`costpipe worker`: run the stream processors (one Faust worker; start more to scale out).

Several workers may start from the same folder with the same command: a busy default port
(the Faust web page, /metrics) moves to the next free one and a busy default work folder to
the next free `worker-N`, each said in one line; a port or folder given explicitly that is busy
is a one-line error naming the flag.
"""

from __future__ import annotations

import fcntl
import os
import socket
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import typer

SCAN = 100  # ports / folders tried after a busy default
_held: list[IO[Any]] = []  # folder locks, held for the life of the process


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
        from costpipe.core.settings import get_settings

        settings = get_settings()
        # The folder first: its lock is atomic, so workers started together get different
        # slots, and slot n starts its port search n - 1 above the defaults (no race).
        folder, slot = _folder(workdir, settings.state_dir / "worker")
        web = _port("web page", "127.0.0.1", web_port, settings.servers.worker_web_port,
                    "--web-port", slot)
        os.environ["COSTPIPE_SERVERS__WORKER_WEB_PORT"] = str(web)
        get_settings.cache_clear()
        settings = get_settings()
        port = _port("metrics", settings.servers.metrics_host, metrics_port,
                     settings.servers.metrics_port, "--metrics-port", slot)
        if port:
            from prometheus_client import start_http_server

            try:
                start_http_server(port, addr=settings.servers.metrics_host)
            except OSError as exc:
                _fail(f"cannot serve /metrics on {settings.servers.metrics_host}:{port} "
                      f"({exc.strerror}); choose another with --metrics-port (0 = off)")
        from costpipe.streams.access import AccessError, check_worker_access

        try:
            check_worker_access(settings)
        except AccessError as exc:
            _fail(str(exc))
        from costpipe.streams.faust_workarounds import FaustVersionError, quiet_worker

        try:
            import costpipe.streams.agents
            import costpipe.streams.lake_sink  # noqa: F401
        except FaustVersionError as exc:
            typer.secho(f"costpipe worker: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        from costpipe.streams.app import app as faust_app
        from costpipe.streams.members import RollCall

        RollCall(settings).start()  # warns when the group writes to more than one lake
        faust_app.conf.datadir = str(folder)
        faust_app.main_argv = None
        faust_app.worker_init()
        from faust.worker import Worker

        worker = Worker(faust_app, loglevel=loglevel.value.upper(), quiet=True)
        quiet_worker(worker)
        worker.execute_from_commandline()


def _fail(message: str) -> None:
    typer.secho(f"costpipe worker: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _port(what: str, host: str, explicit: int | None, default: int, flag: str,
          slot: int = 0) -> int:
    """The port to serve `what` on: an explicit one must be free; a busy default moves on
    (worker slot n starts looking n places above it)."""
    if explicit is not None:
        if explicit and not _free(host, explicit):
            _fail(f"{flag} {explicit} is in use on {host}; choose another port")
        return explicit
    if default == 0 or (slot == 0 and _free(host, default)):
        return default
    for port in range(default + max(slot, 1), min(default + SCAN, 65535)):
        if _free(host, port):
            typer.echo(f"costpipe worker: {what} on port {port} (port {default} is in use or "
                       f"kept for the first worker of this folder; {flag} sets it)", err=True)
            return port
    _fail(f"no free {what} port from {default} to {default + SCAN - 1}; set {flag}")
    raise AssertionError  # unreachable


def _claim(folder: Path) -> bool:
    """Lock `folder` for this process; False when another live worker holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+b")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    _held.append(handle)
    return True


def _folder(explicit: Path | None, default: Path) -> tuple[Path, int]:
    """(the worker's own data folder, its slot: 0 for the default or an explicit folder, n-1
    for `worker-n`). An explicit folder must be free; a busy default moves on."""
    try:
        if explicit is not None:
            if not _claim(explicit):
                _fail(f"--workdir {explicit} is used by another running worker; give each "
                      "worker its own")
            return explicit, 0
        for n in range(1, SCAN):
            folder = default if n == 1 else default.with_name(f"{default.name}-{n}")
            if _claim(folder):
                if n > 1:
                    typer.echo(f"costpipe worker: {default} is used by another worker; using "
                               f"{folder} (--workdir sets it)", err=True)
                return folder, n - 1
    except OSError as exc:
        _fail(f"cannot use the work folder {explicit or default}: {exc.strerror} "
              "(--workdir sets it)")
    _fail(f"no free work folder next to {default}; set --workdir")
    raise AssertionError  # unreachable
