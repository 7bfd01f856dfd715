"""`costpipe compact`: compact closed hours of the lake and build their rollups now."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def compact(
        lake: str | None = typer.Option(None, "--lake", help="Lake folder/URL (else settings)"),
        closed_after: int | None = typer.Option(
            None, "--closed-after", min=0,
            help="Seconds after its end an hour counts as closed (else "
            "lake.closed_after_seconds)"),
        grace: int | None = typer.Option(
            None, "--grace", min=0,
            help="Delete replaced files this many seconds after their replacement (else "
            "lake.compaction_grace_seconds; 0 = now, only when no query is running)"),
    ) -> None:
        """Merge the small files of closed hours into one sorted file per Kafka partition and
        build the hourly/daily rollups the views read (the worker does this every
        lake.maintenance_seconds on its own; this is for a lake no worker maintains).
        Safe while workers write and queries run."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from costpipe.cli.commands.analytics import _fail, _settings
        from costpipe.lake.layout import open_lake
        from costpipe.lake.maintenance import maintain

        settings = _settings(lake)
        options = settings.lake.model_copy()
        if closed_after is not None:
            options.closed_after_seconds = closed_after
        if grace is not None:
            options.compaction_grace_seconds = grace
        try:
            target = open_lake(settings.lake.location, settings.lake)
        except (OSError, ValueError) as exc:
            _fail(f"cannot open lake {settings.lake.location!r}: {exc}")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(what: str, done: int, total: int) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(f"{what}", total=total)
                bar.update(tasks[what], completed=done)

            try:
                result = maintain(target, options, progress=progress)
            except OSError as exc:
                _fail(f"compaction failed (run it again; nothing is lost): {exc}", 1)
        for name, stats in result.compaction.items():
            if stats.files_before:
                typer.echo(f"{name}: {stats.files_before} live file(s) -> {stats.files_after}"
                           f" ({stats.merged_streams} merged, {stats.deleted} replaced file(s)"
                           " deleted)")
        rollups = result.rollups
        typer.echo(f"rollups: {rollups.hours_built} hour(s) and {rollups.days_built} day(s) "
                   f"built, {rollups.stale_deleted} stale deleted; hours closed before "
                   f"{result.closed_before:%Y-%m-%d %H:%M} UTC")
