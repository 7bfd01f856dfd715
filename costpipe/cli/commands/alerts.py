"""`costpipe alerts tail`: show alerts as they fire (rich table, plain confluent consumer)."""

from __future__ import annotations

import uuid

import typer


def register(app: typer.Typer) -> None:
    alerts = typer.Typer(help="Cost alerts: spikes, budgets, dependency-share regressions.")
    app.add_typer(alerts, name="alerts")

    @alerts.command()
    def tail(
        from_beginning: bool = typer.Option(False, "--from-beginning",
                                            help="Show past alerts too, not only new ones"),
        limit: int = typer.Option(0, "--limit", min=0, help="Stop after N alerts (0 = never)"),
        idle_exit: float = typer.Option(0, "--idle-exit", min=0,
                                        help="Stop after this many quiet seconds (0 = never)"),
    ) -> None:
        """Follow the alerts topic and print each alert as a table row."""
        import time

        from confluent_kafka import Consumer, KafkaError
        from rich.console import Console
        from rich.table import Table

        from costpipe.core.kafka_clients import (
            SecurityLatch,
            confluent_consumer,
            denied_hint,
            security_hint,
        )
        from costpipe.core.settings import get_settings
        from costpipe.schemas.codec import decode
        from costpipe.schemas.records import ALERT

        settings = get_settings()
        latch = SecurityLatch(settings)
        consumer = Consumer(confluent_consumer(
            settings, f"costpipe-alerts-tail-{uuid.uuid4().hex[:8]}", error_cb=latch,
            **{"auto.offset.reset": "earliest" if from_beginning else "latest"}))
        denied = {KafkaError.TOPIC_AUTHORIZATION_FAILED: f"topic {settings.topics.alerts}",
                  KafkaError.GROUP_AUTHORIZATION_FAILED: "consumer groups named "
                  "costpipe-alerts-tail-*"}

        def stop_on_security(error: KafkaError | None) -> None:
            hint = latch.hint
            if error is not None and error.code() in denied:
                hint = denied_hint(settings, denied[error.code()], "READ")
            elif error is not None:
                hint = hint or security_hint(settings, error.str())
            if hint:  # the `finally` below closes the consumer
                typer.secho(f"costpipe alerts tail: {hint}", err=True, fg=typer.colors.RED)
                raise typer.Exit(1)

        consumer.subscribe([settings.topics.alerts])
        console = Console()
        shown, quiet_since = 0, time.monotonic()
        try:
            while not (limit and shown >= limit):
                msg = consumer.poll(0.5)
                stop_on_security(msg.error() if msg is not None else None)
                if msg is None or msg.error():
                    if idle_exit and time.monotonic() - quiet_since > idle_exit:
                        break
                    continue
                quiet_since = time.monotonic()
                batch = decode(msg.value(), msg.headers(), ALERT).batch
                table = Table("time", "rule", "severity", "key", "observed", "threshold",
                              "message", show_header=shown == 0)
                for row in batch.to_pylist():
                    start = row["window_start"]  # nullable in ALERT
                    table.add_row(f"{start:%Y-%m-%d %H:%M}" if start else "-", row["rule"],
                                  row["severity"], row["key"], f"{row['observed']:.4g}",
                                  f"{row['threshold']:.4g}", row["message"])
                    shown += 1
                console.print(table)
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close()
