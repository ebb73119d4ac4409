"""Search requests: the JSON body of POST /v1/search (and /batch) and the multipart form, both
turned into one `SearchCall` that a worker runs against the `Searcher`.

The JSON models are pydantic models, so their JSON Schemas go into the OpenAPI document
unchanged; `filter` is qdrant-client's own `models.Filter` (Qdrant's JSON filter language:
must/should/must_not, match value/any/except, range on numbers and datetimes, ...), validated
here and refused with 400 `bad_filter` before any work is done.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from qdrant_client import models

from avindex.daemon.http.body import Form
from avindex.daemon.http.errors import ApiError
from avindex.daemon.search import Options, SearchError, parse_filters

__all__ = ["BatchRequest", "Query", "SearchCall", "SearchRequest", "parse_batch",
           "parse_form", "parse_search"]

MAX_JSON_DEPTH = 32  # a filter nests a few levels; deeper JSON is an attack, not a query
KINDS = ("audio", "video", "image")


class Query(BaseModel):
    """Exactly one of: media as base64 (`audio`, `video`, `image`), a `uri` (with an optional
    `kind`), or the `id` of an indexed item."""

    model_config = ConfigDict(extra="forbid")
    audio: str | None = Field(None, description="A sound (or a video, by its sound), base64.")
    video: str | None = Field(None, description="A video, base64: searched by its pictures, or "
                              "by its sound with by=audio.")
    image: str | None = Field(None, description="A picture, base64.")
    uri: str | None = Field(None, description="file:// or http(s):// media, under the same "
                            "allow-lists as claim-checks (media.allowed_roots/allowed_hosts).")
    kind: Literal["audio", "video", "image"] | None = Field(
        None, description="What `uri` points to; default: from its streams.")
    id: str | None = Field(None, max_length=1024, description="An indexed media id: search with "
                           "its stored vector (by=audio by default).")

    @model_validator(mode="after")
    def _one_query(self) -> Query:
        given = [n for n in (*KINDS, "uri", "id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of audio, video, image, uri or id "
                             f"(got {', '.join(given) or 'none'})")
        if self.kind is not None and self.uri is None:
            raise ValueError("kind goes with uri only")
        return self


class SearchRequest(BaseModel):
    """One search: a query, which of its modalities to search by, a page of the ranking, a
    Qdrant filter on the payload and which payload to return."""

    model_config = ConfigDict(extra="forbid")
    query: Query
    by: Literal["audio", "visual"] | None = Field(
        None, description="Search with the query's sound or its pictures (videos and ids).")
    limit: int = Field(10, ge=1, description="Hits per page (at most http.max_top_k).")
    offset: int = Field(0, ge=0, description="Hits to skip: pages of one ranking are "
                        "disjoint (at most http.max_offset).")
    with_payload: bool | list[str] = Field(
        True, description="The whole payload, none, or these keys (media_id always).")
    filter: models.Filter | None = Field(
        None, description="Qdrant's filter language on the payload, e.g. {\"must\": [{\"key\": "
        "\"metadata.language\", \"match\": {\"value\": \"fr\"}}]}.")


class BatchRequest(BaseModel):
    """Several searches in one request; answered in order, or refused as a whole."""

    model_config = ConfigDict(extra="forbid")
    searches: list[SearchRequest] = Field(min_length=1)


@dataclass(frozen=True)
class SearchCall:
    """What a worker runs: media bytes, a uri or an id, with its kind, `by` and options."""

    options: Options
    by: str | None = None
    kind: str | None = None
    media: bytes | None = None
    uri: str | None = None
    media_id: str | None = None


@dataclass(frozen=True)
class Limits:
    max_top_k: int
    max_offset: int
    max_upload_bytes: int
    max_batch: int


def _depth(value: Any, limit: int) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def load_json(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {str(exc)[:200]}") from exc
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ApiError(400, "bad_request", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _refusal(exc: ValidationError, prefix: str = "") -> ApiError:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    loc = ".".join(str(p) for p in first["loc"])
    code = "bad_filter" if "filter" in [str(p) for p in first["loc"]] else "bad_request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(400, code, f"{prefix}{loc or 'body'}: {first['msg']}{more}")


def _call(request: SearchRequest, limits: Limits, prefix: str = "") -> SearchCall:
    if request.limit > limits.max_top_k:
        raise ApiError(400, "bad_request", f"{prefix}limit must be 1..{limits.max_top_k}")
    if request.offset > limits.max_offset:
        raise ApiError(400, "bad_request", f"{prefix}offset must be 0..{limits.max_offset}")
    payload = request.with_payload
    options = Options(limit=request.limit, offset=request.offset, filter=request.filter,
                      with_payload=payload if isinstance(payload, bool) else tuple(payload))
    q = request.query
    if q.id is not None:
        return SearchCall(options, request.by, media_id=q.id)
    if q.uri is not None:
        return SearchCall(options, request.by, kind=q.kind, uri=q.uri)
    kind = next(k for k in KINDS if getattr(q, k) is not None)
    text = getattr(q, kind)
    if len(text) > (limits.max_upload_bytes + 2) // 3 * 4 + 4:
        raise ApiError(413, "too_large", f"{prefix}the query media is over "
                       f"{limits.max_upload_bytes} bytes (http.max_upload_bytes)")
    try:
        media = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_request", f"{prefix}query.{kind} is not base64") from exc
    if not media:
        raise ApiError(400, "no_file", f"{prefix}query.{kind} is empty")
    if len(media) > limits.max_upload_bytes:
        raise ApiError(413, "too_large", f"{prefix}the query media is over "
                       f"{limits.max_upload_bytes} bytes (http.max_upload_bytes)")
    return SearchCall(options, request.by, kind=kind, media=media)


def parse_search(body: bytes, limits: Limits) -> SearchCall:
    """A JSON search body, validated; ApiError 400 `bad_request`/`bad_filter`, 413."""
    try:
        request = SearchRequest.model_validate(load_json(body))
    except ValidationError as exc:
        raise _refusal(exc) from exc
    return _call(request, limits)


def parse_batch(body: bytes, limits: Limits) -> list[SearchCall]:
    try:
        batch = BatchRequest.model_validate(load_json(body))
    except ValidationError as exc:
        raise _refusal(exc) from exc
    if len(batch.searches) > limits.max_batch:
        raise ApiError(400, "bad_request", f"at most {limits.max_batch} searches per batch "
                       "(http.max_batch)")
    return [_call(r, limits, f"searches[{i}]: ") for i, r in enumerate(batch.searches)]


def _int(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ApiError(400, "bad_request", f"{name} must be an integer") from exc


def _form_filter(items: list[str]) -> models.Filter | None:
    """Form `filter` fields: `key=value` (all must hold), or one Qdrant filter as JSON."""
    if len(items) == 1 and items[0].startswith("{"):
        try:
            return models.Filter.model_validate(load_json(items[0].encode()))
        except ValidationError as exc:
            raise _refusal(exc, "filter: ") from exc
        except ApiError as exc:
            raise ApiError(400, "bad_filter", str(exc)) from exc
    try:
        return parse_filters(items)
    except SearchError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from exc


def parse_form(form: Form, limits: Limits) -> SearchCall:
    """The multipart form of POST /search: `file` or `id`, `kind`, `by`, `top_k`/`limit`,
    `offset`, `filter` (repeatable), `fields`."""
    limit = _int(form.get("limit") or form.get("top_k"), "top_k", 10)
    offset = _int(form.get("offset"), "offset", 0)
    if not 1 <= limit <= limits.max_top_k:
        raise ApiError(400, "bad_request", f"top_k must be 1..{limits.max_top_k}")
    if not 0 <= offset <= limits.max_offset:
        raise ApiError(400, "bad_request", f"offset must be 0..{limits.max_offset}")
    fields = form.get("fields")
    keys = tuple(f.strip() for f in fields.split(",") if f.strip()) if fields else None
    options = Options(limit=limit, offset=offset, filter=_form_filter(form.getall("filter")),
                      with_payload=True if keys is None else keys)
    by = form.get("by") or None
    if by not in (None, "audio", "visual"):
        raise ApiError(400, "bad_request", "by must be audio or visual")
    kind = form.get("kind") or None
    upload = form.file
    if upload is not None and upload.data:
        if kind is not None and kind not in KINDS:
            raise ApiError(400, "bad_request", "kind must be audio, video or image")
        if len(upload.data) > limits.max_upload_bytes:
            raise ApiError(413, "too_large", f"the query media is over "
                           f"{limits.max_upload_bytes} bytes (http.max_upload_bytes)")
        return SearchCall(options, by, kind=kind or _kind_of(upload.content_type,
                                                             upload.filename),
                          media=bytes(upload.data))
    media_id = form.get("id")
    if media_id:
        return SearchCall(options, by, media_id=media_id)
    raise ApiError(400, "no_file", "send the query media as the multipart field 'file' "
                   "(non-empty), or an indexed media id as 'id'")


def _kind_of(content_type: str | None, filename: str | None) -> str | None:
    """audio/video/image from a part's content type or file name; None: decide by content."""
    guess = content_type or mimetypes.guess_type(filename or "")[0] or ""
    major = guess.split("/", 1)[0].lower()
    return major if major in KINDS else None
