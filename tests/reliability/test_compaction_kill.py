"""A SIGKILL during compaction leaves the lake readable with the same totals, every time.

`costpipe compact` runs as its own process over a lake of many small files and is killed at
several points of its work; after each kill the views answer exactly as before (no partial
state, no row counted twice), and a final run completes the job.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.settings import LakeSettings, Settings
from costpipe.lake.files import list_files, live_files
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range

START = dt.datetime(2026, 11, 1, 20, tzinfo=dt.UTC)
TOTALS = """
SELECT count(*), sum(cost), sum(list_cost), sum(shadow_cost),
       (SELECT sum(requests) FROM dependency_share), (SELECT sum(cost) FROM dependency_share),
       (SELECT sum(loaded_cost) FROM cost_per_operation),
       (SELECT sum(avoided_spend) FROM avoided_spend)
FROM costs
"""


def _totals(root: Path) -> tuple:
    con = analytics.connect(Settings(lake=LakeSettings(location=str(root))))
    return con.execute(TOTALS).fetchall()[0]


def _compact(root: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTPIPE_")}
    env["COSTPIPE_LAKE__LOCATION"] = str(root)
    return subprocess.Popen(
        [sys.executable, "-m", "costpipe.cli", "compact", "--closed-after", "0", "--grace", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_during_compaction_keeps_every_total(tmp_path):
    lake = open_lake(str(tmp_path))
    offset = 0
    for flush in range(240):  # 4 hours x 2 partitions of small sink flushes
        data = sample.costs(40, seed=flush, start=START + dt.timedelta(minutes=flush),
                            days=1 / 1440)
        write_range(lake, "costs", data, "costpipe.costs.v1", flush % 2, offset, offset + 9)
        offset += 10
    want = _totals(tmp_path)
    kills = 0
    for delay in (1.5, 2.2, 2.9):
        process = _compact(tmp_path)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert _totals(tmp_path) == want, f"after a kill at {delay} s"
    assert kills >= 2  # the kills really landed while it worked
    process = _compact(tmp_path)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert _totals(tmp_path) == want
    assert len(live_files(lake, "costs")) == 8  # one per hour and partition
    process = _compact(tmp_path)  # the next run deletes what the last one replaced
    assert process.wait(timeout=120) == 0
    assert len(list_files(lake, lake.path("costs"))) == 8
    assert _totals(tmp_path) == want
