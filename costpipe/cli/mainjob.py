"""The main job (`costpipe run`, `make run`): broker → worker → simulated fleet → summary.

It starts only what is not running yet and stops what it started, so a second run reuses the
broker, the caches and the lake. The summary is read from the lake with the same SQL views
that `costpipe sql` uses, so the numbers printed here are the numbers a user gets back.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from costpipe.cli.live import LiveState, Monitor, live_panel
from costpipe.core.settings import Settings

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
    dashboard: bool = True


def _start_worker(settings: Settings, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "costpipe.cli", "worker", "--loglevel", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _start_dashboard(settings: Settings, env: dict[str, str], log_path: Path,
                     console: Console) -> subprocess.Popen | None:
    """`costpipe dashboard` beside the worker; its URL is printed once it serves."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "costpipe.cli", "dashboard"],
                               stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    from costpipe.dashboard.server import parse_listen, url_of

    url = url_of(*parse_listen(settings.dashboard.listen))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            console.print(f"[yellow]dashboard did not start (see {log_path}); the run goes on"
                          "[/]")
            return None
        if "serving" in log_path.read_text(errors="replace"):
            console.print(f"dashboard: [bold]{url}[/] (live while the run goes on)")
            return process
        time.sleep(0.2)
    console.print(f"dashboard starting at {url} (see {log_path})")
    return process


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
    dashboard_log = Path(settings.state_dir) / "logs" / "dashboard.log"
    if dashboard_log.exists():
        dashboard_log.unlink()  # "serving" is looked for in this run's lines only
    dashboard = _start_dashboard(settings, env, dashboard_log, console) \
        if options.dashboard else None
    state = LiveState(sim_total=options.duration_s)
    monitor = Monitor(settings, state)
    monitor.start()
    try:
        with live_panel(console, state, settings):
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
            if dashboard is not None:
                _stop_process(dashboard)
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
        if dashboard is not None:
            from costpipe.dashboard.server import parse_listen, url_of

            url = url_of(*parse_listen(settings.dashboard.listen))
            console.print(f"dashboard keeps serving {url} (pid {dashboard.pid})")
    if problems:
        for problem in problems:
            console.print(f"[red]reconciliation failed:[/] {problem}")
        return 1
    return 0
