"""`avindex optimize --qdrant-path DIR`: build the HNSW graphs of a Qdrant Edge folder.

Edge builds indexes only when asked (`EdgeShard.optimize`), and the call holds the Python
interpreter for its whole duration (minutes for 100,000 points on 2 cores), so the daemon never
runs it: searches there are exact over the points written since. Run this while no daemon holds
the folder (stop it, optimize, start it); it then searches the optimized points through HNSW.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["configure", "main"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qdrant-path", required=True, metavar="DIR",
                        help="the Qdrant Edge folder (qdrant.path)")


def main(args: argparse.Namespace) -> int:
    from avindex.daemon.store import CollectionMismatchError, StoreBusyError
    from avindex.daemon.store_edge import EdgeStore

    if not Path(args.qdrant_path, "collections").is_dir():
        print(f"avindex optimize: no Qdrant Edge folder at {args.qdrant_path}", file=sys.stderr)
        return 2
    try:
        store = EdgeStore(args.qdrant_path)
    except CollectionMismatchError as exc:
        print(f"avindex optimize: {exc}", file=sys.stderr)
        return 2
    try:
        for name in store.collections():
            started = time.monotonic()
            changed = store.optimize_one(name)
            print(f"{name}: {store.count(name)} points, "
                  f"{'optimized' if changed else 'already optimal'} in "
                  f"{time.monotonic() - started:.1f}s")
    except StoreBusyError as exc:
        print(f"avindex optimize: {exc}; stop the daemon first", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0
