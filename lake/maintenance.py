"""Keep the lake fast to read: compact closed hours, then roll them up, in that order.

Why this order: compaction renames an hour's files, which changes the hour's source hash;
rolling up after it means a closed hour is rolled up once, from its final files.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from costpipe.core.settings import LakeSettings
from costpipe.lake.compaction import CompactionStats, compact
from costpipe.lake.layout import Lake
from costpipe.lake.rollup import RollupStats, build


@dataclass(frozen=True)
class MaintenanceResult:
    compaction: dict[str, CompactionStats]
    rollups: RollupStats
    closed_before: dt.datetime


def maintain(lake: Lake, options: LakeSettings, now: float | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> MaintenanceResult:
    """Compact and roll up every hour that ended `options.closed_after_seconds` before `now`
    (default: the clock; replaced files and stale rollups age by the wall clock always)."""
    now = time.time() if now is None else now
    closed_before = dt.datetime.fromtimestamp(now - options.closed_after_seconds, dt.UTC)
    compaction = compact(lake, closed_before, options.compaction_grace_seconds, progress)
    rollups = build(lake, closed_before, options.compaction_grace_seconds, progress=progress)
    return MaintenanceResult(compaction, rollups, closed_before)
