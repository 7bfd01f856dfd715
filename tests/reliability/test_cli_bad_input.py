"""Bad CLI arguments and bad configuration, through the real `costpipe` executable.

Every case must end with a non-zero exit, no Python traceback, and an error line that names
the bad input (the option, the value or the settings key/file), so a user knows what to fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

COMMANDS = [["run"], ["sql"], ["export", "--date", "2026-01-01"], ["report"],
            ["proxy", "--upstream", "http://127.0.0.1:9", "--provider", "openai"], ["otlp"],
            ["gpu", "--once"], ["simulate"], ["worker"], ["kafka", "up"], ["kafka", "down"],
            ["kafka", "status"], ["alerts", "tail"]]

WORKER_LOGLEVEL = (["worker", "--loglevel", "loud"], "loud")

BAD_VALUES = [
    (["run", "--rate", "0"], "--rate"),
    (["run", "--spike", "x"], "--spike"),
    (["run", "--internal-share", "1.5"], "--internal-share"),
    (["simulate", "--rate", "-5"], "--rate"),
    (["simulate", "--internal-share", "2"], "internal"),
    (["simulate", "--spike", "bad"], "--spike"),
    (["simulate", "--start", "notadate"], "notadate"),
    (["simulate", "--duration", "many"], "--duration"),
    (["sql", "--format", "xml", "SELECT 1"], "--format"),
    (["sql", "DELETE FROM costs"], "--write"),
    (["sql", "DROP VIEW costs"], "--write"),
    (["sql", "SELEC nonsense"], "SELEC"),
    (["export", "--date", "notaday"], "notaday"),
    (["export", "--date", "2026-01-01", "--format", "csv"], "--format"),
    (["report", "--out", "/proc/none/x.html"], "/proc/none/x.html"),
    (["proxy", "--upstream", "http://127.0.0.1:9", "--provider", "openai", "--listen",
      "nohost"], "nohost"),
    (["otlp", "--listen", "127.0.0.1:99999"], "127.0.0.1:99999"),
    (["gpu", "--interval", "fast"], "fast"),
    (["worker", "--web-port", "80"], "--web-port"),
    (["worker", "--metrics-port", "-1"], "--metrics-port"),
    WORKER_LOGLEVEL,
    (["kafka", "down", "--timeout", "soon"], "--timeout"),
    (["nosuchcommand"], "nosuchcommand"),
]

BAD_CONFIGS = [  # (file text or None, env, what the line must name)
    ("[lake\nflush_rows = 1\n", {}, "costpipe.toml"),
    ("[lake]\nflush_rows = -1\n", {}, "lake.flush_rows"),
    ("[kafka]\ncompression = 'snappy'\n", {}, "kafka.compression"),
    (None, {"COSTPIPE_LAKE__FLUSH_ROWS": "abc"}, "lake.flush_rows"),
    (None, {"COSTPIPE_KAFKA__LINGER_MS": "5"}, "kafka.linger_ms"),
    (None, {"COSTPIPE_TOPICS__PARTITIONS": "0"}, "topics.partitions"),
    (None, {"COSTPIPE_CONFIG": "/nonexistent/costpipe.toml"}, "/nonexistent/costpipe.toml"),
]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("COSTPIPE_")}
    full.update({"COSTPIPE_STATE_DIR": str(cwd / "state"), "COLUMNS": "200",
                 "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})  # nothing real is ever touched
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "costpipe.cli", *argv], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=60)


def _check(result: subprocess.CompletedProcess[str], names: str) -> None:
    out = result.stderr + result.stdout
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    assert names in out, f"error does not name {names!r}: {out}"
    lines = [ln for ln in out.splitlines() if names in ln]
    assert lines and len(lines[0]) < 240, out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unknown_option_is_one_clear_error(command: list[str], tmp_path: Path) -> None:
    _check(_run([*command, "--bogus"], tmp_path), "--bogus")


@pytest.mark.parametrize(("argv", "names"), BAD_VALUES)
def test_invalid_value_is_one_clear_error(argv: list[str], names: str, tmp_path: Path) -> None:
    _check(_run(argv, tmp_path), names)


# every command with a broken file or a bad env value (alternating); every bad config once
CONFIG_CASES = [(c, *BAD_CONFIGS[(i % 2) * 3]) for i, c in enumerate(COMMANDS)] + [
    (["worker"], *cfg) for cfg in BAD_CONFIGS]


@pytest.mark.parametrize(("command", "text", "env", "names"), CONFIG_CASES)
def test_bad_config_stops_every_command(command: list[str], text: str | None,
                                        env: dict[str, str], names: str,
                                        tmp_path: Path) -> None:
    if text is not None:
        (tmp_path / "costpipe.toml").write_text(text)
    _check(_run(command, tmp_path, env), names)
