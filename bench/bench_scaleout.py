"""Scale-out: 1, 2 and 4 workers on the same data, and recovery after a SIGKILL in a group of 2.

The simulator fills the requests and GPU topics once (default 2M requests, 45 % own-model, 16
GPUs, 8 partitions, 2 stage partitions: `topics.stage_partitions`). Then, one after another
on that same data, a group of N workers (a fresh group, fresh output topics and a fresh lake
each time) processes all of it: the rate is
requests / (time from the first cost record to the last request cost record in the lake), and
the CPU is the sum over the group's worker processes (user + system), per event. The broker
shares this machine's cores, so CPU per event says more than the wall rate when the cores are
the limit. Recovery: in a group of 2, one worker is SIGKILLed when the lake is 30 % full; the
recovery time is from the kill until the group commits offsets again on every partition the
killed worker owned. Before the passes, the same fixed CPU work (no Kafka) runs alone and as
two copies at once: `machine_cpu_growth_2` is how much this machine alone inflates CPU time
when two busy processes share it, the floor under `cpu_growth_2`. `steady_*` figures count only
from 20 % to 80 % of the lake (no start-up, first rebalance or tail).

    .venv/bin/python -m bench.bench_scaleout [--duration 400] [--workers 1,2,4]
        [--stage-partitions 2] [--standby N]
Last line: JSON with events_per_s_<n>, cpu_us_per_event_<n>, speedup_2, cpu_growth_2,
machine_cpu_growth_2 and recovery_s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from bench.bench_e2e import fill, first_timestamp_s
from bench.common import (
    LakeCounter,
    Run,
    create_topics,
    delete_topics,
    emit,
    free_port,
    fresh_run,
    process_cpu_s,
    stop,
)
from costpipe.core.kafka_clients import confluent_admin

INPUTS = ("requests", "gpu")


@dataclass
class Pass:
    workers: int
    seconds: float
    cpu_s: float
    events: int
    recovery_s: float | None = None
    steady: tuple[float, float, int] | None = None  # seconds, CPU s, events from 20 % to 80 %

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def steady_rate(self) -> float | None:
        return None if self.steady is None else self.steady[2] / self.steady[0]

    @property
    def steady_cpu_us(self) -> float | None:
        return None if self.steady is None else self.steady[1] / self.steady[2] * 1e6


def _group_run(base: Run) -> Run:
    """The same input topics as `base`, with its own group, outputs, lake and state."""
    extra = {f"COSTPIPE_TOPICS__{name.upper()}": getattr(base.settings.topics, name)
             for name in INPUTS}
    extra.update(base.extra)
    extra["COSTPIPE_TOPICS__PARTITIONS"] = str(base.settings.topics.partitions)
    run = fresh_run(extra)  # its own suffix names its output topics, so they can be dropped
    create_topics(run, None, skip=INPUTS)
    return run


def _start(run: Run, index: int) -> Any:
    import subprocess

    from bench.common import COSTPIPE, ROOT

    log = open(run.folder / f"worker{index}.log", "wb")  # noqa: SIM115 - lives with the worker
    return subprocess.Popen(
        [COSTPIPE, "worker", "--metrics-port", "0", "--web-port", str(free_port()),
         "--workdir", str(run.folder / f"worker{index}"), "--loglevel", "warning"],
        env=run.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))


def _owned_offsets(run: Run) -> dict[tuple[str, int], int]:
    """Committed offsets of the group on the requests topic."""
    admin = AdminClient(confluent_admin(run.settings))
    from confluent_kafka import ConsumerGroupTopicPartitions

    topic = run.settings.topics.requests
    parts = [TopicPartition(topic, p) for p in range(run.settings.topics.partitions)]
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(run.settings.servers.worker_group, parts)])
    result = next(iter(futures.values())).result(10)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


_SPIN = ("import time, numpy as np\n"
         "t = time.process_time(); x = 0\n"
         "for i in range(6_000_000): x += i * i % 7\n"
         "a = np.random.default_rng(1).random(2_000_000)\n"
         "for _ in range(20): a = np.sort(a)\n"
         "print(time.process_time() - t)")


def machine_contention() -> float:
    """CPU seconds of a fixed piece of work when two copies run at once, over the same work
    alone, minus 1: how much this machine alone inflates CPU per event when two busy
    processes share it (no Kafka, no costpipe)."""
    import subprocess

    def spin(copies: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE)
                 for _ in range(copies)]
        return sum(float(p.communicate()[0]) for p in procs) / copies

    alone = min(spin(1) for _ in range(2))
    together = min(spin(2) for _ in range(2))
    return together / alone - 1


def one_pass(base: Run, workers: int, expected: int, end_us: int, timeout: float,
             kill_at: float | None = None) -> Pass:
    run = _group_run(base)
    counter = LakeCounter(run.lake, before_us=end_us)
    procs = [_start(run, i) for i in range(workers)]
    cpu: dict[int, float] = {}
    killed_at = None
    recovery = None
    stalled: set[tuple[str, int]] = set()
    before: dict[tuple[str, int], int] = {}
    marks: dict[float, tuple[float, float, int]] = {}  # share of the lake -> (t, CPU s, count)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is None:
                    cpu[proc.pid] = process_cpu_s(proc.pid)
            count = counter.count()
            for share in (0.2, 0.8):  # steady state: no start-up, first rebalance or tail
                if share not in marks and count >= share * expected:
                    marks[share] = (time.monotonic(), sum(cpu.values()), count)
            if count >= expected:
                break
            if kill_at is not None and killed_at is None and count >= kill_at * expected:
                before = _owned_offsets(run)
                procs[0].kill()
                killed_at = time.monotonic()
                stalled = set(before)
            if killed_at is not None and recovery is None and stalled:
                now = _owned_offsets(run)
                stalled = {tp for tp in stalled if now.get(tp, -1) <= before.get(tp, -1)}
                if not stalled:
                    recovery = time.monotonic() - killed_at
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{workers} worker(s): lake holds {counter.count():,}/"
                               f"{expected:,} after {timeout:.0f} s (see {run.folder})")
        done = time.time()
    finally:
        for proc in procs:
            stop(proc)
    started = first_timestamp_s(run, run.settings.topics.costs)
    steady = None
    if kill_at is None and len(marks) == 2 and marks[0.8][2] > marks[0.2][2]:
        (t0, c0, n0), (t1, c1, n1) = marks[0.2], marks[0.8]
        steady = (t1 - t0, c1 - c0, n1 - n0)
    result = Pass(workers, done - started, sum(cpu.values()), expected, recovery, steady)
    delete_topics(run.settings, run.suffix)
    shutil.rmtree(run.folder, ignore_errors=True)  # its lake, state and worker logs
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--duration", type=int, default=400, help="simulated seconds "
                        "(default: 2M requests)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--no-recovery", action="store_true")
    parser.add_argument("--stage-partitions", type=int, default=2,
                        help="topics.stage_partitions (0: the setting's default, as many as "
                        "--partitions)")
    parser.add_argument("--standby", type=int, default=None,
                        help="servers.worker_standby_replicas (default: the setting's)")
    args = parser.parse_args()
    extra = {"COSTPIPE_LAKE__FLUSH_SECONDS": "1",
             "COSTPIPE_TOPICS__PARTITIONS": str(args.partitions),
             "COSTPIPE_INGEST__DEDUP_HORIZON_SECONDS": "3600"}
    if args.stage_partitions:
        extra["COSTPIPE_TOPICS__STAGE_PARTITIONS"] = str(args.stage_partitions)
    if args.standby is not None:
        extra["COSTPIPE_SERVERS__WORKER_STANDBY_REPLICAS"] = str(args.standby)
    base = fresh_run(extra)
    create_topics(base)
    print(f"  run {base.suffix}: filling topics ...", file=sys.stderr, flush=True)
    json_topic = f"bench.json.{base.suffix}.v1"
    requests, end_us, messages = fill(base, args.rate, args.duration, json_topic, json_rows=0)
    print(f"  {requests:,} requests in {messages:,} messages", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"requests": requests, "partitions": args.partitions,
                              "stage_partitions": args.stage_partitions or args.partitions,
                              "machine_cpu_growth_2": machine_contention()}
    print(f"  this machine alone: +{result['machine_cpu_growth_2']:.0%} CPU for the same work "
          "with 2 processes at once", file=sys.stderr, flush=True)
    passes: dict[int, Pass] = {}
    try:
        for n in (int(x) for x in args.workers.split(",")):
            one = one_pass(base, n, requests, end_us, args.timeout)
            passes[n] = one
            print(f"  {n} worker(s): {one.rate:,.0f} events/s, {one.cpu_us:.1f} us CPU/event"
                  f" (steady, 20-80 % of the lake: {one.steady_rate or 0:,.0f} events/s, "
                  f"{one.steady_cpu_us or 0:.1f} us)", file=sys.stderr, flush=True)
            result[f"events_per_s_{n}"] = one.rate
            result[f"cpu_us_per_event_{n}"] = one.cpu_us
            result[f"steady_events_per_s_{n}"] = one.steady_rate
            result[f"steady_cpu_us_per_event_{n}"] = one.steady_cpu_us
        if 1 in passes and 2 in passes:
            result["speedup_2"] = passes[2].rate / passes[1].rate
            result["cpu_growth_2"] = passes[2].cpu_us / passes[1].cpu_us - 1
            one, two = passes[1], passes[2]
            if one.steady_cpu_us and two.steady_cpu_us and one.steady_rate and two.steady_rate:
                result["steady_speedup_2"] = two.steady_rate / one.steady_rate
                result["steady_cpu_growth_2"] = two.steady_cpu_us / one.steady_cpu_us - 1
        if 1 in passes and 4 in passes:
            result["speedup_4"] = passes[4].rate / passes[1].rate
        if not args.no_recovery:
            killed = one_pass(base, 2, requests, end_us, args.timeout, kill_at=0.3)
            result["recovery_s"] = killed.recovery_s
            result["events_per_s_2_killed"] = killed.rate
            print(f"  SIGKILL of 1 of 2: recovered in {killed.recovery_s or float('nan'):.1f} "
                  f"s; run at {killed.rate:,.0f} events/s", file=sys.stderr, flush=True)
    finally:
        delete_topics(base.settings, base.suffix)
        shutil.rmtree(base.folder, ignore_errors=True)
    emit(result)


if __name__ == "__main__":
    main()
