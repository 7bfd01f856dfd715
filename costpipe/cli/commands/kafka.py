"""`costpipe kafka up | down | status`: the local Apache Kafka (KRaft) or the given cluster."""

from __future__ import annotations

import typer
from rich.console import Console

from costpipe import broker
from costpipe.core.settings import get_settings

HELP = (
    "Run the local Apache Kafka 3.9.1 broker (KRaft, 127.0.0.1) or check an existing cluster."
    "\n\nWith KAFKA_BOOTSTRAP_SERVERS (or kafka.bootstrap_servers in costpipe.toml) set, "
    "nothing is started or stopped: `up` checks that cluster answers and creates the costpipe "
    "topics there."
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"costpipe kafka: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    kafka = typer.Typer(help=HELP, no_args_is_help=True)
    app.add_typer(kafka, name="kafka")

    @kafka.command()
    def up() -> None:
        """Start the broker if it is not running, wait until it answers, create the topics.

        The first run resolves the broker jars with Maven into ~/.cache/costpipe
        (COSTPIPE_CACHE_DIR overrides), ~25 s. Data and logs go to <state_dir>/kafka/.
        Running it again while the broker runs starts nothing.
        """
        settings = get_settings()
        console = Console(stderr=True)
        try:
            bootstrap = broker.ensure_running(settings, console=console)
        except broker.BrokerError as exc:
            raise _fail(str(exc)) from None
        where = "local broker" if settings.uses_local_broker else "external cluster"
        topics = len(broker.topic_names(settings))
        typer.echo(f"Kafka up: {where} at {bootstrap}, {topics} costpipe topics ready")

    @kafka.command()
    def down(
        timeout: float = typer.Option(
            broker.STOP_TIMEOUT_S, min=1, help="Seconds to wait after SIGTERM before SIGKILL."
        ),
    ) -> None:
        """Stop the local broker cleanly (SIGTERM, then SIGKILL after --timeout). Data is kept."""
        settings = get_settings()
        if not settings.uses_local_broker:
            typer.echo(
                f"Kafka at {settings.bootstrap_servers} is external; costpipe did not start it "
                "and will not stop it"
            )
            return
        try:
            stopped = broker.stop(settings, timeout=timeout)
        except broker.BrokerError as exc:
            raise _fail(str(exc)) from None
        typer.echo("Kafka stopped" if stopped else "Kafka was not running (nothing to stop)")

    @kafka.command()
    def status() -> None:
        """Say whether the broker runs, its bootstrap address and which costpipe topics exist.

        Exit status 0 when it answers, 1 when it does not.
        """
        settings = get_settings()
        state = broker.status(settings)
        kind = "local" if state.managed else "external"
        pid = f", pid {state.pid}" if state.pid else ""
        typer.echo(f"{kind} Kafka at {state.bootstrap}: {state.detail}{pid}")
        if state.running:
            wanted = broker.topic_names(settings)
            missing = "missing (run `costpipe kafka up`)"
            if settings.kafka.sasl_mechanism or settings.kafka.ssl_certfile:
                from costpipe.core.kafka_clients import principal

                missing = (f"missing, or not visible to {principal(settings)} (no DESCRIBE "
                           "ACL; only the topics it uses need one)")
            for name in wanted:
                mark = "ok" if name in state.topics else missing
                typer.echo(f"  {name}: {mark}")
            _print_members(settings)
        else:
            raise typer.Exit(code=1)


def _print_members(settings) -> None:  # type: ignore[no-untyped-def]
    """The worker group's live members and their lake; one warning line if it is split."""
    from costpipe.streams.members import (
        idle_workers_warning,
        live_members,
        read_members,
        split_lake_warning,
    )

    if settings.topics.members not in broker.topic_names(settings):
        return
    members = read_members(settings, timeout=5.0)
    live = live_members(members)
    typer.echo(f"workers of group {settings.servers.worker_group}: {len(live)} live")
    for member in sorted(live, key=lambda m: m.worker):
        typer.echo(f"  {member.host} pid {member.pid}: lake {member.lake}")
    for warning in (split_lake_warning(members), idle_workers_warning(members, settings)):
        if warning:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
