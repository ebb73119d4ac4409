"""The settings tables in README.md and docs/daemon.md are the ones the settings object renders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from avindex.daemon.settings import Settings, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_committed_tables_equal_the_rendered_one():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "settings_reference.py"),
                           "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for path in (ROOT / "README.md", ROOT / "docs" / "daemon.md"):
        assert reference_markdown() in path.read_text(encoding="utf-8"), path


def test_every_setting_has_a_row():
    table = reference_markdown()
    defaults = Settings().redacted()
    for section, values in defaults.items():
        for name in values:
            assert f"| `{section}.{name}` | `AVINDEX_{section.upper()}_{name.upper()}` |" in table
