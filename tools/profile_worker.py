"""Profile one `costpipe worker` draining a pre-filled backlog (py-spy, collapsed stacks).

Fills fresh topics the way bench_e2e does, runs the worker under `py-spy record --format raw`
until the lake holds every request cost record, then prints where the worker's CPU went:
self time by function and inclusive time by agent/library. Needs py-spy
(`.venv/bin/pip install py-spy`; bench only, not a project dependency).

    .venv/bin/python -m tools.profile_worker \
        [--rate 5000] [--duration 60] [--top 25]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench.bench_e2e import fill
from bench.common import COSTPIPE, ROOT, LakeCounter, create_topics, drop_run, fresh_run

GROUPS = {  # inclusive buckets: first matching frame wins, checked from the leaf up
    "allocator agent (GPU cost)": "allocator (streams/agents.py",
    "costing agent": "costing (streams/agents.py",
    "merger agent": "merger (streams/agents.py",
    "lake sink agents": "lake_sink (streams/lake_sink.py",
    "aiokafka producer/sender": "aiokafka/producer",
    "aiokafka consumer/fetcher": "aiokafka/consumer",
    "faust table/changelog": "faust/tables",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--idle", action="store_true",
                        help="sample waiting threads too (where the event loop waits)")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    run = fresh_run({"COSTPIPE_LAKE__FLUSH_SECONDS": "1"})
    json_topic = f"bench.json.{run.suffix}.v1"
    create_topics(run, {json_topic: 1})
    requests, end_us, _ = fill(run, args.rate, args.duration, json_topic, json_rows=0)
    out = run.folder / "profile.txt"
    log = open(run.folder / "worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [pyspy, "record", "--format", "raw", "-r", "100", "-o", str(out), "--threads",
         *(["--idle"] if args.idle else []), "--", COSTPIPE,
         "worker", "--metrics-port", "0", "--workdir", str(run.folder / "worker")],
        env=run.env, stdout=log, stderr=subprocess.STDOUT)
    counter = LakeCounter(run.lake, before_us=end_us)
    started = time.monotonic()
    while counter.count() < requests and time.monotonic() - started < 300:
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    proc.send_signal(2)  # py-spy forwards nothing; SIGINT stops it and writes the profile
    proc.wait(60)
    stacks: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[stack] += int(count)
    total = sum(stacks.values())
    leaf: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        leaf[frames[-1]] += count
        for name, needle in GROUPS.items():
            if any(needle in f for f in frames):
                groups[name] += count
    print(f"{requests:,} requests drained in {elapsed:.1f} s wall "
          f"({requests / elapsed:,.0f}/s incl. start-up); {total:,} samples at 100 Hz")
    print("\ninclusive share of samples:")
    for name, count in groups.most_common():
        print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\ntop {args.top} self time:")
    for frame, count in leaf.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {frame[:110]}")
    print(f"\nraw profile: {out}")
    drop_run(run, keep_folder=True)  # the topics go; the profile and worker log stay


if __name__ == "__main__":
    main()
