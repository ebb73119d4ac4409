"""`avindex.client`: a small Python client for the avindex search API (httpx only).

    from avindex.client import SearchClient

    with SearchClient("http://avindex-search:8080", api_key="...") as client:
        found = client.search_audio("spoken-seven.wav", limit=5,
                                    filter={"must": [{"key": "metadata.language",
                                                      "match": {"value": "fr"}}]})
        for hit in found.hits:
            print(hit.rank, round(hit.score, 3), hit.media_id, hit.payload.get("metadata"))

Queries go to `POST /v1/search` as JSON (media as base64); `filter` is Qdrant's filter language
as a dict (or any object with `model_dump()`, such as qdrant-client's `models.Filter`). Errors
are `SearchError`s carrying the API's status and code (`too_large`, `wrong_modality`, ...).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = ["Hit", "SearchClient", "SearchError", "SearchResult"]

Media = str | Path | bytes


class SearchError(Exception):
    """The API refused the search (`status`, `code` as documented in /openapi.json), or could
    not be reached (status 0, code `unreachable`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # cosine similarity
    id: str  # the point id (playable at /v1/media/{id})
    media_id: str | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    query: dict[str, Any]  # kind, by (the modality embedded), vector (the one searched), ...
    collection: str
    model_version: str
    took_ms: float

    @classmethod
    def from_json(cls, answer: dict[str, Any]) -> SearchResult:
        hits = [Hit(h["rank"], h["score"], h["id"], h.get("media_id"), h.get("payload") or {})
                for h in answer["results"]]
        return cls(hits, answer["query"], answer["collection"], answer["model_version"],
                   answer["took_ms"])


class SearchClient:
    """Searches one avindex daemon or `avindex serve` service."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------------------- queries
    def search_audio(self, media: Media, **options: Any) -> SearchResult:
        """A sound (or a video's sound): the videos that fit it."""
        return self.search({"audio": _base64(media)}, **options)

    def search_video(self, media: Media, *, by: str | None = None,
                     **options: Any) -> SearchResult:
        """A video: the sounds that fit its pictures, or with by="audio" the videos that fit
        its sound."""
        return self.search({"video": _base64(media)}, by=by, **options)

    def search_image(self, media: Media, **options: Any) -> SearchResult:
        """A picture: the sounds that fit it."""
        return self.search({"image": _base64(media)}, **options)

    def search_id(self, media_id: str, *, by: str | None = None,
                  **options: Any) -> SearchResult:
        """An indexed item: search with its stored vector (its sound unless by="visual")."""
        return self.search({"id": media_id}, by=by, **options)

    def search_uri(self, uri: str, *, kind: str | None = None, by: str | None = None,
                   **options: Any) -> SearchResult:
        """Media the server fetches itself (its media.allowed_roots / allowed_hosts)."""
        query = {"uri": uri, **({"kind": kind} if kind else {})}
        return self.search(query, by=by, **options)

    def search(self, query: dict[str, Any], *, by: str | None = None, limit: int = 10,
               offset: int = 0, filter: Any = None,
               with_payload: bool | list[str] = True) -> SearchResult:
        """One POST /v1/search; `query` as the API takes it."""
        answer = self._post("/v1/search", _request(query, by, limit, offset, filter,
                                                   with_payload))
        return SearchResult.from_json(answer)

    def search_batch(self, searches: list[dict[str, Any]]) -> list[SearchResult]:
        """Several searches in one request (dicts as POST /v1/search takes them)."""
        answer = self._post("/v1/search/batch", {"searches": searches})
        return [SearchResult.from_json(a) for a in answer["answers"]]

    def info(self) -> dict[str, Any]:
        """Model, collection, point count and limits."""
        return self._call("GET", "/v1/info", None)

    # ---------------------------------------------------------------------------- plumbing
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise SearchError(0, "unreachable", f"{self._http.base_url}: {exc}") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 200 or not isinstance(answer, dict):
            if isinstance(answer, dict) and "error" in answer:
                raise SearchError(response.status_code, str(answer["error"]),
                                  str(answer.get("message", "")))
            raise SearchError(response.status_code, "http_error",
                              response.text[:200] or response.reason_phrase)
        return answer


def _base64(media: Media) -> str:
    data = media if isinstance(media, bytes) else Path(media).read_bytes()
    return base64.b64encode(data).decode("ascii")


def _request(query: dict[str, Any], by: str | None, limit: int, offset: int, filter: Any,
             with_payload: bool | list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "limit": limit, "offset": offset,
                            "with_payload": with_payload}
    if by is not None:
        body["by"] = by
    if filter is not None:
        body["filter"] = (filter.model_dump(exclude_none=True, mode="json")
                          if hasattr(filter, "model_dump") else filter)
    return body
