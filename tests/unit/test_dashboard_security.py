"""The dashboard's guards, without a browser: the SQL console's sandbox against hostile
statements, the refusal to listen off loopback without a token, and the token check itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from costpipe.analytics import sample
from costpipe.cli import app as cli
from costpipe.core.settings import Settings
from costpipe.dashboard.app import create_app
from costpipe.dashboard.console import Console, ConsoleError
from costpipe.lake.layout import open_lake
from costpipe.lake.writer import write_range


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("console")
    lake = open_lake(str(root / "lake"))
    write_range(lake, "costs", sample.costs(2_000, days=1), "costpipe.costs.v1", 0, 0, 0)
    (root / "outside.csv").write_text("secret\n42\n")
    return Settings.model_validate({"lake": {"location": str(root / "lake")},
                                    "state_dir": str(root / "state"),
                                    "dashboard": {"sql_row_cap": 5, "sql_timeout_seconds": 1}})


@pytest.fixture(scope="module")
def console(settings: Settings) -> Console:
    return Console(settings)


def test_console_answers_selects_with_a_row_cap(console: Console) -> None:
    result = console.run("SELECT operation, count(*) FROM costs GROUP BY ALL ORDER BY 1")
    assert result.columns[0] == "operation" and len(result.rows) == 5 and result.truncated
    assert console.run("SELECT sum(requests) FROM dependency_share").rows[0][0] > 0


@pytest.mark.parametrize(("sql", "message"), [
    ("COPY (SELECT * FROM costs) TO '{root}/out.csv'", "refused COPY"),
    ("COPY costs FROM '{root}/outside.csv'", "refused COPY"),
    ("ATTACH '{root}/other.db' AS other", "refused ATTACH"),
    ("INSTALL httpfs", "refused LOAD"),
    ("LOAD httpfs", "refused LOAD"),
    ("CREATE TABLE stolen AS SELECT 1", "refused CREATE"),
    ("CREATE MACRO m() AS 1", "refused CREATE"),
    ("DROP VIEW costs", "refused DROP"),
    ("EXPORT DATABASE '{root}/export'", "refused EXPORT"),
    ("SET enable_external_access = true", "refused SET"),
    ("PRAGMA enable_profiling", "refused PRAGMA"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    ("SELECT * FROM read_csv('{root}/outside.csv')", "reads the lake and nothing else"),
    ("SELECT * FROM read_text('/etc/passwd')", "reads the lake and nothing else"),
    ("SELECT * FROM read_blob('{lake}/../outside.csv')", "reads the lake and nothing else"),
    ("SELECT * FROM glob('/*')", "reads the lake and nothing else"),
    ("SELECT count(*) FROM range(10000000000) a, range(1000000) b", "time limit of 1 s"),
])
def test_console_refuses_hostile_statements(settings: Settings, console: Console, sql: str,
                                            message: str) -> None:
    lake = Path(settings.lake.location)
    with pytest.raises(ConsoleError, match=message):
        console.run(sql.format(root=lake.parent, lake=lake))
    assert not (lake.parent / "out.csv").exists() and not (lake.parent / "export").exists()
    assert console.run("SELECT 1").rows == [(1,)]  # and it still answers


def test_non_loopback_listen_without_token_refuses_in_one_line(settings: Settings) -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--listen", "0.0.0.0:8080", "--no-live",
                                      "--lake", settings.lake.location])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--auth-token" in lines[0] and "0.0.0.0:8080" in lines[0]


def test_token_is_required_and_kept_in_a_cookie(settings: Settings) -> None:
    guarded = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
        update={"auth_token": "s3cret"})})

    async def scenario() -> None:
        async with TestClient(TestServer(create_app(guarded, live=False))) as client:
            assert (await client.get("/api/options")).status == 401
            assert (await client.get("/?token=wrong")).status == 401
            assert (await client.get("/api/options",
                                     headers={"X-Costpipe-Token": "s3cret"})).status == 200
            first = await client.get("/?token=s3cret&tab=sql", allow_redirects=False)
            assert first.status == 302 and "token" not in first.headers["Location"]
            assert "s3cret" in first.headers["Set-Cookie"] and "HttpOnly" in \
                first.headers["Set-Cookie"]
            page = await client.get("/api/options")  # the cookie jar now holds the token
            assert page.status == 200
            assert "default-src 'self'" in page.headers["Content-Security-Policy"]

    asyncio.run(scenario())


def test_without_a_token_only_loopback_host_names_are_served(settings: Settings) -> None:
    async def scenario() -> None:
        async with TestClient(TestServer(create_app(settings, live=False))) as client:
            assert (await client.get("/api/options")).status == 200
            rebound = await client.get("/api/options", headers={"Host": "evil.example:8080"})
            assert rebound.status == 403

    asyncio.run(scenario())


def test_cross_site_posts_are_refused(settings: Settings) -> None:
    async def scenario() -> None:
        async with TestClient(TestServer(create_app(settings, live=False))) as client:
            body = {"sql": "SELECT 1"}
            assert (await client.post("/api/sql", json=body)).status == 200
            for headers in ({"Origin": "http://evil.example"},
                            {"Sec-Fetch-Site": "cross-site"}):
                refused = await client.post("/api/sql", json=body, headers=headers)
                assert refused.status == 403, headers
            form = await client.post("/api/sql.csv", data={"sql": "SELECT 1"},
                                     headers={"Origin": "http://evil.example"})
            assert form.status == 403

    asyncio.run(scenario())
