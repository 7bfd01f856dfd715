"""A lake on object storage works end to end, offline: the sink writes it, `costpipe sql`,
`report` and `export` read it, `compact` compacts and rolls it up, and every total equals the
same rows' local lake exactly.

The S3 server is the session's local one (`s3_endpoint` in tests/conftest.py, moto on
127.0.0.1). The CLI runs as a subprocess with the lake given only as COSTPIPE_LAKE__* settings,
HOME pointed at an empty folder (no ~/.aws, no DuckDB extension cache) and no AWS_* variables.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pytest

from costpipe import analytics
from costpipe.analytics import sample
from costpipe.core.settings import LakeSettings, Settings, SettingsError, load_settings
from costpipe.lake import rollup
from costpipe.lake.files import list_files, live_files
from costpipe.lake.layout import Lake, open_lake
from costpipe.lake.sink import LakeSink

pytestmark = pytest.mark.timeout(240)

COSTPIPE = Path(sys.executable).parent / "costpipe"
START = dt.datetime(2026, 11, 1, 21, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 1)
SHARE = "SELECT * FROM dependency_share ORDER BY day, operation, team"
PER_OPERATION = ("SELECT * FROM cost_per_operation "
                 "ORDER BY operation, provider_kind, provider, model")
TOTALS = """
SELECT * FROM dependency_share; SELECT * FROM cost_per_operation; SELECT * FROM avoided_spend;
SELECT
    (SELECT count(*) FROM costs) AS cost_rows,
    (SELECT sum(cost) FROM costs) AS cost,
    (SELECT sum(list_cost) FROM costs) AS list_cost,
    (SELECT sum(shadow_cost) FROM costs) AS shadow_cost,
    (SELECT sum(cost) FROM idle_cost) AS idle_cost,
    (SELECT sum(cost) FROM windows) AS window_cost,
    (SELECT count(*) FROM gpu_samples) AS gpu_rows,
    (SELECT count(*) FROM alerts) AS alert_rows,
    (SELECT count(*) FROM duckdb_extensions()
     WHERE extension_name = 'httpfs' AND loaded) AS httpfs_loaded,
    current_setting('autoinstall_known_extensions') AS autoinstall,
    current_setting('autoload_known_extensions') AS autoload
"""


def _data() -> dict[str, tuple[str, pa.Table]]:
    """Six hours across midnight (two days, few files: the local S3 server is slow per call)."""
    costs = sample.costs(12_000, start=START, days=0.25)
    windows, alerts = sample.windows_and_alerts(costs)
    return {
        "costs": ("costpipe.costs.v1", costs),
        "gpu_samples": ("costpipe.gpu.v1", sample.gpu_samples(1_500, start=START, days=0.25)),
        "windows": ("costpipe.windows.v1", windows),
        "alerts": ("costpipe.alerts.v1", alerts),
    }


def _fill(lake: Lake, data: dict[str, tuple[str, pa.Table]]) -> None:
    """The real sink: messages on two partitions, flushed by row count, then the rest."""
    sink = LakeSink(lake, flush_rows=3_000, flush_seconds=10**9)
    for table_name, (topic, rows) in data.items():
        for offset, batch in enumerate(rows.to_batches(max_chunksize=1_000)):
            sink.add((table_name, topic, offset % 2), offset, batch)
            sink.flush_due()
    sink.flush_all()


def _env(tmp_path: Path, lake: LakeSettings | str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "COSTPIPE_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env["HOME"] = str(home)
    if isinstance(lake, str):
        env["COSTPIPE_LAKE__LOCATION"] = lake
        return env
    for key, value in lake.model_dump().items():
        if key == "location" or key.startswith("s3_"):
            env[f"COSTPIPE_LAKE__{key.upper()}"] = str(value)
    return env


def _cli(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run([str(COSTPIPE), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"costpipe {args[0]}: {done.stderr}"
    return done.stdout


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _sum(table: pa.Table, column: str) -> Decimal:
    return pc.sum(table[column]).as_py() or Decimal(0)


def _read_json(lake: Lake, path: str) -> dict:
    with lake.fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def test_cli_on_an_s3_lake_equals_the_local_lake(tmp_path, s3_lake_settings):
    data = _data()
    s3_lake = open_lake(s3_lake_settings.location, s3_lake_settings)
    assert isinstance(s3_lake.fs, pafs.S3FileSystem) and not s3_lake.is_local
    local_root = str(tmp_path / "local-lake")
    _fill(s3_lake, data)
    _fill(open_lake(local_root), data)
    s3_env, local_env = _env(tmp_path, s3_lake_settings), _env(tmp_path, local_root)

    for query in (SHARE, PER_OPERATION):
        on_s3 = _cli(s3_env, tmp_path, "sql", query, "--format", "csv")
        assert _csv(on_s3) and on_s3 == _cli(local_env, tmp_path, "sql", query, "--format", "csv")

    on_s3 = totals_csv = _cli(s3_env, tmp_path, "sql", TOTALS, "--format", "csv")
    assert on_s3 == _cli(local_env, tmp_path, "sql", TOTALS, "--format", "csv")
    totals = _csv(on_s3)[0]
    costs = data["costs"][1]
    idle = costs.filter(pc.equal(costs["record_type"], "idle"))
    assert int(totals["cost_rows"]) == costs.num_rows
    for column in ("cost", "list_cost", "shadow_cost"):  # to the pico-dollar
        assert Decimal(totals[column]) == _sum(costs, column)
    assert Decimal(totals["idle_cost"]) == _sum(idle, "cost")
    assert Decimal(totals["window_cost"]) == _sum(data["windows"][1], "cost")
    assert int(totals["gpu_rows"]) == data["gpu_samples"][1].num_rows
    assert int(totals["alert_rows"]) == data["alerts"][1].num_rows
    # nothing downloaded or loaded: DuckDB's httpfs is never needed, auto-install is off
    assert (totals["httpfs_loaded"], totals["autoinstall"], totals["autoload"]) == (
        "0", "false", "false")

    for env, name in ((s3_env, "s3.html"), (local_env, "local.html")):
        _cli(env, tmp_path, "report", "--out", str(tmp_path / name))
    generated = re.compile(r"generated [^<]*UTC\.")
    reports = [generated.sub("generated -.", (tmp_path / n).read_text(encoding="utf-8"))
               for n in ("s3.html", "local.html")]
    assert "Total cost" in reports[0] and reports[0] == reports[1]

    # compaction and rollups on object storage keep every total (same lake: S3 calls are slow)
    files_before = len(live_files(s3_lake, "costs"))
    out = _cli(s3_env, tmp_path, "compact", "--closed-after", "0", "--grace", "0")
    assert "rollups:" in out and "merged" in out
    assert len(live_files(s3_lake, "costs")) < files_before
    # grace 0: what each merge replaced is gone already
    assert len(list_files(s3_lake, s3_lake.path("costs"))) == len(live_files(s3_lake, "costs"))
    plan = rollup.plan(s3_lake)
    assert plan.costs and not plan.tail  # every hour read from rollups
    assert _cli(s3_env, tmp_path, "sql", TOTALS, "--format", "csv") == totals_csv


def test_export_on_an_s3_lake_lands_in_the_lake(tmp_path, s3_lake_settings):
    data = _data()
    s3_lake = open_lake(s3_lake_settings.location, s3_lake_settings)
    local_lake = open_lake(str(tmp_path / "local-lake"))
    _fill(s3_lake, data)
    _fill(local_lake, data)
    s3_env, local_env = _env(tmp_path, s3_lake_settings), _env(tmp_path, local_lake.uri)
    costs = data["costs"][1]
    day_costs = costs.filter(pc.equal(pc.cast(costs["timestamp"], pa.date32()), DAY))

    manifests = {}
    for fmt in ("parquet", "focus"):
        out = _cli(s3_env, tmp_path, "export", "--date", DAY.isoformat(), "--format", fmt)
        folder = f"_exports/date={DAY.isoformat()}/{fmt}"
        assert f"manifest: {s3_lake_settings.location}/{folder}/manifest.json" in out
        _cli(local_env, tmp_path, "export", "--date", DAY.isoformat(), "--format", fmt)
        on_s3 = _read_json(s3_lake, s3_lake.path(folder, "manifest.json"))
        manifests[fmt] = _read_json(local_lake, local_lake.path(folder, "manifest.json"))
        # same rows, the same files byte for byte (their sha256), the same sums
        assert on_s3 == manifests[fmt]
        entry = on_s3["tables"]["focus" if fmt == "focus" else "costs"]
        total = entry["sums"]["BilledCost" if fmt == "focus" else "cost"]
        assert Decimal(total) == _sum(day_costs, "cost")  # to the pico-dollar
        if fmt == "parquet":
            assert entry["rows"] == day_costs.num_rows
        listed = s3_lake.fs.get_file_info(pafs.FileSelector(s3_lake.path(folder)))
        names = sorted(i.base_name for i in listed if i.type == pafs.FileType.File)
        expected = [f["name"] for t in on_s3["tables"].values() for f in t["files"]]
        assert names == sorted([*expected, "manifest.json"])  # no .tmp- leftovers

    _cli(s3_env, tmp_path, "export", "--date", DAY.isoformat())  # again, over itself
    folder = f"_exports/date={DAY.isoformat()}/parquet"
    assert _read_json(s3_lake, s3_lake.path(folder, "manifest.json")) == manifests["parquet"]
    _cli(s3_env, tmp_path, "export", "--date", DAY.isoformat(), "--out", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifests["parquet"]


def test_empty_s3_lake_has_empty_views(s3_lake_settings):
    con = analytics.connect(Settings(lake=s3_lake_settings))
    assert con.execute("SELECT count(*) FROM costs").fetchall() == [(0,)]
    assert analytics.dependency_share(con).height == 0
    assert analytics.summary(con)["requests"] == 0


def test_s3_settings_name_the_key_and_never_show_the_secret():
    secret = "do-not-print-me"
    with pytest.raises(SettingsError, match=r"lake\.s3_access_key_id") as info:
        load_settings(environ={"COSTPIPE_LAKE__S3_SECRET_ACCESS_KEY": secret})
    assert secret not in str(info.value)
    with pytest.raises(SettingsError, match=r"lake\.s3_secret_access_key"):
        load_settings(environ={"COSTPIPE_LAKE__S3_ACCESS_KEY_ID": "key"})
    with pytest.raises(SettingsError, match=r"lake\.s3_endpoint"):
        load_settings(environ={"COSTPIPE_LAKE__S3_ENDPOINT": "127.0.0.1:9000"})
    with pytest.raises(SettingsError, match=r"lake\.location"):
        load_settings(environ={"COSTPIPE_LAKE__LOCATION": "s3://b/p?endpoint_override=x"})
    loaded = load_settings(environ={"COSTPIPE_LAKE__S3_ACCESS_KEY_ID": "key",
                                    "COSTPIPE_LAKE__S3_SECRET_ACCESS_KEY": secret,
                                    "COSTPIPE_LAKE__S3_ENDPOINT": "http://127.0.0.1:9000/"})
    assert loaded.lake.s3_endpoint == "http://127.0.0.1:9000"
    assert secret not in repr(loaded) and secret not in repr(loaded.lake)

