"""A SIGKILL during compaction leaves the lake readable with the same totals, every time.

`costpipe compact` runs as its own process over a lake of many small files and is killed each
time one more merged file has landed (its replaced files still beside it); after each kill the
views answer exactly as before (no partial state, no row counted twice), and a final run
completes the job.
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


def _merged(lake) -> int:
    """Files compaction wrote (the sink's flushes here cover 10 offsets each)."""
    return sum(1 for f in list_files(lake, lake.path("costs")) if f.last - f.first > 9)


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
    for kill in range(2):
        # SIGKILL just after one more hour-partition's merged file landed: its replaced files
        # are still there (and maybe the next merge's staging file), so readers must hide them
        process = _compact(tmp_path)
        wait_for = _merged(lake) + 1
        while _merged(lake) < wait_for:
            assert process.poll() is None, "compaction finished before the kill"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        assert _merged(lake) == kill + 1
        assert _totals(tmp_path) == want, f"after kill {kill + 1}"
    process = _compact(tmp_path)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    assert _totals(tmp_path) == want
    assert len(live_files(lake, "costs")) == 8  # one per hour and partition
    # with no grace, what the killed runs and this one replaced is gone too
    assert len(list_files(lake, lake.path("costs"))) == 8
