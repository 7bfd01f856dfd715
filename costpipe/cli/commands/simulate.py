"""`costpipe simulate`: send a realistic hybrid fleet's requests and GPU samples to Kafka."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import typer

from costpipe.cli.commands._edges import fail, parse_time
from costpipe.core.settings import get_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        rate: float = typer.Option(100.0, help="Requests per simulated second (mean)."),
        duration: int = typer.Option(60, help="Simulated seconds."),
        internal_share: float = typer.Option(0.4, help="Share of requests served by own models."),
        seed: int = typer.Option(0, help="Same seed, same events."),
        gpus: int = typer.Option(4, help="Simulated GPUs serving the own models."),
        spike: list[str] = typer.Option(
            [], help="Cost spike OPERATION:FACTOR:AT_SECONDS:DURATION_SECONDS (repeatable)."),
        start: str | None = typer.Option(None, help="Simulated clock start, ISO 8601 (UTC if "
                                                    "no zone); default now."),
        as_fast_as_possible: bool = typer.Option(
            False, "--as-fast-as-possible", help="Do not pace to wall time (benchmarks)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Simulate a hybrid AI fleet; print what was sent and its expected list cost."""
        from costpipe.collectors.simulator import Spike
        from costpipe.collectors.simulator import simulate as run_simulation

        if rate <= 0:
            fail("simulate", f"--rate must be > 0 (got {rate})")
        if duration <= 0:
            fail("simulate", f"--duration must be > 0 seconds (got {duration})")
        if not 0 <= internal_share <= 1:
            fail("simulate", f"--internal-share must be between 0 and 1 (got {internal_share})")
        if gpus < 0 or (internal_share > 0 and gpus == 0):
            fail("simulate", f"--gpus must be >= 1 when --internal-share > 0 (got {gpus})")
        try:
            spikes = [Spike.parse(text) for text in spike]
        except ValueError as exc:
            fail("simulate", str(exc))
        begin = None if start is None else parse_time("simulate", "--start", start)
        settings = get_settings()
        summary = _run_with_progress(run_simulation, settings, rate, duration, internal_share,
                                     seed, gpus, spikes, begin, as_fast_as_possible, as_json)
        if as_json:
            typer.echo(json.dumps(summary.to_json(), indent=2))
        else:
            _print_summary(summary)
        stuck = sum(s.get("spool_pending", 0) + s.get("in_flight", 0) + s.get("queued", 0)
                    for s in summary.producer_stats.values())
        if stuck:
            typer.secho(f"costpipe simulate: {stuck} events not delivered yet are kept in "
                        "the spool on disk (Kafka unreachable or refusing them, see above); "
                        "they are sent when a collector next runs", err=True,
                        fg=typer.colors.YELLOW)


def _run_with_progress(run: Any, settings: Any, rate: float, duration: int, share: float,
                       seed: int, gpus: int, spikes: list[Any], begin: dt.datetime | None,
                       fast: bool, quiet: bool) -> Any:
    """Run the simulation with a progress bar on stderr (none with --json: output is data)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    kwargs = dict(rate=rate, duration_s=duration, internal_share=share, seed=seed, gpus=gpus,
                  spikes=spikes, start=begin, as_fast_as_possible=fast)
    if quiet:
        return run(settings, **kwargs)
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} s"), TimeRemainingColumn(), transient=True,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("simulate", total=duration)
        return run(settings, **kwargs,
                   progress=lambda done, _total: bar.update(task, completed=done))
def _print_summary(summary) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"sent {summary.requests:,} requests ({summary.internal_requests:,} internal, "
        f"{summary.external_requests:,} external, {summary.error_requests:,} errors) and "
        f"{summary.gpu_samples:,} GPU samples in {summary.elapsed_s:.1f} s "
        f"({summary.events_per_s:,.0f} events/s)")
    console.print(
        f"tokens: input {summary.input_tokens:,}, output {summary.output_tokens:,}, "
        f"cache read {summary.cache_read_tokens:,}, cache write {summary.cache_write_tokens:,}")
    table = Table("provider", "model", "kind", "requests", "input", "output", "list cost USD")
    for row in summary.by_model:
        table.add_row(row.provider, row.model, row.provider_kind, f"{row.requests:,}",
                      f"{row.input_tokens:,}", f"{row.output_tokens:,}",
                      "" if row.list_cost is None else f"{row.list_cost:.6f}")
    console.print(table)
    console.print(f"expected external list cost: ${summary.expected_external_list_cost}")
    if summary.unpriced_models:
        console.print(f"unpriced: {', '.join(summary.unpriced_models)}")
