"""The OpenAPI 3 description of the daemon's HTTP server, served at GET /openapi.json.

Built from the settings so the documented limits (upload size, top_k) are the ones enforced.
"""

from __future__ import annotations

from typing import Any

from avindex.daemon.settings import Settings

__all__ = ["ERROR_CODES", "openapi_document"]

# status -> error codes POST /search can answer with (the `error` field of the body).
ERROR_CODES: dict[int, list[str]] = {
    400: ["no_file", "bad_request", "bad_filter"],
    404: ["not_found"],
    408: ["timeout"],
    411: ["length_required"],
    413: ["too_large"],
    415: ["unsupported_media_type"],
    422: ["undecodable", "wrong_modality"],
    503: ["not_ready", "overloaded"],
}
REASONS = {400: "Bad request", 404: "Not found", 408: "Upload too slow",
           411: "Content-Length missing", 413: "Upload too large",
           415: "Not multipart/form-data", 422: "Query media unusable",
           503: "Not ready or overloaded"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, ref: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _schemas(settings: Settings) -> dict[str, Any]:
    http = settings.http
    return {
        "SearchForm": {
            "type": "object",
            "description": "Give `file` (the query media) or `id` (an indexed media id).",
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "Query media: audio, video or image, any container "
                         f"FFmpeg reads, at most {http.max_upload_bytes} bytes in all."},
                "kind": {"type": "string", "enum": ["audio", "video", "image"],
                         "description": "What `file` is; default from its content type (and "
                         "then from its streams: pictures make it a video)."},
                "by": {"type": "string", "enum": ["audio", "visual"],
                       "description": "Which part of the query to search with: audio queries "
                       "search by sound, images by picture, videos by picture unless "
                       "by=audio. The other modality's vectors are searched."},
                "id": {"type": "string", "description": "Search with the stored vector of "
                       "this indexed media id instead of an upload (by: audio by default)."},
                "top_k": {"type": "integer", "minimum": 1, "maximum": http.max_top_k,
                          "default": 10},
                "filter": {"type": "array", "items": {"type": "string"},
                           "description": "Repeatable `key=value` payload filters, all must "
                           "hold; nested keys with dots (`metadata.label=7`)."},
                "fields": {"type": "string", "description": "Comma-separated payload keys to "
                           "return (default: the whole payload)."},
            },
        },
        "SearchResult": {
            "type": "object",
            "required": ["query", "collection", "model_version", "results", "took_ms"],
            "properties": {
                "query": {"type": "object", "description": "kind, by (the part embedded), "
                          "vector (the named vector searched), duration_s, uncertainty"},
                "collection": {"type": "string"},
                "model_version": {"type": "string"},
                "took_ms": {"type": "number"},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
            },
        },
        "Hit": {
            "type": "object",
            "required": ["rank", "score", "id", "payload"],
            "properties": {
                "rank": {"type": "integer"},
                "score": {"type": "number", "description": "cosine similarity"},
                "id": {"type": "string", "format": "uuid", "description": "point id "
                       "(UUIDv5 of the media id); playable at /media/{id}"},
                "media_id": {"type": "string", "nullable": True},
                "payload": {"type": "object", "description": "the point's payload (see "
                            "docs/daemon.md, What ends up in Qdrant)"},
            },
        },
        "Info": {
            "type": "object",
            "properties": {
                "ready": {"type": "boolean"}, "model_id": {"type": "string"},
                "model_version": {"type": "string"}, "collection": {"type": "string"},
                "points": {"type": "integer"},
                "modalities": {"type": "array", "items": {"type": "string"}},
                "limits": {"type": "object"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string", "enum": sorted({c for codes in ERROR_CODES.values()
                                                            for c in codes} | {
                    "method_not_allowed", "internal_error", "uri_not_allowed", "bad_uri",
                    "bad_range"})},
                "message": {"type": "string"},
            },
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    search_errors = {str(status): _error(f"{REASONS[status]}: {', '.join(codes)}")
                     for status, codes in ERROR_CODES.items()}
    text = {"description": "text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    probe = {"200": {"description": "ok"}, "503": {"description": "not ok"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "avindex daemon", "version": "1",
                 "description": "Cross-modal search over the index this daemon writes: a "
                 "sound finds videos, a video or image finds sounds."},
        "paths": {
            "/search": {"post": {
                "summary": "Search the other modality with an uploaded query",
                "operationId": "search",
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/SearchForm"},
                    "encoding": {"file": {"contentType": "audio/*, video/*, image/*, "
                                          "application/octet-stream"}}}}},
                "responses": {"200": _json("Ranked results", "SearchResult"), **search_errors},
            }},
            "/info": {"get": {"summary": "Model, collection and point count",
                              "operationId": "info",
                              "responses": {"200": _json("Ready", "Info"),
                                            "503": _json("Starting", "Info")}}},
            "/media/{id}": {"get": {
                "summary": "An indexed item's media file (file:// URIs in allowed roots)",
                "operationId": "media",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}},
                               {"name": "Range", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the file"},
                              "206": {"description": "a byte range"},
                              "403": _error("URI outside the allowed roots"),
                              "404": _error("no such point or no local file"),
                              "416": _error("bad range"), "503": _error("busy or starting")},
            }},
            "/": {"get": {"summary": "The search web page", "operationId": "page",
                          "responses": {"200": {"description": "HTML"}}}},
            "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi",
                                      "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/healthz": {"get": {"summary": "Liveness", "operationId": "healthz",
                                 "responses": probe}},
            "/readyz": {"get": {"summary": "Readiness", "operationId": "readyz",
                                "responses": probe}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": text}}},
        },
        "components": {"schemas": _schemas(settings)},
    }
