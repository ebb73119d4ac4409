"""The embedded engine: Qdrant Edge (`qdrant-edge-py`), the Qdrant engine in-process.

Layout of `qdrant.path`:

    DIR/collections/<collection>/   one Edge shard per collection (= per model version):
                                    segments/, wal/, edge_config.json (Edge's own files)
    DIR/aliases.json                {"alias": "collection", ...}, replaced atomically
    DIR/.aliases.lock               serialises alias updates between processes

Edge takes an exclusive lock on a shard's WAL, so a shard belongs to one process at a time
(`StoreBusyError` for the next one). Collections are created in a temporary folder and renamed
into place, so a crash never leaves a half-made collection under its real name.

Durability (Edge 0.9, `lib/edge/src/edge_shard/update.rs` and `mod.rs` in qdrant/qdrant): an
update is appended to the shard's WAL before it is applied; the WAL is a memory-mapped file, so
an applied update survives a crash of this process (the kernel holds the pages) but not of the
machine until `flush()` has synced the WAL and the segments (`SerdeWal::write` "does not
guarantee durability"; `EdgeShard::flush` "persist the WAL and all segments"). The daemon calls
`flush()` before every offset commit, so a committed offset's points survive both.

Every Edge call holds the GIL for its whole duration (the binding does not release it), so the
store never runs `optimize()` itself: that builds HNSW graphs for minutes on large shards and
would freeze the daemon. Searches are exact over the appendable segment until
`avindex optimize --qdrant-path DIR` runs while no daemon holds the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

from avindex.daemon.edge_filter import to_edge
from avindex.daemon.ports import Point
from avindex.daemon.store import (
    CollectionMismatchError,
    CollectionSpec,
    StoreBusyError,
    Stored,
    point_id,
)

__all__ = ["EdgeStore", "InvalidPointError"]

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
CONFIG_FILE = "edge_config.json"
ALIASES_FILE = "aliases.json"
SCHEMAS = {
    "keyword": edge.PayloadSchemaType.Keyword,
    "integer": edge.PayloadSchemaType.Integer,
    "float": edge.PayloadSchemaType.Float,
    "bool": edge.PayloadSchemaType.Bool,
    "datetime": edge.PayloadSchemaType.Datetime,
    "text": edge.PayloadSchemaType.Text,
    "uuid": edge.PayloadSchemaType.Uuid,
}
# Edge raises plain `Exception`s whose text is segment's OperationError
# (lib/segment/src/common/operation_error.rs); these variants are the caller's data.
INVALID_PREFIXES = (
    "Vector dimension error",
    "Not existing vector name error",
    "Payload type does not match",
    "Unable to infer type",
    "Validation failed",
    "Wrong usage of sparse vectors",
    "Wrong usage of multi vectors",
    "Wrong input",
)
REASONS = (
    ("Service runtime error", "edge_service"),
    ("Inconsistent storage", "edge_storage"),
    ("Storage file not found", "edge_storage"),
    ("Out of memory", "edge_out_of_memory"),
    ("Timeout error", "timeout"),
    ("Operation cancelled", "edge_cancelled"),
    ("All appendable segments", "edge_capacity"),
)


class InvalidPointError(ValueError):
    """A point Edge cannot take (its vectors or payload do not convert)."""


class EdgeStore:
    """`VectorStore` on Qdrant Edge shards under one folder."""

    def __init__(self, root: str | Path, *, flush_interval_s: float = 0.0) -> None:
        self.root = Path(root)
        self.target = str(self.root)
        self.flush_interval_s = flush_interval_s  # `qdrant.flush_interval_s` in the daemon
        if (self.root / "meta.json").is_file() and (self.root / "collection").is_dir():
            raise CollectionMismatchError(
                f"{self.root} holds qdrant-client local-mode storage (meta.json, collection/), "
                "not Qdrant Edge: index into a new folder (avindex reindex, docs/daemon.md "
                "'Migration')")
        (self.root / "collections").mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, edge.EdgeShard] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------ collections
    def _dir(self, name: str) -> Path:
        if not NAME.match(name):
            raise ValueError(f"collection name {name!r} is not a safe folder name")
        return self.root / "collections" / name

    def collections(self) -> list[str]:
        base = self.root / "collections"
        return sorted(p.name for p in base.iterdir()
                      if not p.name.startswith(".") and (p / CONFIG_FILE).is_file())

    def _shard(self, name: str) -> edge.EdgeShard:
        with self._lock:
            shard = self._shards.get(name)
            if shard is None:
                path = self._dir(name)
                if not (path / CONFIG_FILE).is_file():
                    raise KeyError(f"no collection {name!r} in {self.root}")
                shard = self._shards[name] = _load(path)
            return shard

    def ensure_collection(self, name: str, spec: CollectionSpec) -> bool:
        path = self._dir(name)
        created = False
        with self._lock:
            if not (path / CONFIG_FILE).is_file():
                self._create(name, path, spec)
                created = True
            self._check(name, path, spec)
            shard = self._shard(name)
            existing = set(shard.info().payload_schema)
            for key, schema in spec.indexes().items():
                if key not in existing:
                    shard.update(edge.UpdateOperation.create_field_index(key, SCHEMAS[schema]))
            shard.flush()
        return created

    def _create(self, name: str, path: Path, spec: CollectionSpec) -> None:
        tmp = path.with_name(f".{name}.creating-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            distance = getattr(edge.Distance, spec.distance)
            shard = edge.EdgeShard.create(str(tmp), edge.EdgeConfig(vectors={
                v: edge.EdgeVectorParams(size=spec.dim, distance=distance)
                for v in spec.vectors}))
            shard.flush()
            shard.close()
            _fsync_tree(tmp)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("created Edge collection %s in %s", name, self.root)

    def _check(self, name: str, path: Path, spec: CollectionSpec) -> None:
        config = json.loads((path / CONFIG_FILE).read_text())
        vectors = config.get("vectors") or {}
        problems = []
        for v in spec.vectors:
            params = vectors.get(v)
            if params is None:
                problems.append(f"no vector named {v!r}")
            elif params.get("size") != spec.dim or params.get("distance") != spec.distance:
                problems.append(f"{v!r} is {params.get('size')}-d {params.get('distance')}, "
                                f"the model needs {spec.dim}-d {spec.distance}")
        if problems:
            raise CollectionMismatchError(
                f"collection {name} in {self.root} does not match the model: "
                f"{'; '.join(problems)}. Delete it or use another qdrant.collection_prefix.")

    # ----------------------------------------------------------------------------------- aliases
    def aliases(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / ALIASES_FILE).read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    @contextlib.contextmanager
    def _alias_lock(self) -> Iterator[None]:
        with open(self.root / ".aliases.lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def switch_alias(self, alias: str, collection: str) -> None:
        """Write the new alias table to a temporary file, fsync it, rename it over the old
        one and fsync the folder: readers see the old table or the new one, never a mix."""
        self._dir(collection)
        if collection not in self.collections():
            raise KeyError(f"no collection {collection!r} in {self.root}")
        with self._alias_lock():
            table = self.aliases()
            table[alias] = collection
            tmp = self.root / f".{ALIASES_FILE}.{uuid.uuid4().hex[:8]}"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(table, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.root / ALIASES_FILE)
            _fsync_dir(self.root)

    # ---------------------------------------------------------------------------------- writes
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        try:
            converted = [edge.Point(point_id(p.media_id), p.vectors, p.payload) for p in points]
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidPointError(str(exc)) from exc
        self._shard(collection).update(edge.UpdateOperation.upsert_points(converted))

    def delete(self, collection: str, media_ids: Sequence[str]) -> None:
        if media_ids:
            self._shard(collection).update(edge.UpdateOperation.delete_points(
                [point_id(m) for m in media_ids]))

    def flush(self) -> None:
        with self._lock:
            shards = list(self._shards.values())
        for shard in shards:
            shard.flush()

    # ----------------------------------------------------------------------------------- reads
    def retrieve(self, collection: str, ids: Sequence[str], *,
                 vectors: bool | Sequence[str] = False,
                 payload: bool | Sequence[str] = True) -> list[Stored]:
        found = self._shard(collection).retrieve(
            [str(i) for i in ids], with_payload=_sel(payload), with_vector=_sel(vectors))
        return [_stored(r) for r in found]

    def query(self, collection: str, vector: Sequence[float], *, using: str, limit: int,
              offset: int = 0, filter: models.Filter | None = None,
              payload: bool | Sequence[str] = True) -> list[Stored]:
        request = edge.QueryRequest(limit=limit, offset=offset or None,
                                    query=edge.Query.Nearest(list(vector), using=using),
                                    filter=to_edge(filter), with_payload=_sel(payload),
                                    with_vector=False)
        return [_stored(p) for p in self._shard(collection).query(request)]

    def scroll(self, collection: str, *, limit: int, offset: str | None = None,
               vectors: bool = False) -> tuple[list[Stored], str | None]:
        found, next_offset = self._shard(collection).scroll(edge.ScrollRequest(
            offset=offset, limit=limit, with_payload=True, with_vector=vectors))
        return [_stored(r) for r in found], None if next_offset is None else str(next_offset)

    def count(self, collection: str, filter: models.Filter | None = None) -> int:
        return self._shard(collection).count(edge.CountRequest(exact=True,
                                                               filter=to_edge(filter)))

    def optimize_one(self, collection: str) -> bool:
        """Build HNSW graphs and merge segments (blocks and holds the GIL: maintenance only,
        `avindex optimize`). True when something changed."""
        return bool(self._shard(collection).optimize())

    # ---------------------------------------------------------------------------------- errors
    def is_invalid(self, exc: BaseException) -> bool:
        if isinstance(exc, InvalidPointError):
            return True
        return type(exc) is Exception and str(exc).startswith(INVALID_PREFIXES)

    def failure_reason(self, exc: BaseException) -> str:
        if self.is_invalid(exc):
            return "invalid"
        if isinstance(exc, OSError):
            return "os_error"
        text = str(exc)
        for prefix, reason in REASONS:
            if text.startswith(prefix):
                return reason
        return "edge_error"

    def ping(self) -> None:
        os.stat(self.root / "collections")
        with self._lock:
            shards = list(self._shards.values())
        for shard in shards:
            shard.info()

    def close(self) -> None:
        with self._lock:
            shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            try:
                shard.close()  # flushes
            except Exception:  # best effort at shutdown
                log.exception("closing an Edge shard failed")


def _load(path: Path) -> edge.EdgeShard:
    try:
        return edge.EdgeShard.load(str(path))
    except Exception as exc:
        if "WouldBlock" in str(exc):
            raise StoreBusyError(
                f"{path} is in use by another process (Qdrant Edge: one process per folder)"
            ) from exc
        raise


def _sel(value: bool | Sequence[str]) -> Any:
    return value if isinstance(value, bool) else list(value)


def _stored(r: Any) -> Stored:
    vector = r.vector if isinstance(r.vector, dict) else {}
    return Stored(id=str(r.id), payload=dict(r.payload or {}),
                  vectors={k: list(v) for k, v in vector.items()},
                  score=getattr(r, "score", None))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))
