"""The distribution as a user gets it: what the wheel holds, its entry point, its version."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "training", "exporters", "tools", "client")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel built from a copy of the files git knows (a stale build/ folder in the
    checkout must not leak old modules into the test)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                    str(src)], check=True, timeout=300)
    [path] = out.glob("avindex-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_holds_the_five_packages_and_their_data_only(wheel):
    names = wheel.namelist()
    info = [n for n in names if ".dist-info/" in n]
    code = [n for n in names if n not in info]
    assert code and all(n.startswith("avindex/") for n in code), code
    assert {n.split("/")[1] for n in code} == set(PACKAGES)
    assert not any("/tests/" in n or "/bench/" in n or "__pycache__" in n for n in names)
    # every source module of the five folders is there, nothing else in Python form
    sources = {f"avindex/{p.relative_to(ROOT)}" for pkg in PACKAGES
               for p in (ROOT / pkg).rglob("*.py")}
    assert {n for n in code if n.endswith(".py")} == sources
    data = {n for n in code if not n.endswith(".py")}
    web = {f"avindex/daemon/http/web/{p.name}" for p in (ROOT / "daemon/http/web").iterdir()}
    assert data == {"avindex/daemon/manifest.schema.json"} | web
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in info)


def test_the_wheel_declares_the_licence_and_the_entry_point(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    entry = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "avindex = avindex.tools.cli:main" in wheel.read(entry).decode()


def test_version_matches_the_project():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "avindex.tools.cli", "--version"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == f"avindex {version}"


def test_the_licence_file_is_the_apache_2_licence():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
