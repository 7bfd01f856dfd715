"""First paint of the dashboard's overview on a 10M-row lake, in Debian's headless Chromium.

First paint = from navigation start to the headline numbers in the page (the page stamps
`performance.now()` on <body data-first-paint-ms> when it has drawn them). Measured on fresh
browser contexts (nothing cached) against a running `costpipe dashboard`, whose start warms the
unfiltered overview; also timed: the server's answer for the overview uncached (a new filter)
and the start itself (connect + warm-up). Target: first paint < 1 s.

    .venv/bin/python -m bench.bench_dashboard [--rows 10000000] [--lake DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench.bench_queries import build_lake
from bench.common import emit
from costpipe.core.settings import Settings
from costpipe.dashboard import server


def _serve(settings: Settings) -> tuple[str, asyncio.AbstractEventLoop, object]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    runner, url = asyncio.run_coroutine_threadsafe(server.start(settings, live=False),
                                                   loop).result(120)
    return url, loop, runner


def _get(url: str) -> float:
    started = time.perf_counter()
    urllib.request.urlopen(url, timeout=120).read()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lake", type=Path, help="reuse/keep this folder instead of a temp one")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("bench_dashboard: chromium not installed; run scripts/ensure_chromium.sh")
    root = args.lake or Path(tempfile.mkdtemp(prefix="costpipe-bench-dash-"))
    try:
        if not any(root.glob("costs/**/*.parquet")):
            print(f"generating {args.rows:,} cost records over {args.days} days in {root}")
            build_lake(root, args.rows, args.days)
        settings = Settings.model_validate({
            "lake": {"location": str(root)}, "state_dir": str(root.parent / "bench-dash-state"),
            "dashboard": {"listen": "127.0.0.1:0"}})
        started = time.perf_counter()
        url, loop, runner = _serve(settings)
        warm = _get(url + "api/overview")  # waits for the warm-up the start began
        start_s = time.perf_counter() - started
        uncached = statistics.median(_get(url + f"api/overview?to=2099-01-{d:02d}")
                                     for d in range(1, 4))
        print(f"server start + warm overview: {start_s:.2f} s (last wait {warm:.2f} s); "
              f"overview uncached: {uncached:.3f} s")
        from playwright.sync_api import sync_playwright

        paints: list[float] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium,
                                                 args=["--no-sandbox", "--disable-gpu"])
            for _ in range(args.runs):
                context = browser.new_context()  # nothing cached
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-first-paint-ms]", state="attached")
                paints.append(int(page.get_attribute("body", "data-first-paint-ms")) / 1000)
                context.close()
            browser.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)  # type: ignore[attr-defined]
        paint = statistics.median(paints)
        print(f"first paint of the overview (median of {args.runs}): {paint:.3f} s "
              f"[{'OK' if paint < 1 else 'over 1 s target'}] runs: "
              + ", ".join(f"{p:.3f}" for p in paints))
        emit({"first_paint_s": paint, "overview_uncached_s": uncached,
              "server_start_s": start_s, "rows": args.rows})
    finally:
        if args.lake is None:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(root.parent / "bench-dash-state", ignore_errors=True)


if __name__ == "__main__":
    main()
