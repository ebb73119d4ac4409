"""The pipeline's side of storage: one collection per model version behind an alias.

The sink makes one attempt per call; retries and back-off belong to the pipeline and runner,
which ask `is_invalid` whether an error blames the points (dead-letter them) or is an outage
(retry for as long as it lasts, commit nothing). The engine is any `VectorStore`: Qdrant Edge
in-process (`qdrant.path`) or a Qdrant server or cluster (`qdrant.url`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from avindex.daemon.ports import Point
from avindex.daemon.store import (
    MEDIA_NAMESPACE,
    CollectionMismatchError,
    CollectionSpec,
    StoreBusyError,
    VectorStore,
    point_id,
)
from avindex.daemon.store_edge import EdgeStore
from avindex.daemon.store_server import ServerStore, server_client

__all__ = [
    "MEDIA_NAMESPACE",
    "CollectionMismatchError",
    "Point",
    "QdrantSink",
    "StoreBusyError",
    "open_store",
    "point_id",
]

log = logging.getLogger(__name__)


def open_store(q) -> VectorStore:
    """The engine QdrantSettings `q` names: Qdrant Edge for `path`, a server for `url`."""
    if q.path:
        return EdgeStore(q.path, flush_interval_s=q.flush_interval_s)
    return ServerStore(server_client(q), target=q.url)


class QdrantSink:
    """Bootstraps the model's collection and alias, and writes and deletes points there."""

    def __init__(self, store: VectorStore, *, model_version: str, embedding_dim: int,
                 distance: str, modalities: Sequence[str], collection_prefix: str = "avindex",
                 alias: str = "avindex", alias_policy: str = "if_missing",
                 payload_indexes: Mapping[str, str] | None = None,
                 shard_number: int | None = None,
                 replication_factor: int | None = None) -> None:
        self.store = store
        self.flush_interval_s = getattr(store, "flush_interval_s", 0.0)
        self.collection = f"{collection_prefix}-{model_version}"
        self.alias = alias
        self.alias_policy = alias_policy
        self.spec = CollectionSpec(vectors=tuple(modalities), dim=embedding_dim,
                                   distance=distance, payload_indexes=dict(payload_indexes or {}),
                                   shard_number=shard_number,
                                   replication_factor=replication_factor)

    # ------------------------------------------------------------------------------- bootstrap
    def connect(self) -> None:
        """Create or check the collection, its payload indexes and the alias (one attempt)."""
        created = self.store.ensure_collection(self.collection, self.spec)
        log.info("%s collection %s in %s", "created" if created else "using existing",
                 self.collection, self.store.target, extra={"fields": {
                     "vectors": list(self.spec.vectors), "dim": self.spec.dim,
                     "payload_indexes": self.spec.indexes()}})
        self._ensure_alias()

    def _ensure_alias(self) -> None:
        if self.alias_policy == "never":
            return
        target = self.store.aliases().get(self.alias)
        if target == self.collection:
            return
        if target is not None and self.alias_policy == "if_missing":
            log.warning("alias %s points to %s, not this model's %s; left as is (switch it after "
                        "re-indexing, or set qdrant.alias_policy=always)", self.alias, target,
                        self.collection)
            return
        self._point_alias(target)

    def switch_alias(self) -> None:
        """Point the alias at this model's collection now, whatever the policy (re-index)."""
        target = self.store.aliases().get(self.alias)
        if target == self.collection:
            log.info("alias %s already points to %s", self.alias, self.collection)
            return
        self._point_alias(target)

    def _point_alias(self, target: str | None) -> None:
        self.store.switch_alias(self.alias, self.collection)
        log.info("alias %s now points to %s (was %s)", self.alias, self.collection, target)

    # ----------------------------------------------------------------------------------- write
    def write_batch(self, points: Sequence[Point]) -> None:
        """Upsert; applied when it returns (one attempt)."""
        self.store.upsert(self.collection, points)

    def delete(self, media_ids: Sequence[str]) -> None:
        """Delete these media ids' points (one attempt; missing ones are fine)."""
        self.store.delete(self.collection, media_ids)

    def flush(self) -> None:
        """Make everything written so far durable (before offsets are committed)."""
        self.store.flush()

    def is_invalid(self, exc: BaseException) -> bool:
        return self.store.is_invalid(exc)

    def failure_reason(self, exc: BaseException) -> str:
        return self.store.failure_reason(exc)

    def ping(self) -> None:
        """Raises when the store cannot answer (readiness)."""
        self.store.ping()

    def close(self) -> None:
        self.store.close()
