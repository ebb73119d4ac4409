"""Where the vectors live: one small interface, two Qdrant engines.

`VectorStore` is everything the pipeline, search, re-index and the demo ask of storage. Engines:

- `EdgeStore` (`store_edge.py`, `qdrant.path`): Qdrant Edge, the Qdrant engine in-process; the
  embedded default (one process per folder).
- `ServerStore` (`store_server.py`, `qdrant.url`): a Qdrant server or cluster through
  qdrant-client (REST or gRPC, API key). The tests run the same class over qdrant-client's
  in-process local mode, the only stand-in for a server that can run here.

Filters are written as qdrant-client `models.Filter` everywhere (the language of Qdrant's API);
the Edge engine translates them. Errors are sorted by the engine into *invalid* (this point's
data was refused: it can be dead-lettered) and *everything else* (an outage: retry, never blame
the message).

Point ids are UUIDv5 of the media id in a fixed namespace, so a replay overwrites a point instead
of adding a duplicate, and applications can compute a media item's id themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qdrant_client import models

from avindex.daemon.ports import Point
from avindex.daemon.settings import PAYLOAD_SCHEMAS

__all__ = [
    "MEDIA_NAMESPACE",
    "PAYLOAD_SCHEMAS",
    "CollectionMismatchError",
    "CollectionSpec",
    "Point",
    "StoreBusyError",
    "Stored",
    "VectorStore",
    "point_id",
    "resolve",
]

# uuid5(NAMESPACE_URL, "https://avindex.invalid/media-id"): fixed forever, documented.
MEDIA_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://avindex.invalid/media-id")

# Indexed on every collection: what the daemon and the search page filter on.
BUILTIN_INDEXES = {
    "media_id": "keyword",
    "modalities": "keyword",
    "model_version": "keyword",
    "topic": "keyword",
    "indexed_at": "datetime",
}


def point_id(media_id: str) -> str:
    """The Qdrant point id of a media id."""
    return str(uuid.uuid5(MEDIA_NAMESPACE, media_id))


class CollectionMismatchError(RuntimeError):
    """An existing collection's vectors do not fit the model; writing there would corrupt it."""


class StoreBusyError(RuntimeError):
    """The embedded store is held by another process (Edge: one process per folder)."""


@dataclass(frozen=True)
class Stored:
    """A point read back: by id (`score` None) or from a query."""

    id: str
    payload: dict[str, Any]
    vectors: dict[str, list[float]]
    score: float | None = None


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection must hold: named vectors of one size and distance, and indexes."""

    vectors: tuple[str, ...]
    dim: int
    distance: str  # Qdrant's spelling: Cosine, Dot, Euclid, Manhattan
    payload_indexes: Mapping[str, str] = field(default_factory=dict)
    shard_number: int | None = None  # server only
    replication_factor: int | None = None  # server only

    def indexes(self) -> dict[str, str]:
        """Built-in indexes plus the configured ones (configured ones win)."""
        return {**BUILTIN_INDEXES, **self.payload_indexes}


class VectorStore(Protocol):
    """The storage the daemon needs. Collections are named; an alias names a collection."""

    target: str  # where it is, for logs and errors (URL or folder)
    flush_interval_s: float  # how often `flush` is worth its cost (0: free, any time)

    def ensure_collection(self, name: str, spec: CollectionSpec) -> bool:
        """Create the collection with its payload indexes, or check an existing one (raises
        CollectionMismatchError); True when it was created."""

    def collections(self) -> list[str]: ...

    def aliases(self) -> dict[str, str]:
        """alias -> collection."""

    def switch_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` atomically: readers see the old or the new target."""

    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        """Applied (visible to queries, survives a crash of this process) when it returns."""

    def delete(self, collection: str, media_ids: Sequence[str]) -> None:
        """Delete these media ids' points; missing ones are not an error."""

    def flush(self) -> None:
        """Durability barrier: everything written so far survives a crash of the machine too.
        The daemon calls it before committing Kafka offsets."""

    def retrieve(self, collection: str, ids: Sequence[str], *,
                 vectors: bool | Sequence[str] = False,
                 payload: bool | Sequence[str] = True) -> list[Stored]: ...

    def query(self, collection: str, vector: Sequence[float], *, using: str, limit: int,
              offset: int = 0, filter: models.Filter | None = None,
              payload: bool | Sequence[str] = True) -> list[Stored]:
        """Nearest `using` vectors to `vector`, best first, among points matching `filter`."""

    def scroll(self, collection: str, *, limit: int, offset: str | None = None,
               vectors: bool = False) -> tuple[list[Stored], str | None]:
        """Points in id order from `offset`; the next offset, or None at the end."""

    def count(self, collection: str, filter: models.Filter | None = None) -> int: ...

    def is_invalid(self, exc: BaseException) -> bool:
        """The engine refused the data of the points written (dead-letter them), as opposed to
        failing itself (an outage: retry)."""

    def failure_reason(self, exc: BaseException) -> str:
        """A short, bounded label for metrics."""

    def ping(self) -> None:
        """Raises when the store cannot answer (readiness)."""

    def close(self) -> None: ...


def resolve(store: VectorStore, name: str) -> str | None:
    """The collection behind a collection name or an alias; None when neither exists."""
    target = store.aliases().get(name, name)
    return target if target in store.collections() else None
