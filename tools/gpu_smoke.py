"""Smoke test on a real GPU machine: run the NVML sampler for 5 ticks and print the samples.

    .venv/bin/python -m tools.gpu_smoke [--ticks 5] [--interval 1.0] [--kafka]

Without `--kafka` nothing is sent anywhere (the samples are only printed); with it they also go
to settings.topics.gpu through the shared producer. Exits 3 with one line when no NVIDIA
driver/GPU is present. Checks printed at the end: every GPU has a UUID and memory total, and
the energy counter (when supported) never goes backwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from costpipe.collectors.gpu import GpuSampler, GpuUnavailable, run  # noqa: E402


class PrintSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def emit_batch(self, batch: Any) -> None:
        for row in batch.to_pylist():
            row["timestamp"] = row["timestamp"].isoformat()
            self.rows.append(row)
            print(json.dumps(row))


class Tee:
    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def emit_batch(self, batch: Any) -> None:
        for sink in self.sinks:
            sink.emit_batch(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--kafka", action="store_true")
    args = parser.parse_args()
    sampler = GpuSampler(interval_s=args.interval)
    try:
        count = sampler.open()
    except GpuUnavailable as exc:
        print(f"gpu_smoke: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    printer = PrintSink()
    sink: Any = printer
    producer = None
    if args.kafka:
        from costpipe.collectors.producer import producer_for
        from costpipe.core.settings import get_settings

        producer = producer_for(get_settings(), "gpu")
        sink = Tee(printer, producer)
    start = time.perf_counter()
    try:
        rows = run(sampler, sink, ticks=args.ticks)
    finally:
        sampler.close()
        if producer is not None:
            producer.close()
    elapsed = time.perf_counter() - start
    by_uuid: dict[str, list[dict[str, Any]]] = {}
    for row in printer.rows:
        by_uuid.setdefault(row["gpu_uuid"], []).append(row)
    problems = []
    for uuid, samples in by_uuid.items():
        energy = [s["energy_mj"] for s in samples if s["energy_mj"] is not None]
        if energy != sorted(energy):
            problems.append(f"{uuid}: energy counter went backwards {energy}")
        if any(s["memory_total_bytes"] is None for s in samples):
            problems.append(f"{uuid}: memory total missing")
        nulls = sorted({k for s in samples for k, v in s.items() if v is None})
        print(f"{uuid}: {len(samples)} samples; null fields: {', '.join(nulls) or 'none'}")
    print(f"{count} GPU(s), {len(by_uuid)} devices incl. MIG, {rows} rows in {elapsed:.2f}s "
          f"({args.ticks} ticks)")
    print("OK" if not problems else "PROBLEMS:\n  " + "\n  ".join(problems))
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
