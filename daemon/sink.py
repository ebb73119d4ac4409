"""The Qdrant side: a collection per model version behind an alias, and `wait=True` upserts.

The sink makes one attempt per call; retries and back-off belong to the pipeline, which asks
the sink's `is_transient` whether an error is worth retrying. The same qdrant-client API serves a
server or cluster (`url=`) and the in-process local mode (`path=` or `:memory:`), which is not
thread-safe: `SerialClient` serialises the sink's and the searches' calls to it.

Point ids are UUIDv5 of the media id in a fixed namespace, so a replay overwrites a point instead
of adding a duplicate. Applications can compute the id of a media item the same way.
"""

from __future__ import annotations

import logging
import threading
import uuid
import warnings
from collections.abc import Sequence
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from avindex.daemon.ports import Point
from avindex.daemon.settings import QdrantSettings

__all__ = [
    "MEDIA_NAMESPACE",
    "CollectionMismatchError",
    "Point",
    "QdrantSink",
    "SerialClient",
    "failure_reason",
    "is_transient",
    "make_client",
    "point_id",
]

log = logging.getLogger(__name__)

# uuid5(NAMESPACE_URL, "https://avindex.invalid/media-id"): fixed forever, documented.
MEDIA_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://avindex.invalid/media-id")

PAYLOAD_INDEXES = {
    "media_id": models.PayloadSchemaType.KEYWORD,
    "modalities": models.PayloadSchemaType.KEYWORD,
    "model_version": models.PayloadSchemaType.KEYWORD,
    "topic": models.PayloadSchemaType.KEYWORD,
    "indexed_at": models.PayloadSchemaType.DATETIME,
}


def point_id(media_id: str) -> str:
    """The Qdrant point id of a media id."""
    return str(uuid.uuid5(MEDIA_NAMESPACE, media_id))


class CollectionMismatchError(RuntimeError):
    """An existing collection's vectors do not fit the model; writing there would corrupt it."""


class SerialClient:
    """Serialises calls to a local-mode Qdrant client, which is not thread-safe, so that
    searches from HTTP threads and the sink's upserts never run inside it at the same time."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def serialised(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)

        return serialised


def make_client(s: QdrantSettings) -> QdrantClient:
    """A client for exactly one of url / path / location (settings validation ensures one)."""
    if s.url:
        return QdrantClient(url=s.url, api_key=s.api_key, prefer_grpc=s.prefer_grpc,
                            grpc_port=s.grpc_port, timeout=int(max(1, s.timeout_s)))
    if s.path:
        return QdrantClient(path=s.path)
    return QdrantClient(location=s.location)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying later (unavailable, timing out, overloaded) rather than the data's fault."""
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code in (408, 429)
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | TimeoutError |
                  ConnectionError):
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpc comes with qdrant-client
        return False
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
    return False


def failure_reason(exc: BaseException) -> str:
    """A short, bounded label for metrics: timeout, connection, http_503, grpc_unavailable..."""
    if isinstance(exc, UnexpectedResponse):
        return f"http_{exc.status_code}" if exc.status_code else "http_error"
    if isinstance(exc, ResponseHandlingException):
        exc = exc.source
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | ConnectionError):
        return "connection"
    if isinstance(exc, httpx.TransportError):
        return "transport"
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return f"grpc_{code().name.lower()}"
        except Exception:  # not a grpc error after all
            pass
    return "rejected" if not is_transient(exc) else "error"


class QdrantSink:
    """Bootstraps the model's collection and writes batches of points to it."""

    def __init__(self, client: QdrantClient, *, model_version: str, embedding_dim: int,
                 distance: str, modalities: Sequence[str], collection_prefix: str = "avindex",
                 alias: str = "avindex", alias_policy: str = "if_missing",
                 shard_number: int | None = None,
                 replication_factor: int | None = None) -> None:
        self.client = client
        self.collection = f"{collection_prefix}-{model_version}"
        self.alias = alias
        self.alias_policy = alias_policy
        self.embedding_dim = embedding_dim
        self.distance = models.Distance(distance)
        self.modalities = list(modalities)
        self.shard_number = shard_number
        self.replication_factor = replication_factor

    # ------------------------------------------------------------------------------- bootstrap
    def connect(self) -> None:
        """Create or check the collection, its payload indexes and the alias (one attempt)."""
        if self.client.collection_exists(self.collection):
            log.info("using existing collection %s", self.collection)
        else:
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config={m: models.VectorParams(size=self.embedding_dim,
                                                           distance=self.distance)
                                    for m in self.modalities},
                    shard_number=self.shard_number,
                    replication_factor=self.replication_factor,
                )
            except Exception:
                # Several daemons starting at once race to create it; one wins, the others
                # check what it created.
                if not self.client.collection_exists(self.collection):
                    raise
                log.info("collection %s was created concurrently", self.collection)
            else:
                log.info("created collection %s", self.collection, extra={"fields": {
                    "vectors": self.modalities, "dim": self.embedding_dim}})
            with warnings.catch_warnings():  # local mode warns that indexes do nothing there
                warnings.simplefilter("ignore", UserWarning)
                for name, schema in PAYLOAD_INDEXES.items():
                    self.client.create_payload_index(self.collection, name, field_schema=schema,
                                                     wait=True)
        self._check_vectors()
        self._ensure_alias()

    def _check_vectors(self) -> None:
        info = self.client.get_collection(self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, dict):
            raise CollectionMismatchError(
                f"collection {self.collection} has one unnamed vector; the model needs named "
                f"vectors {self.modalities}")
        problems = []
        for m in self.modalities:
            params = vectors.get(m)
            if params is None:
                problems.append(f"no vector named {m!r}")
            elif params.size != self.embedding_dim or params.distance != self.distance:
                problems.append(f"{m!r} is {params.size}-d {params.distance.value}, the model "
                                f"needs {self.embedding_dim}-d {self.distance.value}")
        if problems:
            raise CollectionMismatchError(
                f"collection {self.collection} does not match the model: {'; '.join(problems)}. "
                "Delete it or use another qdrant.collection_prefix.")

    def _ensure_alias(self) -> None:
        if self.alias_policy == "never":
            return
        current = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
        target = current.get(self.alias)
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
        current = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
        target = current.get(self.alias)
        if target == self.collection:
            log.info("alias %s already points to %s", self.alias, self.collection)
            return
        self._point_alias(target)

    def _point_alias(self, target: str | None) -> None:
        """One `update_collection_aliases` call: delete the alias (when it exists) and create
        it on this collection, atomically, so queries never see it missing."""
        ops: list = []
        if target is not None:
            ops.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=self.alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=self.collection, alias_name=self.alias)))
        try:
            self.client.update_collection_aliases(change_aliases_operations=ops)
        except Exception:
            current = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
            if current.get(self.alias) != self.collection:  # not a lost race with a twin
                raise
        log.info("alias %s now points to %s (was %s)", self.alias, self.collection, target)

    # ----------------------------------------------------------------------------------- write
    def write_batch(self, points: Sequence[Point]) -> None:
        """Upsert and wait until Qdrant has applied it (one attempt)."""
        if not points:
            return
        self.client.upsert(
            self.collection,
            points=[models.PointStruct(id=point_id(p.media_id), vector=p.vectors,
                                       payload=p.payload) for p in points],
            wait=True,
        )

    def is_transient(self, exc: BaseException) -> bool:
        """Worth retrying (an outage) rather than the data's fault (see `is_transient`)."""
        return is_transient(exc)

    def failure_reason(self, exc: BaseException) -> str:
        return failure_reason(exc)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # best effort at shutdown
            log.exception("closing the Qdrant client failed")
