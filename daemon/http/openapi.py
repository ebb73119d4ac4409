"""The OpenAPI 3.1 document, built from the route table (`Api.endpoints()`) and the pydantic
request models, so that it lists exactly the routes, statuses and error codes the server has.

Every error response names its codes twice: in words, and as `x-error-codes` (a list) that
tests and clients can read. The configured limits (upload size, limit, offset, batch) are the
ones in the document.
"""

from __future__ import annotations

import json
import re
from typing import Any

from avindex.daemon.http.endpoint import Endpoint
from avindex.daemon.http.queries import BatchRequest, SearchRequest
from avindex.daemon.settings import HttpSettings

__all__ = ["documented_errors", "openapi_document", "openapi_json"]

REASONS = {400: "Bad request", 401: "API key missing or wrong", 403: "Not allowed",
           404: "Not found", 405: "Method not allowed on this path", 408: "Body too slow",
           411: "Content-Length missing", 413: "Too large", 415: "Unsupported content type",
           416: "Bad range", 422: "Query media unusable", 431: "Headers too large",
           500: "Server bug",
           502: "Query URI unreachable", 503: "Starting, overloaded or out of connections"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def documented_errors(endpoint: Endpoint) -> dict[int, tuple[str, ...]]:
    """Every (status -> codes) the endpoint can answer, the cross-cutting ones included."""
    errors = {s: tuple(c) for s, c in endpoint.errors.items()}

    def add(status: int, *codes: str) -> None:
        errors[status] = tuple(dict.fromkeys((*errors.get(status, ()), *codes)))

    add(405, "method_not_allowed")
    add(400, "bad_request")  # not HTTP/1.x
    add(431, "headers_too_large")
    if not endpoint.probe:
        add(400, "bad_host")
        add(500, "internal_error")
    if endpoint.auth:
        add(401, "unauthorized")
    return dict(sorted(errors.items()))


def _operation(endpoint: Endpoint, path: str) -> dict[str, Any]:
    alias = path != endpoint.path
    op: dict[str, Any] = {
        "summary": endpoint.summary + (f" (unversioned alias of {endpoint.path})" if alias
                                       else ""),
        "operationId": endpoint.name + ("Unversioned" if alias else ""),
        "responses": {},
    }
    params = re.findall(r"{(\w+)}", path)
    if params:
        op["parameters"] = [{"name": p, "in": "path", "required": True,
                             "schema": {"type": "string"}} for p in params]
    if endpoint.name == "media":
        op["parameters"].append({"name": "Range", "in": "header", "required": False,
                                 "schema": {"type": "string"},
                                 "description": "one bytes=START-END range"})
    if endpoint.auth:
        op["security"] = [{"bearer": []}, {"apiKey": []}]
    if endpoint.body == "search":
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref("SearchRequest")},
            "multipart/form-data": {"schema": _ref("SearchForm"), "encoding": {"file": {
                "contentType": "audio/*, video/*, image/*, application/octet-stream"}}}}}
    elif endpoint.body == "batch":
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _ref("BatchRequest")}}}
    for status, content_type in endpoint.ok.items():
        content: dict[str, Any] = {"schema": _ref(endpoint.schema) if endpoint.schema and
                                   content_type == "application/json" else {"type": "string"}}
        op["responses"][str(status)] = {
            "description": {200: "OK", 206: "A byte range", 503: "Not ready"}.get(status, "OK"),
            "content": {content_type: content}}
    for status, codes in documented_errors(endpoint).items():
        described = {"description": f"{REASONS[status]}: {', '.join(codes)}",
                     "x-error-codes": list(codes),
                     "content": {"application/json": {"schema": _ref("Error")}}}
        if status == 401:
            described["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status in op["responses"]:  # 503 of /info, /readyz: a body of its own, and Error
            op["responses"][str(status)]["x-error-codes"] = list(codes)
            continue
        op["responses"][str(status)] = described
    if "503" not in op["responses"]:
        op["responses"]["503"] = {"description": "Out of connections (http.max_connections)",
                                  "x-error-codes": [],
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}
    return op


def _model_schemas(http: HttpSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (SearchRequest, BatchRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    out["SearchRequest"]["properties"]["limit"]["maximum"] = http.max_top_k
    out["SearchRequest"]["properties"]["offset"]["maximum"] = http.max_offset
    out["BatchRequest"]["properties"]["searches"]["maxItems"] = http.max_batch
    return out


def _schemas(endpoints: list[Endpoint], http: HttpSettings) -> dict[str, Any]:
    hit = {"type": "object", "required": ["rank", "score", "id", "payload"], "properties": {
        "rank": {"type": "integer", "description": "1-based, offset included"},
        "score": {"type": "number", "description": "cosine similarity"},
        "id": {"type": "string", "format": "uuid",
               "description": "point id (UUIDv5 of the media id); playable at /v1/media/{id}"},
        "media_id": {"type": ["string", "null"]},
        "payload": {"type": "object", "description": "the point's payload (docs/daemon.md, "
                    "What ends up in Qdrant); empty with with_payload=false"}}}
    result = {"type": "object", "required": ["query", "collection", "model_version", "results",
                                             "took_ms"], "properties": {
        "query": {"type": "object", "description": "kind, by (the part embedded), vector (the "
                  "named vector searched), duration_s, uncertainty; media_id for id queries"},
        "collection": {"type": "string"}, "model_version": {"type": "string"},
        "took_ms": {"type": "number"}, "results": {"type": "array", "items": _ref("Hit")}}}
    return {
        **_model_schemas(http),
        "SearchForm": {"type": "object", "description": "Give `file` or `id`.", "properties": {
            "file": {"type": "string", "contentMediaType": "application/octet-stream",
                     "description": f"Query media, at most {http.max_upload_bytes} bytes in "
                     "all (the whole body)."},
            "kind": {"type": "string", "enum": ["audio", "video", "image"]},
            "by": {"type": "string", "enum": ["audio", "visual"]},
            "id": {"type": "string", "description": "an indexed media id"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": http.max_top_k,
                      "default": 10, "description": "alias: limit"},
            "offset": {"type": "integer", "minimum": 0, "maximum": http.max_offset},
            "filter": {"type": "array", "items": {"type": "string"}, "description":
                       "repeatable key=value (all must hold), or one Qdrant filter as JSON"},
            "fields": {"type": "string", "description": "comma-separated payload keys"}}},
        "Hit": hit,
        "SearchResult": result,
        "BatchResult": {"type": "object", "required": ["answers", "took_ms"], "properties": {
            "answers": {"type": "array", "items": _ref("SearchResult")},
            "took_ms": {"type": "number"}}},
        "Info": {"type": "object", "required": ["ready", "limits"], "properties": {
            "ready": {"type": "boolean"}, "model_id": {"type": "string"},
            "model_version": {"type": "string"}, "collection": {"type": "string"},
            "points": {"type": "integer"}, "auth": {"type": "boolean"},
            "modalities": {"type": "array", "items": {"type": "string"}},
            "limits": {"type": "object"}}},
        "Probe": {"type": "object", "required": ["ok"], "properties": {
            "ok": {"type": "boolean"}}, "additionalProperties": True},
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "enum": sorted({
                c for e in endpoints for codes in documented_errors(e).values()
                for c in codes})},
            "message": {"type": "string"}}},
    }


def openapi_document(endpoints: list[Endpoint], http: HttpSettings) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in endpoints:
        for path in (endpoint.path, *endpoint.aliases):
            paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "avindex search API", "version": "1",
                 "description": "Cross-modal search over the index the daemon writes: a sound "
                 "finds videos, a video or image finds sounds. Versioned paths (/v1/...); the "
                 "unversioned ones answer the same. Unknown paths: 404 `not_found`."},
        "paths": paths,
        "components": {
            "schemas": _schemas(endpoints, http),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"}}},
    }


def openapi_json(endpoints: list[Endpoint], http: HttpSettings) -> bytes:
    return json.dumps(openapi_document(endpoints, http), indent=1).encode()
