"""The main job's terminal UI: a live panel fed by a background reader of the windows and alerts
topics and by the worker group's consumer lag.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from costpipe.core.kafka_clients import confluent_consumer
from costpipe.core.settings import Settings
from costpipe.schemas.codec import decode
from costpipe.schemas.records import ALERT, WINDOW_AGGREGATE


@dataclass
class LiveState:
    """What the monitor thread has seen; read by the display."""

    sim_seconds: int = 0
    sim_total: int = 0
    sent_requests: int = 0
    lag: int | None = None
    window_start: dt.datetime | None = None
    window_cost: dict[str, Decimal] = field(default_factory=dict)
    external_share: float | None = None
    alerts: list[str] = field(default_factory=list)
    phase: str = "starting"
    errors: list[str] = field(default_factory=list)


class Monitor:
    """Background reader of the windows and alerts topics, plus consumer-lag polling."""

    def __init__(self, settings: Settings, state: LiveState) -> None:
        self.settings = settings
        self.state = state
        self._stop = threading.Event()
        self._external = self._total = Decimal(0)
        self._consumer = Consumer(confluent_consumer(
            settings, f"costpipe-run-monitor-{uuid.uuid4().hex[:8]}",
            **{"auto.offset.reset": "latest"}))
        self._lag_probe = Consumer(confluent_consumer(settings, settings.servers.worker_group))
        self._thread = threading.Thread(target=self._run, name="costpipe-monitor", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe([self.settings.topics.windows, self.settings.topics.alerts])
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self._consumer.close()
            self._lag_probe.close()

    def _run(self) -> None:
        last_lag = 0.0
        while not self._stop.is_set():
            for message in self._consumer.consume(500, timeout=0.5):
                if message.error() is None:
                    self._apply(message)
            if time.monotonic() - last_lag > 1.0:
                last_lag = time.monotonic()
                with contextlib.suppress(Exception):
                    self.state.lag = requests_lag(self.settings, self._lag_probe)

    def _apply(self, message: Any) -> None:
        is_alert = message.topic() == self.settings.topics.alerts
        decoded = decode(message.value(), message.headers(), ALERT if is_alert else
                         WINDOW_AGGREGATE)
        rows = decoded.batch.to_pylist()
        if is_alert:
            for row in rows:
                self.state.alerts.append(
                    f"{row['timestamp']:%H:%M:%S} {row['rule']} {row['key']}: {row['message']}")
            return
        for row in rows:
            start = row["window_start"]
            if self.state.window_start is None or start > self.state.window_start:
                self.state.window_start = start
                self.state.window_cost = {}
                self._external = self._total = Decimal(0)
            if start == self.state.window_start:
                cost = self.state.window_cost.get(row["operation"], Decimal(0))
                self.state.window_cost[row["operation"]] = cost + row["cost"]
                # the window's share over all keys, as its rows arrive (from every merger)
                self._total += row["cost"]
                if row["provider_kind"] == "external":
                    self._external += row["cost"]
                if self._total:
                    self.state.external_share = float(self._external / self._total)


def requests_lag(settings: Settings, probe: Consumer) -> int:
    """Messages on the requests topic the worker group has not committed yet."""
    topic = settings.topics.requests
    metadata = probe.list_topics(topic, timeout=5).topics[topic]
    partitions = [TopicPartition(topic, p) for p in metadata.partitions]
    committed = probe.committed(partitions, timeout=5)
    lag = 0
    for part in committed:
        _, high = probe.get_watermark_offsets(part, timeout=5, cached=False)
        lag += max(0, high - max(part.offset, 0))
    return lag


def render(state: LiveState, settings: Settings) -> Panel:
    head = Table.grid(padding=(0, 2))
    head.add_row("phase", state.phase)
    head.add_row("simulated", f"{state.sim_seconds}/{state.sim_total} s")
    head.add_row("requests sent", f"{state.sent_requests:,}")
    head.add_row("consumer lag (requests)", "…" if state.lag is None else f"{state.lag:,} msgs")
    share = state.external_share
    target = 1 - settings.target_internal_share
    head.add_row("live external share (cost)",
                 "…" if share is None else f"{share:.1%} (target ≤ {target:.0%})")
    windows = Table(title=None if state.window_start is None else
                    f"window {state.window_start:%H:%M:%S} cost per operation",
                    show_header=True, expand=False)
    windows.add_column("operation")
    windows.add_column("cost (USD)", justify="right")
    for operation, cost in sorted(state.window_cost.items()):
        windows.add_row(operation, f"{cost:.6f}")
    alerts = Table(show_header=True, title="alerts")
    alerts.add_column("fired")
    for line in state.alerts[-5:]:
        alerts.add_row(line)
    return Panel(Group(head, windows, alerts), title="costpipe run", border_style="cyan")


@contextlib.contextmanager
def live_panel(console: Console, state: LiveState, settings: Settings) -> Iterator[None]:
    if not console.is_terminal:
        yield
        return
    with Live(render(state, settings), console=console, refresh_per_second=2,
              transient=False) as live:
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.5):
                live.update(render(state, settings))

        thread = threading.Thread(target=refresh, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2)
            live.update(render(state, settings))


