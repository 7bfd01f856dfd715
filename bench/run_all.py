"""Run every benchmark (`make bench`), print a table and write bench/RESULTS.md.

Each benchmark runs as its own process `--runs` times (default 3); the table shows the median
and every run's value. Comparisons (costpipe vs the limit and vs the peers) are measured in the
same run on the same topic data and reported as ratios, because absolute figures drift on a
shared machine. Needs a broker: KAFKA_BOOTSTRAP_SERVERS, else the local one (`make bench` starts
it).

    .venv/bin/python -m bench.run_all [--runs 3] [--only e2e,alerts] [--memory-duration 600]
                                      [--rows-100m] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import PY, ROOT, bootstrap, median

QUIX_VENV = ROOT / "bench" / ".venv-quix"
DATA = ROOT / "bench" / "data"  # generated lakes (not committed)
STORE = ROOT / "bench" / "results.json"  # every benchmark's last runs (committed)
console = Console()


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: str = ""
    ok: Callable[[float], bool] | None = None
    digits: int = 0


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    cmd: list[str]
    parse: Callable[[str], dict[str, float]]
    figures: tuple[Figure, ...]
    runs: int | None = None  # None = --runs
    timeout: float = 900
    optional: bool = False  # long: runs only when named (--only) or asked for by its flag


def last_json(out: str) -> dict[str, Any]:
    """The last JSON object printed (one line, or pretty-printed over several lines)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    for match in re.finditer(r"^\{", out, re.M):
        try:
            found, _ = decoder.raw_decode(out[match.start():])
        except json.JSONDecodeError:
            continue
    if found is None:
        raise ValueError("no JSON result in the output")
    return found


def grab(pattern: str, out: str) -> float:
    match = re.search(pattern, out)
    if not match:
        raise ValueError(f"no match for {pattern!r}")
    return float(match.group(1).replace(",", ""))


def parse_sdk(out: str) -> dict[str, float]:
    return {"cpu_us": grab(r"caller-thread CPU per tracked call: median ([\d.]+)", out),
            "wall_us": grab(r"wall time per tracked call.*?median ([\d.]+)", out)}


def parse_queries(out: str) -> dict[str, float]:
    return {name: grab(rf"{name}: median of 3 = ([\d.]+) s", out)
            for name in ("dependency_share", "cost_per_operation", "avoided_spend", "breakeven")}


def parse_simulator(out: str) -> dict[str, float]:
    return {"events_per_s": grab(r"throughput into Kafka.*?: ([\d,]+) events/s", out)}


def parse_streams(out: str) -> dict[str, float]:
    return {"events_per_s": grab(r"= ([\d,]+) events/s", out)}


def le(limit: float) -> Callable[[float], bool]:
    return lambda v: v <= limit


def ge(limit: float) -> Callable[[float], bool]:
    return lambda v: v >= limit


def half_e2e_rate() -> int:
    """Half the e2e median of the last run (bench/results.json): the memory bench's rate."""
    try:
        saved = json.loads(STORE.read_text())
        return int(median(saved["e2e"]["values"]["costpipe_events_per_s"]) / 2)
    except (OSError, KeyError, TypeError, ValueError):
        return 50_000


def benches(args: argparse.Namespace) -> list[Bench]:
    memory_rate = half_e2e_rate()
    e2e_args = ["--duration", "40"] if args.quick else []
    lake10 = DATA / ("lake-1m" if args.quick else "lake-10m")
    rows10 = "1000000" if args.quick else "10000000"
    out = [
        Bench("e2e", "End-to-end throughput (one worker) vs limit and peers, same data",
              [PY, "-m", "bench.bench_e2e", *e2e_args], last_json, (
                  Figure("costpipe_events_per_s", "costpipe sustained", "events/s",
                         ">= 100,000", ge(100_000)),
                  Figure("worker_cpu_us_per_event", "costpipe worker CPU per event", "us",
                         digits=1),
                  Figure("limit_events_per_s", "limit: raw consume, Arrow topic", "events/s"),
                  Figure("limit_json_events_per_s", "raw consume, per-event JSON topic",
                         "events/s"),
                  Figure("quix_events_per_s", "peer: Quix Streams per-event", "events/s"),
                  Figure("faust_events_per_s", "peer: plain Faust per-event", "events/s"),
                  Figure("costpipe_over_limit", "costpipe / limit", "x", digits=4),
                  Figure("costpipe_over_quix", "costpipe / Quix", "x", digits=2),
                  Figure("costpipe_over_faust", "costpipe / Faust per-event", "x", digits=1),
              )),
        Bench("alerts", "Alert latency (2 s windows, lateness 0, 24 spikes per run)",
              [PY, "-m", "bench.bench_alerts", *(["--spikes", "8"] if args.quick else [])],
              last_json, (
                  Figure("p50_s", "spike -> alert p50", "s", digits=2),
                  Figure("p99_s", "spike -> alert p99", "s", "<= 4 (window + 2)", le(4.0), 2),
                  Figure("alerted", "spikes alerted (of 24)", ""),
              ), runs=1 if args.quick else None),
        Bench("queries", f"Query speed over {int(rows10):,} cost records",
              [PY, "-m", "bench.bench_queries", "--rows", rows10, "--lake", str(lake10)],
              parse_queries, tuple(  # the target is on the first two only
                  Figure(n, n, "s", "< 1", le(1.0), 3) if n in ("dependency_share",
                                                                "cost_per_operation")
                  else Figure(n, n, "s", digits=3)
                  for n in ("dependency_share", "cost_per_operation", "avoided_spend",
                            "breakeven"))),
        Bench("sdk", "SDK caller overhead per tracked call", [PY, "-m", "bench.bench_sdk"],
              parse_sdk, (Figure("cpu_us", "caller-thread CPU", "us", "<= 10", le(10.0), 2),
                          Figure("wall_us", "caller wall time (GIL shared)", "us", digits=2))),
        Bench("proxy", "Proxy added latency, 200 streams in flight (Kafka producer on; proxy"
              " on its own CPU, stub + load generator on the other)",
              [PY, "-m", "bench.bench_proxy", "--kafka",
               *(["--rounds", "10", "--blocks", "5"] if args.quick else [])],
              last_json, (
                  Figure("added_stream_ms_p50", "added p50 (whole stream)", "ms", digits=2),
                  Figure("added_stream_ms_p99", "added p99 (whole stream)", "ms", "<= 2",
                         le(2.0), 2),
                  Figure("added_ttft_ms_p50", "added p50 (first chunk)", "ms", digits=2),
                  Figure("added_ttft_ms_p99", "added p99 (first chunk)", "ms", digits=2),
                  Figure("direct_stream_ms_p99", "direct stream p99 (0.4 s nominal)", "ms",
                         digits=1),
                  Figure("proxy_cpu_us_per_chunk", "proxy CPU per chunk", "us", digits=1),
              )),
        Bench("proxy_aiohttp", "Proxy added latency with an aiohttp data path, same harness as"
              " proxy",
              [PY, "-m", "bench.bench_proxy", "--kafka", "--data-path", "aiohttp",
               *(["--rounds", "10", "--blocks", "5"] if args.quick else [])],
              last_json, (
                  Figure("added_stream_ms_p50", "added p50 (whole stream)", "ms", digits=2),
                  Figure("added_stream_ms_p99", "added p99 (whole stream)", "ms", digits=2),
                  Figure("added_ttft_ms_p50", "added p50 (first chunk)", "ms", digits=2),
                  Figure("added_ttft_ms_p99", "added p99 (first chunk)", "ms", digits=2),
                  Figure("direct_stream_ms_p99", "direct stream p99 (0.4 s nominal)", "ms",
                         digits=1),
                  Figure("proxy_cpu_us_per_chunk", "proxy CPU per chunk", "us", digits=1),
              )),
        Bench("proxy_herd", "Proxy, 200 requests sent in the same millisecond (a burst: the"
              " last waits for the 199 set-ups before it)",
              [PY, "-m", "bench.bench_proxy", "--kafka", "--load", "herd", "--rounds",
               "5" if args.quick else "10"],
              last_json, (
                  Figure("added_stream_ms_p50", "added p50 (whole stream)", "ms", digits=2),
                  Figure("added_stream_ms_p99", "added p99 (whole stream)", "ms", digits=2),
                  Figure("added_ttft_ms_p99", "added p99 (first chunk)", "ms", digits=2),
              )),
        Bench("otlp", "OTLP receiver", [PY, "-m", "bench.bench_otlp"], last_json, (
            Figure("http_spans_per_s", "spans/s over HTTP", "spans/s"),
            Figure("in_process_spans_per_cpu_s", "spans per CPU second, in process", "spans/s"),
        )),
        Bench("simulator", "Simulator into Kafka", [PY, "-m", "bench.bench_simulator"],
              parse_simulator, (Figure("events_per_s", "simulator -> Kafka", "events/s"),)),
        Bench("memory", f"Worker RSS, {args.memory_duration} s at {memory_rate:,} req/s (half the"
              " e2e median), 100k keys",
              [PY, "-m", "bench.bench_memory", "--duration", str(args.memory_duration),
               "--rate", str(memory_rate)],
              last_json, (
                  Figure("settle_s", "start taken at (window + lateness + horizon + 45)", "s"),
                  Figure("rss_start_mib", "RSS at start", "MiB"),
                  Figure("rss_end_mib", "RSS at end", "MiB"),
                  Figure("growth_pct", "growth", "%", "flat (<= 10)", le(10.0), 1),
              ), runs=1 if args.quick else None, timeout=args.memory_duration + 300),
    ]
    out.append(Bench(
        "scaleout", "Scale-out: 1, 2 and 4 workers on the same 2M requests (8 partitions, 2 "
        "stage partitions; the broker shares the 2 cores), then SIGKILL of 1 of 2",
        [PY, "-m", "bench.bench_scaleout"],
        last_json, (
            Figure("events_per_s_1", "1 worker", "events/s"),
            Figure("events_per_s_2", "2 workers", "events/s"),
            Figure("events_per_s_4", "4 workers", "events/s"),
            Figure("speedup_2", "2 workers / 1 worker", "x", ">= 1.6", ge(1.6), 2),
            Figure("cpu_us_per_event_1", "CPU per event, 1 worker", "us", digits=1),
            Figure("cpu_us_per_event_2", "CPU per event, 2 workers", "us", digits=1),
            Figure("cpu_growth_2", "CPU per event growth, 2 workers", "x", "<= 0.10", le(0.10),
                   3),
            Figure("steady_speedup_2", "steady state (20-80 % of the lake): 2 workers / 1",
                   "x", digits=2),
            Figure("steady_cpu_growth_2", "steady state: CPU per event growth, 2 workers", "x",
                   digits=3),
            Figure("machine_cpu_growth_2", "this machine alone: CPU growth of the same work, "
                   "2 processes at once", "x", digits=3),
            Figure("recovery_s", "SIGKILL of 1 of 2: offsets moving again after", "s",
                   digits=1),
        ), runs=1, timeout=2400))
    if (ROOT / "bench" / "bench_streams.py").exists():
        out.insert(1, Bench("streams", "Stream processing per batch, no Kafka (one core)",
                            [PY, "-m", "bench.bench_streams"], parse_streams,
                            (Figure("events_per_s", "costing+partials+merge", "events/s"),)))
    out.insert(2, Bench("lake_sink", "Parquet sink core: dedup, sort, write, fsync, rename",
                        [PY, "-m", "bench.bench_lake_sink",
                         *(["--rows", "500000"] if args.quick else [])], last_json, (
                            Figure("fresh_rows_per_s", "fresh rows made durable", "rows/s"),
                            Figure("reemitted_rows_per_s", "re-emitted rows checked and dropped",
                                   "rows/s"),
                        )))
    out.append(Bench(
        "rollups", "Rollups: query time as history grows (100 requests/s; 10M, 100M, 300M rows;"
        " worst of 5 warm runs) and files per day after compaction",
        [PY, "-m", "bench.bench_rollups", "--keep", str(DATA / "rollups")], last_json, (
            Figure("dependency_share_10m_max_s", "dependency_share, 10M rows", "s", "<= 0.3",
                   le(0.3), 3),
            Figure("dependency_share_100m_max_s", "dependency_share, 100M rows", "s", "<= 0.3",
                   le(0.3), 3),
            Figure("dependency_share_300m_max_s", "dependency_share, 300M rows", "s", "<= 0.3",
                   le(0.3), 3),
            Figure("dependency_share_growth", "dependency_share 300M / 10M", "x", "<= 2",
                   le(2.0), 2),
            Figure("cost_per_operation_10m_max_s", "cost_per_operation, 10M rows", "s",
                   "<= 0.3", le(0.3), 3),
            Figure("cost_per_operation_100m_max_s", "cost_per_operation, 100M rows", "s",
                   "<= 0.3", le(0.3), 3),
            Figure("cost_per_operation_300m_max_s", "cost_per_operation, 300M rows", "s",
                   "<= 0.3", le(0.3), 3),
            Figure("cost_per_operation_growth", "cost_per_operation 300M / 10M", "x", "<= 2",
                   le(2.0), 2),
            Figure("dependency_share_10m_raw_s", "dependency_share, 10M rows, raw scan", "s",
                   digits=3),
            Figure("dependency_share_100m_raw_s", "dependency_share, 100M rows, raw scan", "s",
                   digits=3),
            Figure("cost_per_operation_10m_raw_s", "cost_per_operation, 10M rows, raw scan",
                   "s", digits=3),
            Figure("cost_per_operation_100m_raw_s", "cost_per_operation, 100M rows, raw scan",
                   "s", digits=3),
            Figure("connect_10m_s", "connect (list files, build views), 10M", "s", digits=3),
            Figure("connect_300m_s", "connect (list files, build views), 300M", "s", digits=3),
            Figure("maintain_300m_s", "first maintenance of the 300M lake", "s", digits=1),
            Figure("files_per_day_before", "files per day before compaction (2 partitions, "
                   "a flush every 10 s)", ""),
            Figure("files_per_day_after", "files per day after compaction", "", "a few per "
                   "partition"),
            Figure("files_per_hour_folder_after", "files per hour folder after compaction", "",
                   digits=1),
            Figure("compact_s", "compaction of that day", "s", digits=1),
        ), runs=1, timeout=5400, optional=True))
    if args.rows_100m:
        out.append(Bench(
            "queries100m", "Query speed over 100,000,000 cost records",
            [PY, "-m", "bench.bench_queries", "--rows", "100000000", "--lake",
             str(DATA / "lake-100m")], parse_queries,
            tuple(Figure(n, n, "s", digits=3) for n in ("dependency_share",
                                                        "cost_per_operation")),
            timeout=3600))  # the lake is built once, by the first run
    out.append(Bench(
        "dashboard", f"Dashboard overview over {int(rows10):,} cost records (headless Chromium)",
        [PY, "-m", "bench.bench_dashboard", "--rows", rows10, "--lake", str(lake10)], last_json, (
            Figure("first_paint_s", "first paint of the overview (median of 5 page loads)",
                   "s", "< 1", le(1.0), 3),
            Figure("first_paint_worst_s", "first paint, worst of the 5", "s", "< 1", le(1.0),
                   3),
            Figure("overview_uncached_s", "overview answer, uncached (a new filter)", "s",
                   digits=3),
            Figure("server_start_s", "dashboard start incl. warm overview", "s", digits=2),
            Figure("maintained_first_paint_s", "maintained lake (rollups): first paint, median",
                   "s", "< 1", le(1.0), 3),
            Figure("maintained_first_paint_worst_s", "maintained lake: first paint, worst", "s",
                   "< 1", le(1.0), 3),
            Figure("maintained_overview_uncached_s", "maintained lake: overview uncached", "s",
                   digits=3),
            Figure("maintained_server_start_s", "maintained lake: dashboard start", "s",
                   digits=2),
        ), runs=1))
    return out


def ensure_quix() -> None:
    """Quix pins confluent-kafka < 2.12, so it lives in its own virtualenv."""
    if (QUIX_VENV / "bin" / "python").exists():
        return
    console.print("creating bench/.venv-quix (quixstreams) ...")
    subprocess.run(["python3.11", "-m", "venv", str(QUIX_VENV)], check=True)
    subprocess.run([str(QUIX_VENV / "bin" / "pip"), "install", "-q", "quixstreams"], check=True)


def machine() -> dict[str, str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    from costpipe.core.settings import load_settings

    kafka = f"Apache Kafka {load_settings().kafka.kafka_version} (KRaft, local)"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "ram": f"{mem_kb / 1024 / 1024:.1f} GiB",
            "python": platform.python_version(), "os": platform.platform(),
            "kafka": f"{kafka} at {bootstrap()}",
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def run_bench(bench: Bench, runs: int, progress: Progress, task: Any) -> dict[str, Any]:
    values: dict[str, list[float]] = {f.key: [] for f in bench.figures}
    errors: list[str] = []
    loads: list[float] = []
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap()}
    for i in range(runs):
        progress.update(task, description=f"{bench.name} run {i + 1}/{runs}")
        loads.append(os.getloadavg()[0])
        try:
            done = subprocess.run(bench.cmd, capture_output=True, text=True, cwd=str(ROOT),
                                  env=env, timeout=bench.timeout)
            if done.returncode != 0:
                raise RuntimeError(f"exit {done.returncode}: "
                                   f"{(done.stderr or done.stdout).strip()[-300:]}")
            figures = bench.parse(done.stdout)
            for f in bench.figures:
                if f.key in figures:
                    values[f.key].append(float(figures[f.key]))
        except Exception as exc:  # one failing bench must not stop the others
            errors.append(f"run {i + 1}: {str(exc).splitlines()[-1] if str(exc) else exc!r}")
        progress.advance(task)
    return {"values": values, "errors": errors, "load": loads}


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if value == value else "n/a"


def status(figure: Figure, values: list[float]) -> str:
    """A target holds per run: "meets" only when every run meets it."""
    if figure.ok is None or not values:
        return ""
    missed = sum(1 for v in values if not figure.ok(v))
    return "meets" if not missed else f"MISSES ({missed} of {len(values)} runs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per benchmark (median)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--memory-duration", type=int, default=600,
                        help="seconds for the memory run")
    parser.add_argument("--rows-100m", action="store_true",
                        help="also build a 100M-row lake (~20 GB, long) and time queries")
    parser.add_argument("--rollups", action="store_true",
                        help="also run the rollups bench (300M-row lake, ~10 GB, long)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--render-only", action="store_true",
                        help="write RESULTS.md from bench/results.json without running anything")
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(STORE.read_text())
        meta = saved.get("_meta", {})
        render([b for b in benches(args) if b.name in saved], saved, meta.get("machine", {}),
               tuple(meta.get("load_before", ())), tuple(meta.get("load_after", ())),
               meta.get("elapsed_s", 0.0), args.output)
        return
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    selected = benches(args)
    if args.only:
        names = {n.strip() for n in args.only.split(",")}
        unknown = names - {b.name for b in selected}
        if unknown:
            parser.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(b.name for b in selected)}")
        selected = [b for b in selected if b.name in names]
    else:
        selected = [b for b in selected if not b.optional or args.rollups]
    if any(b.name == "e2e" for b in selected):
        ensure_quix()
    DATA.mkdir(exist_ok=True)
    info = machine()
    load_before = os.getloadavg()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    total = sum(b.runs or args.runs for b in selected)
    with Progress(console=console) as progress:
        task = progress.add_task("benchmarks", total=total)
        for bench in selected:
            results[bench.name] = run_bench(bench, bench.runs or args.runs, progress, task)
    load_after = os.getloadavg()
    saved: dict[str, Any] = json.loads(STORE.read_text()) if STORE.exists() else {}
    for name, result in results.items():
        saved[name] = {**result, "date": info["date"]}
    elapsed = time.monotonic() - started
    saved["_meta"] = {"machine": info, "load_before": load_before, "load_after": load_after,
                      "elapsed_s": elapsed}
    STORE.write_text(json.dumps(saved, indent=1) + "\n")
    everything = [b for b in benches(args) if b.name in saved]
    render(everything, saved, info, load_before, load_after, elapsed, args.output)


def render(selected: list[Bench], results: dict[str, dict[str, Any]], info: dict[str, str],
           load_before: tuple[float, ...], load_after: tuple[float, ...], elapsed: float,
           output: Path) -> None:
    table = Table(title="costpipe benchmarks (median of runs)")
    for column in ("benchmark", "figure", "median", "unit", "target", "status", "runs"):
        table.add_column(column)
    md = [
        "# costpipe benchmark results", "",
        "Written by `make bench` (`bench/run_all.py`). Medians over runs; ratios are measured "
        "in the same run on the same data. Absolute figures are noisy on a shared machine. "
        "A target holds per run: a figure meets it only when every run does. `--only` re-runs "
        "some benchmarks and keeps the others' last results (bench/results.json); each "
        "benchmark's date is in the notes. Analysis of the "
        "misses, profiles and decisions: [docs/decisions/](../docs/decisions/README.md).", "",
        "## Machine", "",
        *[f"- **{k}**: {v}" for k, v in info.items()],
        f"- **load average** (1/5/15 min) before: "
        f"{' / '.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{' / '.join(f'{x:.2f}' for x in load_after)}",
        f"- **wall time of the whole run**: {elapsed / 60:.1f} min", "",
        "| benchmark | figure | median | unit | target | status | runs |",
        "|---|---|---:|---|---|---|---|",
    ]
    for bench in selected:
        result = results[bench.name]
        for figure in bench.figures:
            vals = result["values"][figure.key]
            value = median(vals)
            runs = ", ".join(fmt(v, figure.digits) for v in vals) or "-"
            row = [bench.name, figure.label, fmt(value, figure.digits), figure.unit,
                   figure.target, status(figure, vals), runs]
            table.add_row(*row)
            md.append("| " + " | ".join(row) + " |")
    md += ["", "## Notes per benchmark", ""]
    for bench in selected:
        result = results[bench.name]
        loads = ", ".join(f"{x:.2f}" for x in result["load"]) or "not recorded"
        md.append(f"- **{bench.name}** — {bench.title} ({result.get('date', 'this run')}). "
                  f"Command: "
                  f"`{' '.join(Path(c).name if c == PY else c for c in bench.cmd)}`; "
                  f"1-min load at each run start: {loads}.")
        for error in result["errors"]:
            md.append(f"  - FAILED {error}")
    console.print(table)
    for bench in selected:
        for error in results[bench.name]["errors"]:
            console.print(f"[red]{bench.name} {error}[/red]")
    # tools/soak.py appends its own section; a re-run of the benchmarks must not drop it
    previous = output.read_text(encoding="utf-8") if output.exists() else ""
    soak = previous[previous.index("\n## Soak"):] if "\n## Soak" in previous else ""
    output.write_text("\n".join(md) + "\n" + soak, encoding="utf-8")
    console.print(f"wrote {output}")


if __name__ == "__main__":
    main()
