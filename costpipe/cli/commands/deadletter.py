"""`costpipe deadletter tail | replay`: see what the worker refused, and send it back after a fix.

Replay is idempotent: requests are de-duplicated by request_id in the worker and GPU samples
by (gpu_uuid, timestamp), so replaying a dead letter twice, or one whose row got through in
the meantime, counts nothing twice. Each replay names the row it brings back
(`costpipe-replay-of`), so the worker never takes the refused original for a costed copy.
"""

from __future__ import annotations

import datetime as dt
import json
import string
import time
import uuid
from typing import Any

import typer

from costpipe.cli.commands._edges import parse_time

PRINTABLE = set(string.printable) - set("\x0b\x0c\r")


def _preview(original: bytes, width: int = 80) -> str:
    """A safe one-line look at the bytes: printable text cut short, or hex of binary."""
    try:
        text = original.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c in PRINTABLE for c in text):
        flat = " ".join(text.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"
    return f"<{len(original)} bytes> {original[: width // 3].hex()}"


def _record_kinds(settings: Any) -> dict[str, str]:
    return {settings.topics.requests: "request_event", settings.topics.gpu: "gpu_sample"}


def _letters(settings: Any, *, follow: bool, idle_exit: float) -> Any:
    """Yield dead-letter rows (dicts) from the start of the topic."""
    from confluent_kafka import Consumer

    from costpipe.core.kafka_clients import confluent_consumer
    from costpipe.schemas.codec import decode
    from costpipe.schemas.records import DEAD_LETTER

    consumer = Consumer(confluent_consumer(
        settings, f"costpipe-deadletter-{uuid.uuid4().hex[:8]}",
        **{"auto.offset.reset": "earliest"}))
    consumer.subscribe([settings.topics.deadletter])
    quiet_since = time.monotonic()
    try:
        while True:
            message = consumer.poll(0.5)
            if message is None or message.error():
                if not follow and time.monotonic() - quiet_since > idle_exit:
                    return
                continue
            quiet_since = time.monotonic()
            yield from decode(message.value(), message.headers(), DEAD_LETTER).batch.to_pylist()
    finally:
        consumer.close()


def _selected(row: dict[str, Any], source_topic: str | None, reason: str | None,
              field: str | None, since: dt.datetime | None) -> bool:
    return ((source_topic is None or row["source_topic"] == source_topic)
            and (reason is None or reason.lower() in row["reason"].lower())
            and (field is None or row["field"] == field)
            and (since is None or row["timestamp"] >= since))


def _since(text: str | None) -> dt.datetime | None:
    return None if text is None else parse_time("deadletter", "--since", text)


def register(app: typer.Typer) -> None:
    deadletter = typer.Typer(help="Dead letters: messages and rows the worker refused, with why.",
                             no_args_is_help=True)
    app.add_typer(deadletter, name="deadletter")

    @deadletter.command()
    def tail(
        source_topic: str = typer.Option(None, "--source-topic", help="Only from this topic."),
        reason: str = typer.Option(None, "--reason", help="Only reasons containing this text."),
        field: str = typer.Option(None, "--field", help="Only this field (e.g. request_id)."),
        since: str = typer.Option(None, "--since", help="Only from this time (ISO 8601)."),
        limit: int = typer.Option(50, "--limit", min=0, help="Show at most N (0 = all)."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Keep waiting for more."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """Show dead letters: when, where from (topic, partition, offset), field, reason, and a safe
        preview of the refused bytes (text cut short, binary as hex)."""
        from rich.console import Console
        from rich.table import Table

        from costpipe.core.settings import get_settings

        settings = get_settings()
        start = _since(since)
        console = Console()
        table = Table("time", "source", "field", "reason", "preview", show_lines=False)
        shown = 0
        for row in _letters(settings, follow=follow, idle_exit=3.0):
            if not _selected(row, source_topic, reason, field, start):
                continue
            shown += 1
            source = f"{row['source_topic']}[{row['source_partition']}]@{row['source_offset']}"
            if as_json:
                typer.echo(json.dumps({**row, "timestamp": row["timestamp"].isoformat(),
                                       "original": _preview(row["original"], 200)}))
            elif follow:
                console.print(f"{row['timestamp']:%Y-%m-%d %H:%M:%S} {source} "
                              f"{row['field'] or '-'}: {row['reason']} | "
                              f"{_preview(row['original'])}", markup=False)
            else:
                table.add_row(f"{row['timestamp']:%Y-%m-%d %H:%M:%S}", source,
                              row["field"] or "-", row["reason"], _preview(row["original"]))
            if limit and shown >= limit:
                break
        if not as_json and not follow:
            console.print(table)
            console.print(f"{shown} dead letter(s)", style="dim")

    @deadletter.command()
    def replay(
        source_topic: str = typer.Option(None, "--source-topic", help="Only from this topic."),
        reason: str = typer.Option(None, "--reason", help="Only reasons containing this text."),
        field: str = typer.Option(None, "--field", help="Only this field."),
        since: str = typer.Option(None, "--since", help="Only from this time (ISO 8601)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be sent."),
    ) -> None:
        """Send selected dead letters back to the topic they came from, after a fix.

        Only the requests and GPU topics are replayed (the worker's own internal topics are
        not). Idempotent: the worker counts a request_id once, and a GPU sample once."""
        from confluent_kafka import Producer

        from costpipe.core.kafka_clients import confluent_producer
        from costpipe.core.settings import get_settings
        from costpipe.schemas.envelope import REPLAY_OF_HEADER, headers_for

        settings = get_settings()
        start = _since(since)
        kinds = _record_kinds(settings)
        producer = None if dry_run else Producer(confluent_producer(settings))
        sent = skipped = 0
        for row in _letters(settings, follow=False, idle_exit=3.0):
            if not _selected(row, source_topic, reason, field, start):
                continue
            record = kinds.get(row["source_topic"])
            if record is None:
                skipped += 1
                continue
            origin = f"{row['source_topic']}:{row['source_partition']}:{row['source_offset']}"
            if producer is not None:
                producer.produce(row["source_topic"], value=row["original"],
                                 headers=[*headers_for(row["encoding"] or "arrow", record),
                                          (REPLAY_OF_HEADER, origin.encode())])
                producer.poll(0)
            sent += 1
        if producer is not None and producer.flush(30):
            typer.secho("costpipe deadletter: some replays were not delivered within 30 s; run "
                        "it again (replay is idempotent)", err=True, fg=typer.colors.RED)
            raise typer.Exit(1)
        verb = "would replay" if dry_run else "replayed"
        note = f"; {skipped} from internal topics left alone" if skipped else ""
        typer.echo(f"{verb} {sent} dead letter(s){note}")
