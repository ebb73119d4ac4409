"""The server engine: a Qdrant server or cluster through qdrant-client (REST or gRPC).

Writes use `wait=True`: the upsert returns once Qdrant applied it, which is the server's
durability point (its WAL, and replicas on a cluster), so `flush` has nothing to add.

Only Qdrant's per-request validation answers (HTTP 400/422, gRPC INVALID_ARGUMENT) blame the
points; 401/403/404, 5xx, timeouts, refused connections and anything unexpected are outages,
retried for as long as they last.

The same class runs over qdrant-client's in-process local mode (`QdrantClient(":memory:")`),
which the tests use as the server's stand-in: there calls are serialised (local mode is not
thread-safe) and its `ValueError`s stand for the server's 400s.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import httpx
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from avindex.daemon.ports import Point
from avindex.daemon.store import (
    CollectionMismatchError,
    CollectionSpec,
    Stored,
    point_id,
)

__all__ = ["InvalidPointError", "ServerStore", "server_client"]

log = logging.getLogger(__name__)

SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
    "text": models.PayloadSchemaType.TEXT,
    "uuid": models.PayloadSchemaType.UUID,
}


class InvalidPointError(ValueError):
    """A point that cannot even be expressed as a request (the data's fault)."""


def server_client(q) -> QdrantClient:
    """A client for QdrantSettings `q` with a `url`."""
    return QdrantClient(url=q.url, api_key=q.api_key, prefer_grpc=q.prefer_grpc,
                        grpc_port=q.grpc_port, timeout=int(max(1, q.timeout_s)))


def _grpc_code(exc: BaseException) -> Any:
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        return code()
    except Exception:  # not a grpc error after all
        return None


class ServerStore:
    """`VectorStore` over qdrant-client."""

    def __init__(self, client: QdrantClient, *, target: str | None = None) -> None:
        self.client = client
        self.local = _is_local(client)
        self.target = target or ("qdrant-client local mode" if self.local else "qdrant")
        self.flush_interval_s = 0.0  # wait=true writes need no flush
        self._lock = threading.Lock() if self.local else nullcontext()

    # ------------------------------------------------------------------------------ collections
    def ensure_collection(self, name: str, spec: CollectionSpec) -> bool:
        created = False
        with self._lock:
            if not self.client.collection_exists(name):
                try:
                    self.client.create_collection(
                        name,
                        vectors_config={v: models.VectorParams(
                            size=spec.dim, distance=models.Distance(spec.distance))
                            for v in spec.vectors},
                        shard_number=spec.shard_number,
                        replication_factor=spec.replication_factor)
                    created = True
                except Exception:
                    # Several daemons starting at once race to create it; one wins, the others
                    # check what it created.
                    if not self.client.collection_exists(name):
                        raise
                    log.info("collection %s was created concurrently", name)
            self._check(name, spec)
            existing = self.client.get_collection(name).payload_schema or {}
            with warnings.catch_warnings():  # local mode warns that indexes do nothing there
                warnings.simplefilter("ignore", UserWarning)
                for key, schema in spec.indexes().items():
                    if key not in existing:
                        self.client.create_payload_index(name, key, field_schema=SCHEMAS[schema],
                                                         wait=True)
        return created

    def _check(self, name: str, spec: CollectionSpec) -> None:
        vectors = self.client.get_collection(name).config.params.vectors
        if not isinstance(vectors, dict):
            raise CollectionMismatchError(
                f"collection {name} has one unnamed vector; the model needs named vectors "
                f"{list(spec.vectors)}")
        problems = []
        for v in spec.vectors:
            params = vectors.get(v)
            if params is None:
                problems.append(f"no vector named {v!r}")
            elif params.size != spec.dim or params.distance.value != spec.distance:
                problems.append(f"{v!r} is {params.size}-d {params.distance.value}, the model "
                                f"needs {spec.dim}-d {spec.distance}")
        if problems:
            raise CollectionMismatchError(
                f"collection {name} does not match the model: {'; '.join(problems)}. "
                "Delete it or use another qdrant.collection_prefix.")

    def collections(self) -> list[str]:
        with self._lock:
            return [c.name for c in self.client.get_collections().collections]

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def switch_alias(self, alias: str, collection: str) -> None:
        """One `update_collection_aliases` call: delete the alias (when it exists) and create it
        on the collection, atomically, so queries never see it missing."""
        current = self.aliases().get(alias)
        if current == collection:
            return
        ops: list = []
        if current is not None:
            ops.append(models.DeleteAliasOperation(
                delete_alias=models.DeleteAlias(alias_name=alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
            collection_name=collection, alias_name=alias)))
        try:
            with self._lock:
                self.client.update_collection_aliases(change_aliases_operations=ops)
        except Exception:
            if self.aliases().get(alias) != collection:  # not a lost race with a twin
                raise

    # ---------------------------------------------------------------------------------- write
    def upsert(self, collection: str, points: Sequence[Point]) -> None:
        if not points:
            return
        try:
            structs = [models.PointStruct(id=point_id(p.media_id), vector=p.vectors,
                                          payload=p.payload) for p in points]
        except (ValueError, TypeError) as exc:
            raise InvalidPointError(str(exc)) from exc
        with self._lock:
            self.client.upsert(collection, points=structs, wait=True)

    def delete(self, collection: str, media_ids: Sequence[str]) -> None:
        if not media_ids:
            return
        with self._lock:
            self.client.delete(collection, points_selector=models.PointIdsList(
                points=[point_id(m) for m in media_ids]), wait=True)

    def flush(self) -> None:
        """Nothing to do: `wait=True` writes are already applied by the server."""

    # ----------------------------------------------------------------------------------- read
    def retrieve(self, collection: str, ids: Sequence[str], *,
                 vectors: bool | Sequence[str] = False,
                 payload: bool | Sequence[str] = True) -> list[Stored]:
        with self._lock:
            found = self.client.retrieve(collection, list(ids), with_vectors=_sel(vectors),
                                         with_payload=_sel(payload))
        return [_stored(p) for p in found]

    def query(self, collection: str, vector: Sequence[float], *, using: str, limit: int,
              offset: int = 0, filter: models.Filter | None = None,
              payload: bool | Sequence[str] = True) -> list[Stored]:
        with self._lock:
            found = self.client.query_points(collection, query=list(vector), using=using,
                                             limit=limit, offset=offset or None,
                                             query_filter=filter, with_payload=_sel(payload))
        return [_stored(p) for p in found.points]

    def scroll(self, collection: str, *, limit: int, offset: str | None = None,
               vectors: bool = False) -> tuple[list[Stored], str | None]:
        with self._lock:
            found, next_offset = self.client.scroll(collection, limit=limit, offset=offset,
                                                    with_vectors=vectors, with_payload=True)
        return [_stored(p) for p in found], None if next_offset is None else str(next_offset)

    def count(self, collection: str, filter: models.Filter | None = None) -> int:
        with self._lock:
            return self.client.count(collection, count_filter=filter, exact=True).count

    # -------------------------------------------------------------------------------- errors
    def is_invalid(self, exc: BaseException) -> bool:
        if isinstance(exc, InvalidPointError):
            return True
        if isinstance(exc, UnexpectedResponse):
            return exc.status_code in (400, 422)
        code = _grpc_code(exc)
        if code is not None and getattr(code, "name", "") == "INVALID_ARGUMENT":
            return True
        # local mode answers what a server would refuse with 400 as ValueError
        return self.local and isinstance(exc, ValueError)

    def failure_reason(self, exc: BaseException) -> str:
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
        code = _grpc_code(exc)
        if code is not None and hasattr(code, "name"):
            return f"grpc_{code.name.lower()}"
        return "invalid" if self.is_invalid(exc) else "error"

    def is_refusal(self, exc: BaseException) -> bool:
        """Start-up: the server answered but refused us (credentials, permissions, a bad
        request); retrying cannot help, so the daemon exits with a configuration error."""
        if isinstance(exc, UnexpectedResponse):
            s = exc.status_code or 0
            return 400 <= s < 500 and s not in (404, 408, 429)
        code = _grpc_code(exc)
        return getattr(code, "name", "") in ("UNAUTHENTICATED", "PERMISSION_DENIED",
                                             "INVALID_ARGUMENT")

    def ping(self) -> None:
        with self._lock:
            self.client.get_aliases()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # best effort at shutdown
            log.exception("closing the Qdrant client failed")


def _is_local(client: Any) -> bool:
    """Whether qdrant-client runs in local mode under `client` (and wrappers of it)."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    inner = client
    for _ in range(4):
        inner = getattr(inner, "_client", None)
        if inner is None:
            return False
        if isinstance(inner, QdrantLocal):
            return True
    return False


def _sel(value: bool | Sequence[str]) -> Any:
    return value if isinstance(value, bool) else list(value)


def _stored(p: Any) -> Stored:
    vector = p.vector if isinstance(getattr(p, "vector", None), dict) else {}
    return Stored(id=str(p.id), payload=p.payload or {},
                  vectors={k: list(v) for k, v in vector.items()},
                  score=getattr(p, "score", None))
