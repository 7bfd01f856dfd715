"""Regenerate the README parts that come from code, or check that they are current.

    python scripts/docs.py --write    # rewrite them in place
    python scripts/docs.py --check    # exit 1 and say which part differs (make test runs this)

Generated parts sit between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` markers:
the metric tables come from `costpipe.core.metrics.CATALOGUE`, the settings table from the
settings model's field descriptions.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from costpipe.core.metrics import markdown_table
from costpipe.core.settings import markdown_table as settings_table

README = Path(__file__).resolve().parent.parent / "README.md"
PARTS: dict[str, Callable[[], str]] = {
    "worker-metrics": lambda: markdown_table("worker"),
    "collector-metrics": lambda: markdown_table("collectors"),
    "settings": settings_table,
}


def render(text: str) -> str:
    for name, make in PARTS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- generated:{name} --> markers")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def stale_parts(text: str) -> list[str]:
    current = render(text)
    return [name for name in PARTS
            if _part(text, name) != _part(current, name)]


def _part(text: str, name: str) -> str:
    match = re.search(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", text, re.S)
    return match.group(1) if match else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    if args.write:
        README.write_text(render(text), encoding="utf-8")
        return 0
    stale = stale_parts(text)
    if stale:
        print(f"README.md is out of date in: {', '.join(stale)}; run python scripts/docs.py "
              "--write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
