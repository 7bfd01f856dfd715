"""Shared bench helpers: fresh per-run settings, a worker subprocess, lake counting, stats.

Why: every pipeline benchmark must run on its own topics, lake folder and consumer group (the
dev broker is shared), start a real `costpipe worker`, and stop it whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from costpipe.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
COSTPIPE = str(ROOT / ".venv" / "bin" / "costpipe")
TOPICS = ("requests", "gpu", "costs", "partials", "windows", "alerts", "deadletter", "gpuwork",
          "members")


def bootstrap() -> str:
    """The cluster from settings: KAFKA_BOOTSTRAP_SERVERS, else the project's local broker
    (`make bench` / `make soak` start it first)."""
    from costpipe.core.settings import load_settings

    return load_settings().bootstrap_servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Run:
    """One benchmark run's isolated world: env for subprocesses and the matching Settings."""

    suffix: str
    folder: Path
    env: dict[str, str]
    settings: Settings
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def lake(self) -> Path:
        return self.folder / "lake"


def fresh_run(extra: dict[str, str] | None = None) -> Run:
    """Unique topic names, lake folder, worker group and ports; `extra` adds COSTPIPE_* keys."""
    suffix = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix=f"costpipe-bench-{suffix}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTPIPE_")}
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap(),
        "COSTPIPE_STATE_DIR": str(folder / "state"),
        "COSTPIPE_LAKE__LOCATION": str(folder / "lake"),
        "COSTPIPE_SERVERS__WORKER_GROUP": f"bench-worker-{suffix}",
        "COSTPIPE_SERVERS__WORKER_WEB_PORT": str(free_port()),
        "COSTPIPE_SERVERS__METRICS_PORT": "0",
    })
    for name in TOPICS:
        env[f"COSTPIPE_TOPICS__{name.upper()}"] = f"bench.{name}.{suffix}.v1"
    env.update(extra or {})
    return Run(suffix, folder, env, load_settings(environ=env), dict(extra or {}))


def create_topics(run: Run, extra: dict[str, int] | None = None,
                  skip: tuple[str, ...] = ()) -> None:
    """Create the run's topics up front, as `costpipe kafka up` does (`skip`: topics that
    exist already, e.g. inputs shared by several runs)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from costpipe.core import limits
    from costpipe.core.kafka_clients import confluent_admin

    admin = AdminClient(confluent_admin(run.settings))
    counts = run.settings.topics.partition_counts()
    wanted = [NewTopic(getattr(run.settings.topics, k), counts[getattr(run.settings.topics, k)],
                       1, config={"max.message.bytes":
                                  str(limits.request_bytes(run.settings.kafka))})
              for k in TOPICS if k not in skip]
    wanted += [NewTopic(name, parts, 1) for name, parts in (extra or {}).items()]
    for future in admin.create_topics(wanted).values():
        future.result(30)


def drop_run(run: Run, keep_folder: bool = False) -> None:
    """Delete the run's topics (its own, the worker's changelogs, the peers', all named with
    the run's suffix) and its folder. Without this every run left its data on the broker:
    64 GB on the dev broker by 2026-11-30, until the disk was full."""
    delete_topics(run.settings, run.suffix)
    if not keep_folder:
        shutil.rmtree(run.folder, ignore_errors=True)


def delete_topics(settings: Settings, marker: str) -> None:
    """Delete every topic whose name contains `marker`; errors are reported, not raised."""
    from confluent_kafka.admin import AdminClient

    from costpipe.core.kafka_clients import confluent_admin

    admin = AdminClient(confluent_admin(settings))
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if marker in t]
        if not names:
            return
        for name, future in admin.delete_topics(names, operation_timeout=30).items():
            try:
                future.result(60)
            except Exception as exc:
                print(f"  could not delete topic {name}: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"  could not list topics to delete ({marker}): {exc}", file=sys.stderr)


def start_worker(run: Run, log_name: str = "worker.log") -> subprocess.Popen[bytes]:
    log = open(run.folder / log_name, "wb")  # noqa: SIM115 - lives as long as the worker
    return subprocess.Popen(
        [COSTPIPE, "worker", "--metrics-port", "0", "--workdir", str(run.folder / "worker"),
         "--loglevel", "warning"],
        env=run.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
    )


def stop(process: subprocess.Popen[Any] | None, grace_s: float = 10.0) -> None:
    """Stop a child we started (TERM, then KILL); never anything else."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class LakeCounter:
    """Counts request cost records in the lake, reading each committed file once."""

    def __init__(self, lake: Path, before_us: int | None = None) -> None:
        self.root = lake / "costs"
        self.before_us = before_us
        self.seen: dict[str, int] = {}

    def count(self) -> int:
        if self.root.exists():
            for path in self.root.rglob("*.parquet"):
                key = str(path)
                if key in self.seen:
                    continue
                try:
                    table = pq.read_table(path, columns=["record_type", "timestamp"])
                except (OSError, pa.ArrowInvalid):
                    continue  # raced a rename; next poll reads it
                mask = pc.equal(table.column("record_type"), "request")
                if self.before_us is not None:
                    ts = table.column("timestamp").cast(pa.int64())
                    mask = pc.and_(mask, pc.less(ts, self.before_us))
                self.seen[key] = int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
        return sum(self.seen.values())


def run_json(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """Run a peer/helper that prints one JSON line last; return it parsed."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))
    # Faust routes print() through its logger, so the JSON may sit after a log prefix.
    lines = [ln[ln.index('{"'):].strip() for ln in (done.stdout + done.stderr).splitlines()
             if '{"' in ln]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-800:]
        raise RuntimeError(f"{cmd[1] if len(cmd) > 1 else cmd[0]} failed "
                           f"(rc={done.returncode}): {tail}")
    return json.loads(lines[-1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def emit(result: dict[str, Any]) -> None:
    """The machine-readable last line every bench prints (bench/run_all.py parses it)."""
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


def wait_until(predicate: Any, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
