"""Start the dashboard: parse --listen, refuse an open port without a token, serve.

Why refuse: the page shows what every team spends; off loopback, anyone who can reach the port
could read it. So a non-loopback address starts only with `dashboard.auth_token` set.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from aiohttp import web

from costpipe.core.settings import Settings
from costpipe.dashboard.app import create_app


class DashboardError(ValueError):
    """A start-up problem, said in one line that names the fix."""


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise DashboardError(f"--listen must be HOST:PORT (e.g. 127.0.0.1:8080), got {listen!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: could resolve to anything


def check_listen(settings: Settings) -> tuple[str, int]:
    host, port = parse_listen(settings.dashboard.listen)
    if not is_loopback(host) and not settings.dashboard.auth_token:
        raise DashboardError(
            f"refusing to serve the dashboard on {settings.dashboard.listen} without a token: "
            "anyone who reaches it could read the costs; pass --auth-token (or set "
            "COSTPIPE_DASHBOARD__AUTH_TOKEN), or listen on 127.0.0.1")
    return host, port


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def start(settings: Settings, live: bool = True) -> tuple[web.AppRunner, str]:
    """Start serving in the running loop; returns the runner (to clean up) and the URL."""
    host, port = check_listen(settings)
    runner = web.AppRunner(create_app(settings, live=live), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise DashboardError(f"cannot listen on {host}:{port} ({exc.strerror}); pass "
                             "--listen with a free port") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, url_of(host, bound)


def serve(settings: Settings, live: bool = True,
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM (blocking)."""
    async def main() -> None:
        runner, url = await start(settings, live)
        if on_ready:
            on_ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    import contextlib

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
