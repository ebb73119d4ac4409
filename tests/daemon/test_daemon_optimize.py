"""`avindex optimize --qdrant-path DIR`: optimizes every collection of a Qdrant Edge folder, and
refuses a folder that is missing or held by another process."""

from __future__ import annotations

import argparse

from avindex.daemon.ports import Point
from avindex.daemon.store import CollectionSpec
from avindex.daemon.store_edge import EdgeStore
from avindex.tools import optimize


def run(path) -> int:
    return optimize.main(argparse.Namespace(qdrant_path=str(path)))


def test_optimize_reports_each_collection_and_refuses_a_busy_folder(tmp_path, capsys):
    store = EdgeStore(tmp_path / "edge")
    for name in ("avindex-a", "avindex-b"):
        store.ensure_collection(name, CollectionSpec(("visual",), 4, "Cosine"))
        store.upsert(name, [Point(f"m{i}", {"visual": [1.0, i, 0, 0]}) for i in range(50)])
    assert run(tmp_path / "edge") == 1  # this process still holds the shards
    assert "stop the daemon first" in capsys.readouterr().err
    store.close()
    assert run(tmp_path / "edge") == 0
    out = capsys.readouterr().out
    assert "avindex-a: 50 points" in out and "avindex-b: 50 points" in out
    assert EdgeStore(tmp_path / "edge").count("avindex-a") == 50
    assert run(tmp_path / "nowhere") == 2
