"""Soak (`make soak`): a worker under a steady simulated fleet for a long time.

Why: crashes and outages are tested in CI, slow leaks and creeping lag are not. This runs the
simulator in real time at `--rate` requests/s (default: half of the ~10,000/s end-to-end maximum
measured on the 2-core dev machine, like bench_memory.py) for `--minutes` (default 30) into a
fresh set of topics, and every `--every` seconds samples the worker's RSS, the worker group's
consumer lag on the requests topic and the error signals (worker alive, dead letters, ERROR /
Traceback lines in its log, simulator failures). Afterwards it sends a watermark heartbeat (the
fleet went quiet, so the last windows and GPU buckets must close), waits for the lake to hold
every request once (events lost must be 0) and asserts:

- RSS flat: the median of the last three samples is within 10 % of the median of the first
  three after the warm-up (the peak is printed too);
- lag bounded: never more than `--max-lag-s` seconds of traffic behind, and drained at the end;
- no errors.

It prints a table and appends its figures under "## Soak" in bench/RESULTS.md; exit code 1
when an assertion fails.

    .venv/bin/python -m tools.soak [--minutes 30]
        [--rate 5000] [--every 10] [--warmup-s 120] [--max-lag-s 30]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench.common import (
    ROOT,
    LakeCounter,
    Run,
    create_topics,
    drop_run,
    fresh_run,
    start_worker,
    stop,
)
from costpipe.collectors.heartbeat import send_watermark
from costpipe.collectors.simulator import SimulationSummary, simulate
from costpipe.core.kafka_clients import confluent_consumer

ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b")


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    lag_msgs: int
    lake_rows: int
    errors: int


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Lag:
    """Committed offsets of the worker group vs end offsets (no group join: only lookups)."""

    def __init__(self, run: Run) -> None:
        self.topic = run.settings.topics.requests
        self.consumer = Consumer(confluent_consumer(run.settings,
                                                    run.env["COSTPIPE_SERVERS__WORKER_GROUP"]))
        parts = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.parts = [TopicPartition(self.topic, p) for p in sorted(parts)]

    def messages(self) -> int:
        committed = self.consumer.committed(self.parts, timeout=10)
        lag = 0
        for tp in committed:
            _, high = self.consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag

    def close(self) -> None:
        self.consumer.close()


def dead_letters(run: Run) -> int:
    consumer = Consumer(confluent_consumer(run.settings, "soak-deadletter-count"))
    topic = run.settings.topics.deadletter
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return 0
        return sum(max(0, h - lo) for lo, h in (
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in meta.partitions))
    finally:
        consumer.close()


def log_errors(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines()
               if ERROR_LINE.search(line))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5000.0, help="requests/s (half of max)")
    parser.add_argument("--every", type=float, default=10.0, help="sampling interval, s")
    parser.add_argument("--warmup-s", type=float, default=120.0,
                        help="seconds before the RSS baseline (JIT of caches, first windows)")
    parser.add_argument("--max-lag-s", type=float, default=30.0,
                        help="lag bound, in seconds of traffic")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.every <= 0:
        parser.error("--minutes, --rate and --every must be > 0")
    duration = max(1, int(args.minutes * 60))
    warmup = min(args.warmup_s, duration / 3)

    run = fresh_run({"COSTPIPE_LAKE__FLUSH_SECONDS": "5"})
    create_topics(run)
    worker = start_worker(run)
    log = run.folder / "worker.log"
    result: dict[str, Any] = {}

    def feed() -> None:
        try:
            result["summary"] = simulate(run.settings, rate=args.rate, duration_s=duration,
                                         seed=2026, gpus=4, internal_share=0.4)
        except Exception as exc:  # reported as an error below
            result["error"] = repr(exc)

    console = Console()
    console.print(f"soak: {args.minutes:g} min at {args.rate:g} req/s, worker pid {worker.pid}, "
                  f"folder {run.folder}")
    feeder = threading.Thread(target=feed, daemon=True)
    lag = Lag(run)
    counter = LakeCounter(run.lake)
    samples: list[Sample] = []
    start = time.monotonic()
    failures: list[str] = []
    try:
        feeder.start()
        while feeder.is_alive():
            feeder.join(args.every)
            alive = worker.poll() is None
            errors = log_errors(log) + (0 if alive else 1) + ("error" in result)
            samples.append(Sample(time.monotonic() - start, rss_mib(worker.pid) if alive
                                  else float("nan"), lag.messages(), counter.count(), errors))
            s = samples[-1]
            console.print(f"  t={s.t_s:6.0f}s rss={s.rss_mib:7.1f} MiB lag={s.lag_msgs:5d} msgs "
                          f"lake={s.lake_rows:9d} errors={s.errors}")
            if not alive:
                failures.append("worker exited during the soak")
                break
        summary: SimulationSummary | None = result.get("summary")
        expected = summary.requests if summary else -1
        if summary:  # the fleet went quiet: close the last windows and GPU buckets
            cfg = run.settings
            margin = max(cfg.windows.seconds + cfg.windows.allowed_lateness_seconds,
                         cfg.gpu.bucket_seconds + cfg.gpu.allowed_lateness_seconds) + 1
            send_watermark(cfg, summary.end + dt.timedelta(seconds=margin))
        drain_start = time.monotonic()
        while summary and time.monotonic() - drain_start < 180:
            if counter.count() >= expected:
                break
            if worker.poll() is not None:
                failures.append(f"worker exited while draining (rc {worker.returncode})")
                break
            time.sleep(2)
        drained_s = time.monotonic() - drain_start
        final_rows, final_lag = counter.count(), lag.messages()
        letters = dead_letters(run)
        errors = log_errors(log)
    finally:
        lag.close()
        stop(worker)

    msgs_per_s = max(1.0, args.rate / 1000)  # producer envelopes hold up to 1,000 rows
    # RSS saw-tooths with Arrow buffers and GC: compare the median of the first and the last
    # three post-warm-up samples (a leak moves the median; one sample's timing does not)
    steady = [s.rss_mib for s in samples if s.t_s >= warmup]
    base = statistics.median(steady[:3]) if steady else float("nan")
    end = statistics.median(steady[-3:]) if steady else float("nan")
    peak = max(steady, default=float("nan"))
    growth = (end / base - 1) * 100 if steady else float("nan")
    max_lag = max((s.lag_msgs for s in samples), default=0)
    max_lag_s = max_lag / msgs_per_s
    lost = (expected - final_rows) if summary else None
    if "error" in result:
        failures.append(f"simulator failed: {result['error']}")
    if not steady:
        failures.append("no samples after the warm-up (run longer)")
    elif growth > 10:
        failures.append(f"RSS grew {growth:.1f} % after warm-up (limit 10 %)")
    if max_lag_s > args.max_lag_s:
        failures.append(f"lag reached {max_lag} msgs (~{max_lag_s:.0f} s of traffic)")
    if final_lag > len(lag.parts):  # Faust may leave its last offset per partition uncommitted
        failures.append(f"lag {final_lag} msgs left after the drain")
    if errors or letters:
        failures.append(f"{errors} error line(s) in the worker log, {letters} dead letter(s)")
    if lost != 0:
        failures.append(f"events lost: {lost}")

    table = Table(title=f"Soak: {args.minutes:g} min at {args.rate:g} req/s")
    for column in ("figure", "value"):
        table.add_column(column)
    rows = [
        ("requests sent", f"{expected:,}"),
        ("in the lake / lost", f"{final_rows:,} / {lost}"),
        ("worker RSS after warm-up / at the end / peak",
         f"{base:.1f} / {end:.1f} / {peak:.1f} MiB"),
        ("RSS growth after warm-up (medians)", f"{growth:+.1f} % (limit 10 %)"),
        ("max consumer lag", f"{max_lag} msgs (~{max_lag_s:.1f} s of traffic)"),
        ("drain after the last event / lag left", f"{drained_s:.1f} s / {final_lag} msgs"),
        ("errors / dead letters", f"{errors} / {letters}"),
        ("samples", f"{len(samples)} every {args.every:g} s, warm-up {warmup:.0f} s"),
        ("verdict", "PASS" if not failures else "FAIL: " + "; ".join(failures)),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    _append(args.output, args, rows)
    if not args.keep:
        drop_run(run)
    return 1 if failures else 0


def _append(output: Path, args: argparse.Namespace, rows: list[tuple[str, str]]) -> None:
    """Append one run under '## Soak' (created when missing); other sections are untouched."""
    text = output.read_text(encoding="utf-8") if output.exists() else "# Benchmark results\n"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {when}: {args.minutes:g} min at {args.rate:g} req/s "
             f"({platform.node()}, `tools/soak.py`)", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if "\n## Soak\n" not in text:
        text = text.rstrip("\n") + "\n\n## Soak\n\nOne entry per `tools/soak.py` run.\n"
    head, _, tail = text.partition("\n## Soak\n")
    nxt = tail.find("\n## ")
    section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
    section = section.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    output.write_text(head + "\n## Soak\n" + section + rest, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
