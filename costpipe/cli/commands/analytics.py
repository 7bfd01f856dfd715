"""`costpipe sql`, `costpipe export` and `costpipe report`: the query side of the lake."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from enum import StrEnum
from pathlib import Path

import typer


class OutFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


class ExportFormat(StrEnum):
    parquet = "parquet"
    focus = "focus"


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"costpipe: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _settings(lake: str | None):
    from costpipe.core.settings import get_settings

    settings = get_settings()
    if lake:
        settings = settings.model_copy(deep=True)
        settings.lake.location = lake
    return settings


def _print_table(df, limit: int = 200) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for name in df.columns:
        table.add_column(name, overflow="fold")
    for row in df.head(limit).iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    console = Console()
    console.print(table)
    more = f" (showing {limit})" if df.height > limit else ""
    console.print(f"{df.height} row(s){more}", style="dim")


def _run_one(con, text: str, write: bool, fmt: OutFormat, out: Path | None) -> None:
    import duckdb

    from costpipe.analytics import ReadOnlyError, check_read_only

    try:
        if not write:
            check_read_only(text)
        statements = duckdb.extract_statements(text)
        if not statements:
            _fail("empty query; give a SQL statement, e.g. costpipe sql \"SELECT 1\"")
        for statement in statements[:-1]:
            con.execute(statement.query).fetchall()
        last = statements[-1]
        df = None
        if last.type.name in {"SELECT", "EXPLAIN", "PRAGMA"}:
            df = con.sql(last.query).pl()
        else:  # COPY, CREATE, ... (only reached with --write): run it, do not just say ok
            con.execute(last.query)
    except ReadOnlyError as exc:
        _fail(str(exc))
    except duckdb.Error as exc:
        _fail(f"query failed: {str(exc).splitlines()[0]}", 1)
    if df is None:
        typer.echo("ok")
        return
    if fmt is OutFormat.table:
        _print_table(df)
    elif fmt is OutFormat.parquet:
        if out is None:
            _fail("--format parquet needs --out FILE")
        df.write_parquet(out, compression="zstd")
        typer.echo(f"wrote {df.height} row(s) to {out}")
    else:
        text_out = df.write_csv() if fmt is OutFormat.csv else df.write_json()
        if out is None:
            sys.stdout.write(text_out if text_out.endswith("\n") else text_out + "\n")
        else:
            out.write_text(text_out, encoding="utf-8")
            typer.echo(f"wrote {df.height} row(s) to {out}")


def register(app: typer.Typer) -> None:
    @app.command()
    def sql(
        query: str = typer.Argument(None, help="SQL to run; omit for an interactive prompt"),
        format: OutFormat = typer.Option(OutFormat.table, "--format", "-f"),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the result here"),
        write: bool = typer.Option(False, "--write", help="Allow statements that change state"),
        lake: str | None = typer.Option(None, "--lake", help="Lake folder/URL (else settings)"),
    ) -> None:
        """Query the lake with DuckDB (views: costs, dependency_share, cost_per_operation, ...)."""
        from costpipe import analytics

        con = analytics.connect(_settings(lake))
        if query is not None:
            _run_one(con, query, write, format, out)
            return
        typer.echo("costpipe sql: views costs, gpu_samples, idle_cost, windows, alerts, "
                   "dependency_share, cost_per_operation, avoided_spend, breakeven, "
                   "capacity_by_operation, move_ranking, own_gpu_seconds, hourly_load, "
                   "daily_spend, "
                   "daily_internal_share; macros price_exposure(pct), "
                   "whatif_external_price(pct), whatif_shift(op, pct), "
                   "whatif_moves(ops, pcts), plan_to_target(target). "
                   "End with Ctrl-D or .quit")
        while True:
            try:
                line = input("costpipe> ").strip()
            except EOFError:
                typer.echo("")
                return
            if line in {".quit", ".exit", "quit", "exit"}:
                return
            if line:
                with contextlib.suppress(typer.Exit):  # error line printed; keep the prompt
                    _run_one(con, line, write, OutFormat.table, None)

    @app.command()
    def export(
        date: str = typer.Option(..., "--date", help="UTC day to export, YYYY-MM-DD"),
        format: ExportFormat = typer.Option(ExportFormat.parquet, "--format", "-f"),
        out: Path | None = typer.Option(None, "--out", "-o",
                                        help="Local folder (default "
                                        "<lake>/_exports/date=D/<format>, in the lake)"),
        lake: str | None = typer.Option(None, "--lake", help="Lake folder/URL (else settings)"),
    ) -> None:
        """Compact one day into sorted Parquet (or FinOps FOCUS) files plus manifest.json."""
        from costpipe.lake.export import export_day
        from costpipe.lake.layout import open_lake

        try:
            day = dt.date.fromisoformat(date)
        except ValueError:
            _fail(f"--date {date!r} is not a date; use YYYY-MM-DD, e.g. --date 2026-11-02")
        settings = _settings(lake)
        try:
            result = export_day(open_lake(settings.lake.location, settings.lake), day,
                                format.value, str(out) if out else None)
        except (OSError, ValueError) as exc:
            _fail(f"export failed: {exc}", 1)
        for name, entry in result.manifest["tables"].items():
            sums = ", ".join(f"{k}={v}" for k, v in entry.get("sums", {}).items())
            typer.echo(f"{name}: {entry['rows']} row(s) in {len(entry['files'])} file(s)"
                       + (f"; {sums}" if sums else ""))
        typer.echo(f"manifest: {result.out_dir}/manifest.json")  # a path or an s3:// URL

    @app.command()
    def report(
        out: Path = typer.Option(Path("report.html"), "--out", "-o"),
        lake: str | None = typer.Option(None, "--lake", help="Lake folder/URL (else settings)"),
    ) -> None:
        """Write one self-contained HTML report (works offline) with the key charts."""
        from costpipe import analytics
        from costpipe.analytics.report import build

        settings = _settings(lake)
        html_text = build(analytics.connect(settings), settings.target_internal_share)
        try:
            out.write_text(html_text, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {out}: {exc.strerror}", 1)
        typer.echo(f"wrote {out}")
