"""Write the settings table (from `avindex.daemon.settings`) into README.md and docs/daemon.md.

The table sits between `<!-- settings-reference:start -->` and `<!-- settings-reference:end -->`
in both files and is rendered from the settings dataclasses, so it cannot drift from the code.
`--check` changes nothing and exits 1 when a file is stale (tests and CI run it).

    .venv/bin/python scripts/settings_reference.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avindex.daemon.settings import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
FILES = (ROOT / "README.md", ROOT / "docs" / "daemon.md")
START, END = "<!-- settings-reference:start -->", "<!-- settings-reference:end -->"


def rendered(text: str, name: str) -> str:
    """`text` with the block between the markers replaced by the current table."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise SystemExit(f"{name}: needs exactly one {START} and one {END}")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{reference_markdown()}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    stale = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        new = rendered(text, path.name)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        verb = "is stale (run scripts/settings_reference.py)" if args.check else "updated"
        print(f"{path.relative_to(ROOT)} {verb}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
