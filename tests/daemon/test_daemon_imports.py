"""The daemon's runtime image has no torch: importing any daemon module must not pull it in."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

DAEMON_DIR = Path(__file__).resolve().parents[2] / "daemon"


def test_no_daemon_module_imports_torch_or_training_code():
    modules = [f"avindex.daemon.{m.name}" for m in pkgutil.iter_modules([str(DAEMON_DIR)])]
    assert "avindex.daemon.app" in modules and len(modules) >= 15
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch'\n"
            "             or m.startswith(('avindex.training', 'avindex.exporters')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
