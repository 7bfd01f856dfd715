"""Worker memory: RSS over a run at a steady rate with many distinct window keys.

The window key is operation x provider_kind x provider x model. Own-model rows get their
`model` drawn from `--keys` distinct names (own models are costed from GPU time, so any name is
valid), which gives up to that many distinct keys per window. The simulator sends in real time
(`--rate` requests/s, about half the measured end-to-end maximum by default) for `--duration`
seconds; the worker's RSS is sampled every 5 s.

State legitimately fills while windows are still kept: window + lateness + the correction
horizon (`windows.correction_horizon_seconds`). `--settle` defaults to that span plus 45 s;
flat = end RSS within 10% of the RSS at the settle point.

    .venv/bin/python -m bench.bench_memory \
        [--duration 600] [--rate 3000] [--keys 100000] [--horizon SECONDS]
Last line: JSON with start/end/max RSS (MiB) and the growth.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.common import create_topics, drop_run, emit, fresh_run, start_worker, stop
from costpipe.collectors.producer import producer_for
from costpipe.collectors.simulator import simulate


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=600, help="seconds")
    parser.add_argument("--rate", type=float, default=56_000.0,
                        help="requests/s: half the e2e maximum (run_all passes half the last"
                             " e2e median; 112.6k on 2026-11-30)")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct own-model names")
    parser.add_argument("--window", type=int, default=10, help="window seconds")
    parser.add_argument("--horizon", type=int, default=None,
                        help="windows.correction_horizon_seconds (default: the settings')")
    parser.add_argument("--settle", type=int, default=None,
                        help="seconds before 'start' RSS (default: retention span + 45 s)")
    args = parser.parse_args()

    # 10 s windows keep the run short relative to the retention span; all keys still occur.
    overrides = {"COSTPIPE_LAKE__FLUSH_SECONDS": "2", "COSTPIPE_WINDOWS__SECONDS": str(args.window)}
    if args.horizon is not None:
        overrides["COSTPIPE_WINDOWS__CORRECTION_HORIZON_SECONDS"] = str(args.horizon)
    run = fresh_run(overrides)
    windows = run.settings.windows
    span = windows.seconds + windows.allowed_lateness_seconds + windows.correction_horizon_seconds
    settle = args.settle if args.settle is not None else span + 45
    if settle >= args.duration:
        raise SystemExit(f"--duration {args.duration} s ends before the settle point {settle} s "
                         f"(window + lateness + horizon = {span} s): run longer or lower "
                         "--horizon")
    print(f"retention span {span} s; start RSS taken at {settle} s", file=sys.stderr)
    create_topics(run)
    names = pa.array([f"own-model-{i:06d}" for i in range(args.keys)])
    rng = np.random.default_rng(7)
    producer = producer_for(run.settings, "requests")

    def sink(table: pa.Table) -> None:
        internal = pc.equal(table.column("provider_kind"), "internal") \
            if "provider_kind" in table.column_names else \
            pc.is_in(table.column("provider"), pa.array(run.settings.providers.internal))
        drawn = names.take(pa.array(rng.integers(0, args.keys, table.num_rows)))
        model = pc.if_else(internal, drawn, table.column("model"))
        producer.emit_batch(table.set_column(table.schema.get_field_index("model"), "model",
                                             model))

    worker = start_worker(run)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(5.0):
            if worker.poll() is not None:
                return
            samples.append((time.monotonic() - t0, rss_mib(worker.pid)))
            print(f"  {samples[-1][0]:5.0f} s  RSS {samples[-1][1]:7.1f} MiB", file=sys.stderr,
                  flush=True)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        simulate(run.settings, rate=args.rate, duration_s=args.duration, seed=5, gpus=16,
                 request_sink=sink)
    finally:
        done.set()
        sampler.join(10)
        alive = worker.poll() is None
        stop(worker)
    if not alive or not samples:
        raise SystemExit(f"worker died during the run; see {run.folder}/worker.log")
    settled = [rss for t, rss in samples if t >= settle] or [samples[-1][1]]
    start, end = settled[0], samples[-1][1]
    result = {
        "duration_s": args.duration, "rate": args.rate, "keys": args.keys,
        "settle_s": settle, "horizon_s": windows.correction_horizon_seconds,
        "rss_start_mib": start, "rss_end_mib": end, "rss_max_mib": max(r for _, r in samples),
        "growth_pct": 100 * (end - start) / start, "flat": end <= start * 1.10,
        "samples": [[round(t), round(r, 1)] for t, r in samples],
    }
    print(f"RSS after {settle} s: {start:.0f} MiB, end: {end:.0f} MiB "
          f"({result['growth_pct']:+.1f}%)", file=sys.stderr)
    drop_run(run)
    emit(result)


if __name__ == "__main__":
    main()
