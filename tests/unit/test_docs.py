"""Docs that cannot drift: generated README parts are current, and every file a document or a
comment points to is in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".sql", ".toml", ".yml", ".yaml", ".sh", ".cfg"}
FOLDERS = ("docs", "bench", "tools", "tests", "scripts", "collectors", "streams", "schemas",
           "lake", "analytics", "costpipe")
PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(FOLDERS)})/[\w./-]*"
                  r"\.(?:md|py|sql|toml|json|sh|xml))")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / n for n in names if Path(n).suffix in TEXT_SUFFIXES
            or Path(n).name in ("Makefile", "Dockerfile")]


def test_generated_readme_parts_are_current() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "docs.py"), "--check"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_referenced_repository_file_exists() -> None:
    missing = []
    for path in _tracked_text_files():
        if not path.exists():
            continue  # deleted in the working tree, not yet committed
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for ref in PATH.findall(line):
                ref = ref.rstrip(".")
                if "*" in ref or "{" in ref:
                    continue
                if not (REPO / ref).exists() and not (path.parent / ref).exists():
                    missing.append(f"{path.relative_to(REPO)}:{number}: {ref}")
    assert not missing, "references to files that are not in the repository:\n" + \
        "\n".join(missing)


def test_no_reference_to_documents_outside_the_repository() -> None:
    # the founding notes lived outside the repository (any case: "design.md", "FINDINGS")
    outside = re.compile(r"findings|design\.md|§\s*\d|section \d", re.IGNORECASE)
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in _tracked_text_files() if p.exists() and p.name != "test_docs.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if outside.search(line)]
    assert not found, "\n".join(found)
