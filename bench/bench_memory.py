"""Worker memory: RSS over a run at a steady rate with many distinct window keys.

The window key is operation x provider_kind x provider x model. Own-model rows get their
`model` drawn from `--keys` distinct names (own models are costed from GPU time, so any name is
valid), which gives up to that many distinct keys per window. The simulator sends in real time
(`--rate` requests/s, half the measured maximum by default) for `--duration` seconds; the
worker's RSS is sampled every 5 s. Flat = end RSS within 10% of the RSS after the first
`--settle` seconds.

    .venv/bin/python bench/bench_memory.py \
        [--duration 180] [--rate 5000] [--keys 100000]
Last line: JSON with start/end/max RSS (MiB) and the growth.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bench.common import create_topics, emit, fresh_run, start_worker, stop
from collectors.producer import producer_for
from collectors.simulator import simulate


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=180, help="seconds (issue: 600)")
    parser.add_argument("--rate", type=float, default=5000.0, help="requests/s")
    parser.add_argument("--keys", type=int, default=100_000, help="distinct own-model names")
    parser.add_argument("--window", type=int, default=10, help="window seconds")
    parser.add_argument("--settle", type=int, default=60, help="seconds before 'start' RSS")
    args = parser.parse_args()

    # 10 s windows: a 60 s window with ~100k keys closes into one windows message above the
    # 10 MB request limit and crashes the merger (see bench/FINDINGS.md); all keys still occur.
    run = fresh_run({"COSTPIPE_LAKE__FLUSH_SECONDS": "2",
                     "COSTPIPE_WINDOWS__SECONDS": str(args.window)})
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
    settled = [rss for t, rss in samples if t >= args.settle] or [samples[-1][1]]
    start, end = settled[0], samples[-1][1]
    result = {
        "duration_s": args.duration, "rate": args.rate, "keys": args.keys,
        "rss_start_mib": start, "rss_end_mib": end, "rss_max_mib": max(r for _, r in samples),
        "growth_pct": 100 * (end - start) / start, "flat": end <= start * 1.10,
        "samples": [[round(t), round(r, 1)] for t, r in samples],
    }
    print(f"RSS after {args.settle} s: {start:.0f} MiB, end: {end:.0f} MiB "
          f"({result['growth_pct']:+.1f}%)", file=sys.stderr)
    shutil.rmtree(run.folder, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
