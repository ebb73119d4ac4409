"""The daemon's runtime image has no torch: importing any daemon module, or the commands that run
in that image, must not pull it in (lint-imports checks our own imports statically; this checks
what really gets imported, third-party packages included)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import avindex.daemon

RUNTIME_COMMANDS = ["avindex.tools.cli", "avindex.tools.run", "avindex.tools.serve",
                    "avindex.tools.reindex", "avindex.tools.embed", "avindex.tools.search",
                    "avindex.client"]


def test_no_daemon_module_or_runtime_command_imports_torch_or_training_code():
    modules = [m.name for m in pkgutil.walk_packages(avindex.daemon.__path__, "avindex.daemon.")]
    assert {"avindex.daemon.app", "avindex.daemon.http.app", "avindex.daemon.serve"} <= set(
        modules)
    assert len(modules) >= 25
    code = (f"import sys\nfor m in {modules + RUNTIME_COMMANDS!r}:\n    __import__(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx')\n"
            "             or m.startswith(('avindex.training', 'avindex.exporters')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
