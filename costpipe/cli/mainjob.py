"""The main job (`costpipe run`, `make run`): broker → worker → simulated fleet → summary.

It starts only what is not running yet and stops what it started, so a second run reuses the
broker, the caches and the lake. The summary is read from the lake with the same SQL views
that `costpipe sql` uses, so the numbers printed here are the numbers a user gets back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
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

DRAIN_TIMEOUT_S = 180.0


@dataclass
class RunOptions:
    duration_s: int = 75
    rate: float = 150.0
    internal_share: float = 0.45
    seed: int = 42
    gpus: int = 4
    spikes: list[str] = field(default_factory=lambda: ["reasoning:6:45:15"])
    report: Path = Path("report.html")
    keep_running: bool = False


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
            if start == self.state.window_start:
                cost = self.state.window_cost.get(row["operation"], Decimal(0))
                self.state.window_cost[row["operation"]] = cost + row["cost"]
                if row.get("external_share_cost") is not None:
                    self.state.external_share = row["external_share_cost"]


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


def _render(state: LiveState, settings: Settings) -> Panel:
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


def _start_worker(settings: Settings, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "costpipe.cli", "worker", "--loglevel", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _drained(settings: Settings, start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """(requests of the run in the lake, requests of the run counted in closed windows)."""
    from costpipe import analytics

    con = analytics.connect(settings)
    try:
        row = con.execute(
            "SELECT (SELECT count(*) FROM costs WHERE record_type <> 'idle' "
            "        AND timestamp >= $1 AND timestamp < $2), "
            "       (SELECT coalesce(sum(requests), 0) FROM windows "
            "        WHERE window_start >= $3 AND window_start < $2)",
            [start, end, start - dt.timedelta(seconds=settings.windows.seconds)]).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
    finally:
        con.close()


@contextlib.contextmanager
def _live(console: Console, state: LiveState, settings: Settings) -> Iterator[None]:
    if not console.is_terminal:
        yield
        return
    with Live(_render(state, settings), console=console, refresh_per_second=2,
              transient=False) as live:
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.5):
                live.update(_render(state, settings))

        thread = threading.Thread(target=refresh, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(2)
            live.update(_render(state, settings))


def _say(console: Console, state: LiveState, phase: str) -> None:
    state.phase = phase
    if not console.is_terminal:
        console.print(f"[cyan]costpipe run:[/] {phase}")


def run_main_job(settings: Settings, options: RunOptions, console: Console) -> int:
    """The whole demo, end to end; returns the process exit code."""
    from costpipe import broker
    from costpipe.collectors.simulator import Spike, simulate

    spikes = [Spike.parse(text) for text in options.spikes]
    started_broker = False
    if settings.uses_local_broker and not broker.status(settings).running:
        started_broker = True
    broker.ensure_running(settings, console=console)
    broker.ensure_topics(settings)
    env = dict(os.environ)
    worker_log = Path(settings.state_dir) / "logs" / "worker.log"
    worker = _start_worker(settings, env, worker_log)
    state = LiveState(sim_total=options.duration_s)
    monitor = Monitor(settings, state)
    monitor.start()
    try:
        with _live(console, state, settings):
            _say(console, state, "simulating the hybrid fleet")

            def progress(done: int, total: int) -> None:
                state.sim_seconds = done

            summary = simulate(
                settings, rate=options.rate, duration_s=options.duration_s,
                internal_share=options.internal_share, seed=options.seed, gpus=options.gpus,
                spikes=spikes, progress=progress,
            )
            state.sent_requests = summary.requests
            from costpipe.collectors.producer import close_shared

            close_shared()
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited (code {worker.returncode}); "
                                   f"see {worker_log}")
            _say(console, state, "closing the last windows (watermark heartbeats)")
            from costpipe.collectors.heartbeat import send_watermark

            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while True:
                # The fleet went quiet: tell the workers that event time keeps passing.
                send_watermark(settings, dt.datetime.now(dt.UTC))
                in_lake, in_windows = _drained(settings, summary.start, summary.end)
                if in_lake >= summary.requests and in_windows >= summary.requests:
                    break
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited (code {worker.returncode}); "
                                       f"see {worker_log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"after {DRAIN_TIMEOUT_S:.0f} s the lake holds {in_lake:,} of "
                        f"{summary.requests:,} requests ({in_windows:,} in closed windows); "
                        f"see {worker_log}")
                time.sleep(2.0)
            _say(console, state, "done")
    finally:
        monitor.stop()
        if not options.keep_running:
            _stop_process(worker)
            if started_broker:
                broker.stop(settings)
    from costpipe.cli.summary import print_summary, reconcile

    print_summary(settings, console, simulated=summary)
    problems = reconcile(settings, summary)
    from costpipe import analytics
    from costpipe.analytics.report import build

    con = analytics.connect(settings)
    try:
        options.report.write_text(build(con, settings.target_internal_share), encoding="utf-8")
    finally:
        con.close()
    console.print(f"\nreport written to [bold]{options.report}[/] (self-contained, offline)")
    if options.keep_running:
        console.print("worker and broker keep running (--keep-running); "
                      "stop with `costpipe kafka down` and by killing the worker "
                      f"(pid {worker.pid})")
    if problems:
        for problem in problems:
            console.print(f"[red]reconciliation failed:[/] {problem}")
        return 1
    return 0
