"""The page's read side: a DuckDB connection with the lake views, and a short-lived cache.

Why rebuild the connection now and then: analytics.connect lists the lake's files (and builds
the rollups' temp tables) when it connects, so new files are seen by the next connection. Why
one connection behind a lock, not cursors: the rollups live in the connection's temp tables,
which a cursor (another connection to the same database) does not see. Why a cache: a
figure is one scan of the lake, and several pages (or a reload) asking within seconds need not
scan again; live windows come from Kafka, not from this cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb

from costpipe import analytics
from costpipe.core.settings import Settings
from costpipe.dashboard.console import lake_folder
from costpipe.dashboard.filters import Filters

log = logging.getLogger("costpipe.dashboard")


class Store:
    """Answers by (figure, filter): fresh for `cache_seconds`; up to `stale_seconds` old, the
    cached answer is returned at once and recomputed behind it (so the page paints without
    waiting on a scan); older, it is computed while the caller waits."""

    def __init__(self, settings: Settings, refresh_seconds: float = 10.0,
                 cache_seconds: float = 5.0, stale_seconds: float = 60.0) -> None:
        self.settings = settings
        self._refresh = refresh_seconds
        self._ttl = cache_seconds
        self._stale = stale_seconds
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._built = 0.0
        self._cache: dict[tuple[Any, ...], tuple[float, Any]] = {}
        self._recomputing: set[tuple[Any, ...]] = set()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """Call with the lock held."""
        if self._con is None or time.monotonic() - self._built > self._refresh:
            folder = lake_folder(self.settings)
            if self._con is not None:
                self._con.close()
            self._con = analytics.connect(self.settings,
                                          location=str(folder) if folder else None)
            self._built = time.monotonic()
        return self._con

    def get(self, name: str, f: Filters | None,
            compute: Callable[[duckdb.DuckDBPyConnection, Any], Any]) -> Any:
        key = (name, None if f is None else f.key)
        hit = self._cache.get(key)
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < self._ttl:
                return hit[1]
            if age < self._stale:
                if key not in self._recomputing:
                    self._recomputing.add(key)
                    threading.Thread(target=self._recompute, args=(name, f, compute),
                                     daemon=True).start()
                return hit[1]
        return self._compute(name, f, compute)

    def _recompute(self, name: str, f: Filters | None,
                   compute: Callable[[duckdb.DuckDBPyConnection, Any], Any]) -> None:
        key = (name, None if f is None else f.key)
        try:
            self._compute(name, f, compute)
        except Exception as exc:  # the stale answer stays; the next ask tries again
            log.warning("dashboard: recomputing %s failed: %s", name, exc)
        finally:
            self._recomputing.discard(key)

    def _compute(self, name: str, f: Filters | None,
                 compute: Callable[[duckdb.DuckDBPyConnection, Any], Any]) -> Any:
        key = (name, None if f is None else f.key)
        with self._lock:
            hit = self._cache.get(key)  # another thread may have just computed it
            if hit is not None and time.monotonic() - hit[0] < self._ttl:
                return hit[1]
            value = compute(self._connection(), f)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), value)
        return value
