"""The aiohttp application: the page, its JSON endpoints, the SQL console and the live stream.

Why aiohttp: it is already costpipe's HTTP stack (a Faust dependency), async, and serves
Server-Sent Events with a plain StreamResponse; the DuckDB queries run in worker threads so a
slow query never stalls the stream. Nothing here logs or returns prompt or response text: the
lake holds none, and the live feed carries only window sums and alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hmac
import io
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from costpipe.core.settings import Settings
from costpipe.dashboard import queries
from costpipe.dashboard.console import Console, ConsoleError
from costpipe.dashboard.data import Store
from costpipe.dashboard.filters import FilterError, Filters
from costpipe.dashboard.health import KafkaProbe, spool_bytes
from costpipe.dashboard.live import LiveFeed

TOKEN_COOKIE = "costpipe_token"
TOKEN_HEADER = "X-Costpipe-Token"
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
# Vega compiles its expressions with Function(): 'unsafe-eval' is the one relaxation
CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
STORE: web.AppKey[Store] = web.AppKey("store", Store)
CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
FEED: web.AppKey[LiveFeed | None] = web.AppKey("feed", object)  # type: ignore[arg-type]
PROBE: web.AppKey[KafkaProbe | None] = web.AppKey("probe", object)  # type: ignore[arg-type]
VEGA: web.AppKey[asyncio.Future[bytes]] = web.AppKey("vega", asyncio.Future)
WARMER: web.AppKey[asyncio.Future[None]] = web.AppKey("warmer", asyncio.Future)

_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def vega_bundle(settings: Settings) -> bytes:
    """Vega + Vega-Lite + vega-embed from the installed vl-convert (no CDN), cached on disk."""
    import vl_convert

    version = getattr(vl_convert, "__version__", "0")
    path = Path(settings.cache_dir).expanduser() / f"vega-bundle-{version}.js"
    with contextlib.suppress(OSError):
        return path.read_bytes()
    data = vl_convert.javascript_bundle().encode()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return data


def _static(name: str) -> bytes:
    return (resources.files("costpipe.dashboard") / "static" / name).read_bytes()


def _same_origin(request: web.Request) -> bool:
    """Browsers say who sent a request in Sec-Fetch-Site (pages cannot forge it); older ones
    only in Origin, which is "null" for this page's own form posts (Referrer-Policy
    no-referrer), so there a null Origin counts only when Sec-Fetch-Site vouches for it."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host


@web.middleware
async def security(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check (when set) and headers that keep the page to itself."""
    token = request.app[SETTINGS].dashboard.auth_token
    if not token and (request.host.rsplit(":", 1)[0].strip("[]").lower()
                      not in _LOOPBACK_NAMES):
        # without a token the dashboard is loopback-only; a page from another site that
        # re-points its own name at 127.0.0.1 (DNS rebinding) arrives with that name here
        raise web.HTTPForbidden(text="costpipe dashboard: open it as http://127.0.0.1:<port>/ "
                                     "(or set dashboard.auth_token)\n")
    if request.method == "POST" and not _same_origin(request):
        # a page on another site may POST to a loopback dashboard (it cannot read the answer,
        # but it could keep the console busy): only this page's own requests are served
        raise web.HTTPForbidden(text="costpipe dashboard: cross-site request refused\n")
    if token:
        given = (request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or "")
        query_token = request.query.get("token")
        if query_token is not None and hmac.compare_digest(query_token.encode(),
                                                           token.encode()):
            # once from a link; the cookie keeps it and the URL loses it
            rest = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPFound(request.rel_url.with_query(rest))
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            raise response
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(
                text="costpipe dashboard: open the link with ?token=<dashboard.auth_token> "
                     f"once, or send the {TOKEN_HEADER} header\n")
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _filters(request: web.Request) -> Filters:
    try:
        return Filters.from_query(request.query)
    except FilterError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": str(exc)}),
                                 content_type="application/json") from None


async def _json_of(request: web.Request, name: str, compute: Callable[..., Any],
                   with_filters: bool = True) -> web.Response:
    store = request.app[STORE]
    f = _filters(request) if with_filters else None
    started = time.perf_counter()
    value = await asyncio.to_thread(store.get, name, f, compute)
    took = 1000 * (time.perf_counter() - started)
    return web.json_response(value, dumps=lambda v: json.dumps(v, default=str),
                             headers={"Server-Timing": f"db;dur={took:.1f}"})


async def _no_content() -> web.Response:
    return web.Response(status=204)


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html",
                        headers={"Cache-Control": "no-store"})


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name == "vega.js":
        body = await asyncio.shield(request.app[VEGA])
        return web.Response(body=body, content_type="text/javascript",
                            headers={"Cache-Control": "max-age=86400"})
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC[name],
                        headers={"Cache-Control": "no-cache"})


async def overview(request: web.Request) -> web.Response:
    return await _json_of(request, "overview", queries.overview)


async def costs(request: web.Request) -> web.Response:
    return await _json_of(request, "costs", queries.costs)


async def gpus(request: web.Request) -> web.Response:
    return await _json_of(request, "gpus", queries.gpus)


async def options(request: web.Request) -> web.Response:
    return await _json_of(request, "options", lambda con, _f: queries.options(con),
                          with_filters=False)


async def window_chart(request: web.Request) -> web.Response:
    """The live window chart's spec for the rows the page holds (POSTed back as JSON)."""
    body = await request.json()
    rows = body.get("rows", [])[-queries.WINDOWS_SHOWN:]
    target = request.app[SETTINGS].target_internal_share
    return web.json_response(await asyncio.to_thread(queries.window_chart, rows, target))


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    probe, feed = request.app[PROBE], request.app[FEED]
    out: dict[str, Any] = {"lag": None, "dead_letters": None, "kafka_error": None,
                           "live": feed is not None}
    if probe is not None:
        out.update(await asyncio.to_thread(probe.snapshot))
    out["spool_bytes"] = await asyncio.to_thread(spool_bytes, settings)
    last_lake = await asyncio.to_thread(
        request.app[STORE].get, "last_window", None,
        lambda con, _f: con.execute("SELECT max(window_end) FROM windows").fetchall()[0][0])
    out["last_window_in_lake"] = None if last_lake is None else last_lake.isoformat()
    out["last_window_live"] = feed.last_window_closed if feed else None
    out["feed_error"] = feed.error if feed else None
    return web.json_response(out)


def _sql_of(request: web.Request, body: dict[str, Any]) -> str:
    sql = body.get("sql")
    if not isinstance(sql, str):
        raise web.HTTPBadRequest(text=json.dumps({"error": "send {\"sql\": \"SELECT ...\"}"}),
                                 content_type="application/json")
    return sql


async def sql(request: web.Request) -> web.Response:
    sql_text = _sql_of(request, await request.json())
    console = request.app[CONSOLE]
    try:
        result = await asyncio.to_thread(console.run, sql_text)
    except ConsoleError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({
        "columns": result.columns, "types": result.types,
        "rows": [[queries._json(v) for v in row] for row in result.rows],
        "truncated": result.truncated, "cap": result.cap,
        "seconds": round(result.seconds, 3)}, dumps=lambda v: json.dumps(v, default=str))


async def sql_csv(request: web.Request) -> web.Response:
    data = await request.post()
    sql_text = _sql_of(request, {"sql": data.get("sql")})
    try:
        result = await asyncio.to_thread(request.app[CONSOLE].run, sql_text)
    except ConsoleError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(result.columns)
    writer.writerows(result.rows)
    return web.Response(text=out.getvalue(), content_type="text/csv", headers={
        "Content-Disposition": 'attachment; filename="costpipe-query.csv"'})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `window` (a window's sums over all keys) and `alert`."""
    feed = request.app[FEED]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    response.headers["Content-Security-Policy"] = CSP
    await response.prepare(request)
    await response.write(f"event: hello\ndata: {json.dumps({'live': feed is not None})}\n\n"
                         .encode())
    if feed is None:
        return response
    queue = feed.subscribe()
    try:
        while True:
            try:
                payload = await asyncio.wait_for(queue.get(), timeout=15)
            except TimeoutError:
                payload = ": keep-alive\n\n"
            if not payload:  # shutting down
                break
            await response.write(payload.encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feed.unsubscribe(queue)
    return response


async def _keep_warm(store: Store, every_seconds: float = 20.0) -> None:
    while True:
        with contextlib.suppress(Exception):  # a lake mid-write: next round
            await asyncio.to_thread(store.get, "overview", Filters(), queries.overview)
        await asyncio.sleep(every_seconds)


def create_app(settings: Settings, live: bool = True) -> web.Application:
    """The dashboard app; `live=False` serves the lake only (no Kafka: tests, a lake copy)."""
    app = web.Application(middlewares=[security], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[STORE] = Store(settings)
    app[CONSOLE] = Console(settings)
    app[FEED] = None
    app[PROBE] = None

    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        app[VEGA] = asyncio.ensure_future(asyncio.to_thread(vega_bundle, settings))
        if live:
            feed = LiveFeed(settings, loop)
            feed.start()
            app[FEED] = feed
            app[PROBE] = KafkaProbe(settings)
        # keep the unfiltered overview warm, so a page paints from the cache, not a scan
        app[WARMER] = asyncio.ensure_future(_keep_warm(app[STORE]))

    async def on_shutdown(app: web.Application) -> None:
        app[WARMER].cancel()
        feed, probe = app[FEED], app[PROBE]
        if feed is not None:
            feed.close_pages()
            await asyncio.to_thread(feed.stop)
        if probe is not None:
            await asyncio.to_thread(probe.close)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", lambda _r: _no_content())
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/costs", costs)
    app.router.add_get("/api/gpus", gpus)
    app.router.add_get("/api/options", options)
    app.router.add_get("/api/health", health)
    app.router.add_post("/api/window-chart", window_chart)
    app.router.add_post("/api/sql", sql)
    app.router.add_post("/api/sql.csv", sql_csv)
    app.router.add_get("/events", events)
    return app
