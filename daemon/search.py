"""Cross-modal lookup: embed a query with the collection's own model, search the other vector.

A sound finds pictures and pictures find sounds: an audio query is embedded with the audio graph
and searched against the `visual` vectors; an image, or a video by its pictures, against the
`audio` vectors; a video can also search by its sound (`by="audio"`). The query goes through the
daemon's decode -> ONNX path (`decode_media`, `embed_decoded`), so it lands in the same space as
the indexed points, and the collection's model version is checked against the model directory
first: vectors of another model version are not comparable. Used by `avindex search` (directly
against a Qdrant server or an Edge folder no daemon holds) and by the daemon's `POST /search`.
It reads through the `VectorStore` interface, so it works the same on Qdrant Edge and on a
server.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import models

from avindex.daemon.encoder import Encoder, embed_decoded
from avindex.daemon.media import DecodeLimits, MediaError, decode_media
from avindex.daemon.model_dir import ModelDir
from avindex.daemon.store import VectorStore, point_id, resolve

__all__ = [
    "KINDS",
    "Options",
    "SearchError",
    "Searcher",
    "collection_version",
    "parse_filters",
    "plan",
]

KINDS = ("audio", "video", "image")
OTHER = {"audio": "visual", "visual": "audio"}
FILTER_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
VERSION = re.compile(r"^[0-9a-f]{16}$")


class SearchError(Exception):
    """A query that cannot be answered; `status` is the HTTP status, `code` a stable label."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def plan(kind: str, by: str | None, modalities: Sequence[str]) -> tuple[str, str]:
    """(modality to embed, vector name to search) for a query kind, or a `wrong_modality` error.

    audio -> its sound vs `visual`; image -> its picture vs `audio`; video -> its pictures vs
    `audio` by default, or its sound vs `visual` with by="audio".
    """
    if kind not in KINDS:
        raise SearchError(400, "bad_request", f"kind must be one of {', '.join(KINDS)}")
    if by not in (None, "audio", "visual"):
        raise SearchError(400, "bad_request", "by must be audio or visual")
    own = {"audio": "audio", "image": "visual"}.get(kind, by or "visual")
    if by is not None and by != own:
        raise SearchError(422, "wrong_modality", f"an {kind} query can only search by its "
                          f"{'sound' if own == 'audio' else 'pictures'} (by={own})")
    for needed in (own, OTHER[own]):
        if needed not in modalities:
            raise SearchError(422, "wrong_modality", f"the model has no {needed} graph "
                              f"(it has {', '.join(modalities)})")
    return own, OTHER[own]


def _match(key: str, value: str) -> models.Filter:
    """key == value, where value "7" also matches the number 7 and "true" the boolean."""
    options: list[Any] = [value]
    if re.fullmatch(r"-?\d{1,18}", value):
        options.append(int(value))
    if value in ("true", "false"):
        options.append(value == "true")
    return models.Filter(should=[models.FieldCondition(key=key, match=models.MatchValue(value=v))
                                 for v in options])


def parse_filters(items: Sequence[str]) -> models.Filter | None:
    """`key=value` strings (all must hold) as a Qdrant payload filter; nested keys use dots
    (`metadata.label=7`)."""
    if not items:
        return None
    conditions = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not FILTER_KEY.match(key) or len(item) > 1000:
            raise SearchError(400, "bad_filter", f"filter {item[:100]!r} is not key=value "
                              "(key: letters, digits, _ and -, nested with dots)")
        conditions.append(_match(key, value.strip()))
    return models.Filter(must=conditions)


def collection_version(store: VectorStore, name: str) -> tuple[str, str | None]:
    """(collection, model version) behind a collection name or alias.

    The version is the collection name's `-<16 hex digits>` suffix (how the daemon names them),
    else the `model_version` payload of one point; None for an empty collection without one.
    """
    collection = resolve(store, name)
    if collection is None:
        raise SearchError(404, "not_found", f"no collection or alias named {name!r}")
    suffix = collection.rsplit("-", 1)[-1]
    if VERSION.match(suffix):
        return collection, suffix
    points, _ = store.scroll(collection, limit=1)
    version = points[0].payload.get("model_version") if points else None
    return collection, version


@dataclass(frozen=True)
class Options:
    """What every query takes besides its input: a page of the ranking (`offset`, `limit`),
    a Qdrant payload filter, and which payload to return (True, False or a list of keys)."""

    limit: int = 10
    offset: int = 0
    filter: models.Filter | None = None
    with_payload: bool | tuple[str, ...] = True


class Searcher:
    """Answers queries against one collection with the model that built it."""

    def __init__(self, store: VectorStore, model: ModelDir, encoder: Encoder, collection: str,
                 *, limits: DecodeLimits | None = None, max_top_k: int = 1000) -> None:
        self.store, self.model, self.encoder = store, model, encoder
        self.limits, self.max_top_k = limits or DecodeLimits(), max_top_k
        self.collection, version = collection_version(store, collection)
        if version is not None and version != model.model_version:
            raise SearchError(409, "model_mismatch", f"collection {self.collection} holds "
                              f"vectors of model version {version}, the model directory "
                              f"{model.path} is version {model.model_version}: embed queries "
                              "with the model that built the collection")
        self.model_version = version or model.model_version

    def search_media(self, source: bytes | Path, kind: str | None, by: str | None,
                     options: Options) -> dict[str, Any]:
        """Decode and embed an upload or a file, then search the other modality."""
        started = time.perf_counter()
        try:
            decoded = decode_media(source, self.model.visual_spec(), self.model.audio_spec(),
                                   self.limits)
        except MediaError as exc:
            raise SearchError(422, "undecodable", f"cannot decode the query ({exc.reason}): "
                              f"{exc}") from exc
        kind = kind or ("video" if "visual" in decoded.modalities else "audio")
        own, target = plan(kind, by, list(self.model.graphs))
        if own not in decoded.modalities:
            has = " and ".join(decoded.modalities) or "nothing"
            raise SearchError(422, "wrong_modality", f"the {kind} query has no "
                              f"{'sound' if own == 'audio' else 'pictures'} (it has {has})")
        vector, uncertainty = embed_decoded(self.encoder, decoded, [own])[own]
        if not np.isfinite(vector).all() or not np.any(vector):
            raise SearchError(422, "undecodable", "the query's embedding is not usable "
                              "(NaN or all zero)")
        query = {"kind": kind, "by": own, "vector": target,
                 "duration_s": round(decoded.duration_s, 3),
                 "uncertainty": round(uncertainty, 6)}
        return self._answer(query, vector.astype(float).tolist(), target, options, started)

    def search_id(self, media_id: str, by: str | None, options: Options) -> dict[str, Any]:
        """Search with the stored vector of an indexed item (its sound by default)."""
        started = time.perf_counter()
        own = by or "audio"
        if own not in OTHER:
            raise SearchError(400, "bad_request", "by must be audio or visual")
        points = self.store.retrieve(self.collection, [point_id(media_id)], vectors=[own],
                                     payload=False)
        if not points:
            raise SearchError(404, "not_found", f"media id {media_id!r} is not indexed")
        vector = points[0].vectors.get(own)
        if vector is None:
            raise SearchError(422, "wrong_modality", f"{media_id!r} has no {own} vector")
        target = OTHER[own]
        query = {"kind": "id", "media_id": media_id, "by": own, "vector": target}
        return self._answer(query, list(vector), target, options, started)

    def _answer(self, query: dict, vector: list[float], target: str, options: Options,
                started: float) -> dict[str, Any]:
        if not 1 <= options.limit <= self.max_top_k:
            raise SearchError(400, "bad_request", f"limit (top_k) must be 1..{self.max_top_k}")
        if options.offset < 0:
            raise SearchError(400, "bad_request", "offset must be >= 0")
        keys = options.with_payload
        try:
            found = self.store.query(
                self.collection, vector, using=target, limit=options.limit,
                offset=options.offset, filter=options.filter,
                # media_id always comes back: it names the hit even without a payload
                payload=True if keys is True else sorted({*(keys or ()), "media_id"}))
        except ValueError as exc:  # a filter this engine cannot express
            raise SearchError(400, "bad_filter", str(exc)) from exc
        results = []
        for rank, p in enumerate(found, options.offset + 1):
            payload = p.payload or {}
            shown = {} if keys is False else payload
            results.append({"rank": rank, "score": round(float(p.score or 0.0), 6), "id": p.id,
                            "media_id": payload.get("media_id"), "payload": shown})
        return {"query": query, "collection": self.collection,
                "model_version": self.model_version, "results": results,
                "took_ms": round(1000 * (time.perf_counter() - started), 1)}

    def media_path(self, pid: str, check_file: Callable[[str], Path]) -> Path:
        """The local file of an indexed point (its `file://` uri, checked by `check_file`)."""
        try:
            pid = str(uuid.UUID(pid))
        except ValueError as exc:
            raise SearchError(404, "not_found", f"no point {pid[:64]!r}") from exc
        points = self.store.retrieve(self.collection, [pid], payload=["uri"])
        uri = points[0].payload.get("uri") if points else None
        if not uri:
            raise SearchError(404, "not_found", f"point {pid!r} has no stored media URI")
        if not str(uri).startswith("file:"):
            raise SearchError(404, "not_found", f"point {pid!r} is not a local file")
        return check_file(uri)

