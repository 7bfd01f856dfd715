"""The built wheel, installed into a fresh virtualenv, is one import name: `costpipe`.

The wheel is built from this checkout and installed with pip into a new virtualenv; its
dependencies come from the project's `.venv` (a plain path entry, so the editable costpipe
there stays invisible), which keeps the test offline and fast. Everything runs from a temp
folder, so the repository's own folders are not on `sys.path`.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _readme_imports() -> list[str]:
    """The import statements of every ```python block in the README."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    statements = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for node in ast.parse(block).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                statements.append(ast.unparse(node))
    return statements


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(the fresh venv, the top-level names the wheel added to its site-packages)."""
    work = tmp_path_factory.mktemp("wheel")
    had_build = (REPO / "build").exists()
    try:
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--quiet", "-w", str(work / "dist"), str(REPO)], work)
    finally:
        if not had_build:  # setuptools builds in the checkout; leave it as it was
            shutil.rmtree(REPO / "build", ignore_errors=True)
    wheel = next((work / "dist").glob("costpipe-*.whl"))
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], work)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"], work).strip())
    before = {p.name for p in site.iterdir()}
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)], work)
    added = sorted({p.name for p in site.iterdir()} - before)
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"costpipe"}, tops
    return venv, added


def test_the_wheel_installs_one_top_level_import_name(installed: tuple[Path, list[str]]
                                                       ) -> None:
    _, added = installed
    names = {name for name in added if not name.endswith(".dist-info")
             and name != "__pycache__"}
    assert names == {"costpipe"}, added


def test_costpipe_help_works_from_the_installed_wheel(installed: tuple[Path, list[str]],
                                                      tmp_path: Path) -> None:
    venv, _ = installed
    out = _run([str(venv / "bin" / "costpipe"), "--help"], tmp_path)
    assert "worker" in out and "proxy" in out and "sql" in out
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import costpipe.collectors, costpipe.streams.windows, costpipe.analytics;"
                  "print(costpipe.collectors.__file__)"], tmp_path)
    assert str(venv) in where, where  # the wheel's copy, not the checkout's


def test_the_readme_python_examples_import(installed: tuple[Path, list[str]],
                                           tmp_path: Path) -> None:
    venv, _ = installed
    statements = _readme_imports()
    assert any("costpipe" in s for s in statements), statements
    _run([str(venv / "bin" / "python"), "-c", "\n".join(statements)], tmp_path)
    for name in ("schemas", "streams", "collectors", "lake", "analytics"):
        done = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {name}"],
                              cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode != 0, f"`import {name}` must not find anything of costpipe"
