"""docs/architecture.md and the README's layout table describe the tree that is really there, and
the import contracts hold (the test command also runs `lint-imports` itself)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def tracked_top_level_folders() -> set[str]:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return {f.split("/")[0] for f in files if "/" in f and not f.startswith(".")}


def test_readme_layout_table_lists_every_folder_and_only_those():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w.-]+)/` \|", section, re.M))
    assert listed == tracked_top_level_folders()


def daemon_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c.get("containers") == ["avindex.daemon"]]
    return contract["layers"]


def test_the_documented_service_layers_are_the_enforced_ones():
    block = ARCHITECTURE.split("## Inside the service", 1)[1].split("```")[1]
    documented = [line.split("  ")[0].rstrip("/") for line in block.strip("\n").splitlines()
                  if not line.startswith(" ")]  # indented lines continue the one above
    assert documented == daemon_layers()


def test_every_service_module_is_in_a_layer_and_in_the_doc():
    layered = {m.strip() for layer in daemon_layers() for m in re.split(r"[|:]", layer)}
    modules = {p.stem for p in (ROOT / "daemon").glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (ROOT / "daemon").glob("*/__init__.py")}
    assert modules | packages == layered


def test_every_tools_module_is_named_in_the_doc():
    names = {p.stem for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name + "/" for p in (ROOT / "tools").glob("*/__init__.py")}
    header = ARCHITECTURE.split("## Inside the service", 1)[0]
    assert all(re.search(rf"\b{re.escape(n)}", header) for n in names), names


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
