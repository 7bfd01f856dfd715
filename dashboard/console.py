"""The SQL console: ad-hoc SELECTs on the lake views, and no way to write or leave the lake.

Two locks, so one mistake is not enough: a statement check (one statement, SELECT / EXPLAIN /
a table macro call only) and DuckDB's own sandbox on the console's connection: external access
off, only the lake folder readable (`allowed_directories`), configuration locked after the
views are built, so no statement can turn them back on. COPY ... TO, ATTACH, INSTALL/LOAD,
CREATE, EXPORT and reading any file outside the lake are refused, each with its own message.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from costpipe import analytics
from costpipe.core.settings import Settings

_ALLOWED = {"SELECT", "EXPLAIN"}
_WHY = {
    "COPY": "COPY would write or read files; the console only reads the lake views",
    "ATTACH": "ATTACH would open another database; the console only reads the lake views",
    "DETACH": "DETACH changes the console's databases; it only reads the lake views",
    "LOAD": "INSTALL/LOAD of extensions is off: nothing is downloaded or loaded",
    "CREATE": "CREATE would change the catalog; the console is read-only",
    "INSERT": "INSERT writes; the console is read-only",
    "UPDATE": "UPDATE writes; the console is read-only",
    "DELETE": "DELETE writes; the console is read-only",
    "DROP": "DROP changes the catalog; the console is read-only",
    "ALTER": "ALTER changes the catalog; the console is read-only",
    "EXPORT": "EXPORT DATABASE writes files; the console only reads",
    "SET": "SET changes settings; the console's settings are locked",
    "VARIABLE_SET": "SET changes settings; the console's settings are locked",
    "PRAGMA": "PRAGMA can change settings; use SELECT * FROM duckdb_settings() to read them",
}


class ConsoleError(ValueError):
    """A statement the console refuses or that failed; the message is for the person."""


@dataclass
class Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    seconds: float
    cap: int
    types: list[str] = field(default_factory=list)


def check(sql: str) -> str:
    """The one statement to run, or ConsoleError saying why not."""
    if not sql.strip():
        raise ConsoleError("type a SELECT statement, e.g. SELECT * FROM dependency_share")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConsoleError(f"not valid SQL: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ConsoleError(f"one statement at a time, please (got {len(statements)})")
    kind = statements[0].type.name
    if kind not in _ALLOWED:
        why = _WHY.get(kind, "the console only runs SELECT and EXPLAIN")
        raise ConsoleError(f"refused {kind} statement: {why}")
    return statements[0].query


def lake_folder(settings: Settings) -> Path | None:
    """The local lake's absolute folder (None for an object-store lake)."""
    location = settings.lake.location
    if "://" in location and not location.startswith("file://"):
        return None
    return Path(location.removeprefix("file://")).expanduser().resolve()


@functools.cache
def _private_temp() -> str:
    """One empty folder per process for DuckDB's spill files, removed at exit."""
    folder = tempfile.mkdtemp(prefix="costpipe-console-")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def locked_connection(settings: Settings) -> duckdb.DuckDBPyConnection:
    """analytics.connect() on the lake, then DuckDB's sandbox on, then locked."""
    folder = lake_folder(settings)
    con = analytics.connect(settings, location=str(folder) if folder else None)
    allowed = [] if folder is None else [str(folder) + "/"]
    # DuckDB allows its temp (spill) directory too; make it one nobody else writes to
    con.execute("SET temp_directory = ?", [_private_temp()])
    con.execute("SET allowed_directories = ?", [allowed])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


class Console:
    """Runs checked statements on a locked connection, with a row cap and a time limit."""

    def __init__(self, settings: Settings, refresh_seconds: float = 10.0) -> None:
        self.settings = settings
        self.cap = settings.dashboard.sql_row_cap
        self.timeout = settings.dashboard.sql_timeout_seconds
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._built = 0.0

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """Call with the lock held. Rebuilt now and then: connect lists the lake's files."""
        if self._con is None or time.monotonic() - self._built > self._refresh:
            if self._con is not None:
                self._con.close()
            self._con = locked_connection(self.settings)
            self._built = time.monotonic()
        return self._con

    def run(self, sql: str, cap: int | None = None) -> Result:
        statement = check(sql)
        cap = min(cap or self.cap, self.cap)
        # one connection, one query at a time: the rollups are the connection's temp tables,
        # which a cursor would not see
        with self._lock:
            return self._run(self._connection(), statement, cap)

    def _run(self, con: duckdb.DuckDBPyConnection, statement: str, cap: int) -> Result:
        timer = threading.Timer(self.timeout, con.interrupt)
        started = time.perf_counter()
        timer.start()
        try:
            relation = con.execute(statement)
            columns = [d[0] for d in relation.description or []]
            types = [str(d[1]) for d in relation.description or []]
            rows = relation.fetchmany(cap + 1)
        except duckdb.InterruptException:
            raise ConsoleError(f"stopped after the console's time limit of {self.timeout:g} s "
                               "(dashboard.sql_timeout_seconds); narrow the query") from None
        except duckdb.PermissionException as exc:
            raise ConsoleError("refused: the console reads the lake and nothing else; "
                               f"{_first_line(exc)}") from None
        except duckdb.Error as exc:
            raise ConsoleError(_first_line(exc)) from None
        finally:
            timer.cancel()
        return Result(columns, rows[:cap], len(rows) > cap, time.perf_counter() - started,
                      cap, types)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:500]
