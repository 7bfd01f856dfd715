"""The package layout rules, checked on the source: one import name, imports only go down.

Why not import-linter: its graph builder (grimp) walks the files under the top package's
folder, and costpipe's subpackages live in the repository's top-level folders (mapped by
`pyproject.toml`), so it would see none of them. The rules are simple enough to check here
with `ast` over the same mapping the build uses.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIPELINE_FOLDERS = ("collectors", "streams", "schemas", "lake", "analytics", "dashboard")
# Higher rank may import lower rank; equal rank (siblings) may not import each other.
RANK: dict[str, float] = {
    "costpipe.cli": 5,
    "costpipe.dashboard": 4.5,  # serves analytics (and reads topics via schemas); under the CLI
    "costpipe.analytics": 4, "costpipe.streams": 4, "costpipe.collectors": 4,
    "costpipe.broker": 4,
    "costpipe.lake": 3,
    "costpipe.schemas": 2,
    "costpipe.core": 1,
}


def _package_dirs() -> dict[str, Path]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in config["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module the wheel installs."""
    out: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _layer(module: str) -> str | None:
    best = None
    for layer in RANK:
        if (module == layer or module.startswith(layer + ".")) and (
                best is None or len(layer) > len(best)):
            best = layer
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_every_import_of_project_code_uses_the_costpipe_namespace() -> None:
    bare = re.compile(rf"^({'|'.join(PIPELINE_FOLDERS)})(\.|$)")
    offenders = []
    for path in REPO.rglob("*.py"):
        if any(part.startswith(".") for part in path.relative_to(REPO).parts):
            continue
        for line, name in _imports(path):
            if bare.match(name):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "import these as costpipe.<name>:\n" + "\n".join(offenders)


def test_imports_only_go_down_the_layers() -> None:
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        own = _layer(name)
        if own is None:
            continue
        for line, target in _imports(path):
            other = _layer(target)
            if other is None or other == own:
                continue
            if RANK[other] >= RANK[own]:
                offenders.append(f"{path.relative_to(REPO)}:{line} ({own}) imports {target} "
                                 f"({other})")
    assert not offenders, "imports that go up or sideways:\n" + "\n".join(offenders)


def test_every_mapped_module_is_in_a_layer() -> None:
    unlayered = [name for name in _modules() if name != "costpipe" and _layer(name) is None]
    assert not unlayered, unlayered
