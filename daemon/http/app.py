"""The Starlette application: every route comes from one table, `Api.endpoints()` (a list of
`endpoint.Endpoint`), which the OpenAPI document (`openapi.py`) is built from too, so paths,
methods, statuses and error codes cannot drift apart.

Order of checks on a request: Host (400 `bad_host`, probes exempt) -> API key (401, where the
endpoint needs one) -> readiness (503 `not_ready`) -> an upload slot -> the declared size (411,
413) -> the body within `http.request_timeout_s` (408) -> parsing (400/415) -> a search slot
(503 `overloaded`) -> the search in the worker pool (404/422/...).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from avindex.daemon.health import Health
from avindex.daemon.http.auth import CHALLENGE, HostCheck, KeyRing, presented_key
from avindex.daemon.http.body import FormReader, boundary_of, declared_length, read_body
from avindex.daemon.http.endpoint import Endpoint
from avindex.daemon.http.errors import ApiError, error_response
from avindex.daemon.http.openapi import openapi_json
from avindex.daemon.http.queries import Limits, SearchCall, parse_batch, parse_form, parse_search
from avindex.daemon.http.search_api import SearchService, Slots
from avindex.daemon.messages import Fetcher, ItemError
from avindex.daemon.metrics import Metrics
from avindex.daemon.search import SearchError
from avindex.daemon.settings import Settings

__all__ = ["PAGE_HEADERS", "WEB_FILES", "Api"]

log = logging.getLogger(__name__)

WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript",
             "style.css": "text/css"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' "
    "data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
JSON_OVERHEAD = 65536
MAX_HEADER_BYTES = 16384
# Media errors say what is wrong without the server path behind a point.
MEDIA_REFUSALS = {"uri_not_allowed": (403, "the stored file lies outside media.allowed_roots"),
                  "bad_uri": (404, "the stored uri is not a usable file:// URI"),
                  "not_found": (404, "the stored file is gone")}

class Api:
    """The routes of one server (the daemon or `avindex serve`): searches go to `service`."""

    def __init__(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self.settings, self.http = settings, settings.http
        self.health, self.metrics = health, metrics
        media = settings.media
        self.service = SearchService(self.http.search_concurrency, Fetcher(
            media.allowed_roots, media.allowed_hosts, media.http_timeout_s,
            min(media.max_bytes, self.http.max_upload_bytes)))
        self._media_roots = Fetcher(media.allowed_roots, [], media.http_timeout_s,
                                    media.max_bytes)
        self.keys = KeyRing(self.http.api_keys)
        self.hosts = HostCheck(self.http.allowed_hosts)
        self.uploads = Slots(self.http.upload_concurrency, "uploads")
        self.media_slots = Slots(self.http.media_concurrency, "media downloads")
        self.limits = Limits(self.http.max_top_k, self.http.max_offset,
                             self.http.max_upload_bytes, self.http.max_batch)
        self._web = resources.files("avindex.daemon.http") / "web"
        self._openapi: bytes | None = None

    def attach(self, searcher) -> None:
        """The model and the collection are ready: start answering queries."""
        self.service.searcher = searcher

    # ------------------------------------------------------------------------------ table
    def endpoints(self, *, probes: bool = True, api: bool = True) -> list[Endpoint]:
        search_errors = {
            400: ("bad_request", "bad_filter", "no_file", "bad_uri", "unsupported_uri_scheme"),
            403: ("uri_not_allowed",),
            404: ("not_found",), 408: ("timeout",), 411: ("length_required",),
            413: ("too_large",), 415: ("unsupported_media_type",),
            422: ("undecodable", "wrong_modality"), 502: ("unreachable", "http_error"),
            503: ("not_ready", "overloaded")}
        out: list[Endpoint] = []
        if probes:
            out += [
                Endpoint("/healthz", "GET", "healthz", "Liveness: the process's own loop",
                         self._healthz, ok={200: "application/json", 503: "application/json"},
                         probe=True, schema="Probe"),
                Endpoint("/readyz", "GET", "readyz", "Readiness: warmed up, dependencies "
                         "reachable", self._readyz,
                         ok={200: "application/json", 503: "application/json"}, probe=True,
                         schema="Probe"),
                Endpoint("/metrics", "GET", "metrics", "Prometheus metrics", self._metrics,
                         ok={200: "text/plain"}, probe=True)]
        if not api:
            return out
        out += [
            Endpoint("/v1/search", "POST", "search", "Search the other modality with a query "
                     "(JSON, or a multipart upload)", self._search, errors=search_errors,
                     auth=True, aliases=("/search",), body="search", schema="SearchResult"),
            Endpoint("/v1/search/batch", "POST", "searchBatch", "Several searches in one "
                     "request, answered in order or refused as a whole", self._batch,
                     errors={s: c for s, c in search_errors.items() if s != 415} | {
                         415: ("unsupported_media_type",)},
                     auth=True, body="batch", schema="BatchResult"),
            Endpoint("/v1/info", "GET", "info", "Model, collection and point count",
                     self._info, ok={200: "application/json", 503: "application/json"},
                     auth=True, aliases=("/info",), schema="Info"),
            Endpoint("/openapi.json", "GET", "openapi", "This document", self._openapi_doc),
        ]
        if self.http.web_enabled:
            out += [
                Endpoint("/v1/media/{id}", "GET", "media", "An indexed item's media file "
                         "(file:// URIs in media.allowed_roots), byte ranges for seeking",
                         self._media, ok={200: "application/octet-stream",
                                          206: "application/octet-stream"},
                         errors={403: ("uri_not_allowed",), 404: ("not_found",),
                                 416: ("bad_range",), 503: ("not_ready", "overloaded")},
                         auth=True, aliases=("/media/{id}",)),
                Endpoint("/", "GET", "page", "The search web page", self._page,
                         ok={200: "text/html"}, aliases=("/index.html",)),
                Endpoint("/web/{name}", "GET", "asset", "The page's script and style sheet",
                         self._asset, ok={200: "text/plain"}, errors={404: ("not_found",)}),
            ]
        return out

    def app(self, *, probes: bool = True, api: bool = True) -> Starlette:
        routes = []
        for endpoint in self.endpoints(probes=probes, api=api):
            for path in (endpoint.path, *endpoint.aliases):
                routes.append(Route(path, self._wrap(endpoint, path), methods=[endpoint.method],
                                    name=f"{endpoint.name}:{path}"))
        return Starlette(routes=routes, exception_handlers={
            HTTPException: self._http_exception, Exception: self._crash})

    # -------------------------------------------------------------------- cross-cutting
    def _wrap(self, endpoint: Endpoint, path: str) -> _Asgi:
        async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope, receive)
            started = time.perf_counter()
            response = await self._answer(endpoint, request)
            code = _code_of(response)
            if endpoint.body is not None:
                self.metrics.searches.labels(str(response.status_code), code).inc()
                self.metrics.search_seconds.observe(time.perf_counter() - started)
            self.metrics.http_responses.labels(endpoint.path, str(response.status_code), code).inc()
            await response(scope, receive, send)

        return _Asgi(asgi)

    async def _answer(self, endpoint: Endpoint, request: Request) -> Response:
        try:
            _check_protocol(request)
            if not endpoint.probe and not self.hosts.accepts(request.headers.get("host")):
                raise ApiError(400, "bad_host", "the Host header is not in http.allowed_hosts")
            if endpoint.auth and not self.keys.accepts(presented_key(
                    request.headers.get("authorization"), request.headers.get("api-key"))):
                raise ApiError(401, "unauthorized", "send an API key: 'Authorization: Bearer "
                               "KEY' or 'api-key: KEY'", {"WWW-Authenticate": CHALLENGE})
            return await endpoint.handler(request)
        except ApiError as exc:
            # a POST answered before its body was read to the end cannot keep the connection
            return error_response(exc.status, exc.code, str(exc), exc.headers,
                                  close=request.method == "POST")
        except Exception:  # a bug in one request must not take the server down
            log.exception("http %s %s failed", request.method, endpoint.path)
            return error_response(500, "internal_error", "unexpected error (see the log)",
                                  close=True)

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 405:
            return error_response(405, "method_not_allowed", "method not allowed here",
                                  dict(getattr(exc, "headers", None) or {}), close=True)
        if status == 404:
            return error_response(404, "not_found", "no such endpoint",
                                  close=request.method == "POST")
        return error_response(status, "bad_request", str(getattr(exc, "detail", "")),
                              close=True)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.error("http %s %s failed: %s", request.method, request.url.path, exc)
        return error_response(500, "internal_error", "unexpected error (see the log)", close=True)

    # --------------------------------------------------------------------------- probes
    async def _healthz(self, request: Request) -> Response:
        ok, detail = self.health.liveness()
        return JSONResponse({"ok": ok, **detail}, 200 if ok else 503)

    async def _readyz(self, request: Request) -> Response:
        ok, detail = self.health.readiness()
        return JSONResponse({"ok": ok, **detail}, 200 if ok else 503)

    async def _metrics(self, request: Request) -> Response:
        self.metrics.ready.set(1 if self.health.readiness()[0] else 0)
        self.metrics.healthy.set(1 if self.health.liveness()[0] else 0)
        return Response(generate_latest(self.metrics.registry), 200,
                        media_type=CONTENT_TYPE_LATEST)

    # --------------------------------------------------------------------------- search
    async def _receive(self, request: Request, *, form: bool) -> tuple[bytes, FormReader | None]:
        """The body (and its form, parsed as it streams in), holding an upload slot."""
        ctype = request.headers.get("content-type", "")
        reader = None
        if form:
            boundary = boundary_of(ctype)
            if boundary is None:
                raise ApiError(415, "unsupported_media_type", "send application/json or "
                               "multipart/form-data")
            reader = FormReader(boundary)
        limit = self.http.max_upload_bytes
        if reader is None:
            limit = (limit + 2) // 3 * 4 * self.limits.max_batch + JSON_OVERHEAD \
                if request.url.path.endswith("/batch") else (limit + 2) // 3 * 4 + JSON_OVERHEAD
        length = declared_length(request, limit)
        self.uploads.take()
        try:
            body = await read_body(request, length, self.http.request_timeout_s,
                                   reader.feed if reader is not None else None)
        finally:
            self.uploads.give()
        return body, reader

    async def _search(self, request: Request) -> Response:
        self.service.ready()
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype == "application/json":
            body, _ = await self._receive(request, form=False)
            call: SearchCall = await run_in_threadpool(parse_search, body, self.limits)
        else:
            _, reader = await self._receive(request, form=True)
            call = parse_form(reader.form(), self.limits)
        answer = await self.service.run(lambda s: self.service.execute(s, call))
        return JSONResponse(answer)

    async def _batch(self, request: Request) -> Response:
        self.service.ready()
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type", "send application/json")
        body, _ = await self._receive(request, form=False)
        calls = await run_in_threadpool(parse_batch, body, self.limits)
        started = time.perf_counter()

        def all_of(searcher) -> list[dict[str, Any]]:
            answers = []
            for i, call in enumerate(calls):
                try:
                    answers.append(self.service.execute(searcher, call))
                except ApiError as exc:
                    raise ApiError(exc.status, exc.code, f"searches[{i}]: {exc}") from exc
            return answers

        answers = await self.service.run(all_of)
        return JSONResponse({"answers": answers,
                             "took_ms": round(1000 * (time.perf_counter() - started), 1)})

    async def _info(self, request: Request) -> Response:
        limits = {"max_upload_bytes": self.http.max_upload_bytes,
                  "max_top_k": self.http.max_top_k, "max_offset": self.http.max_offset,
                  "max_batch": self.http.max_batch}
        s = self.service.searcher
        if s is None:
            return JSONResponse({"ready": False, "limits": limits}, 503)
        points = await run_in_threadpool(lambda: s.store.count(s.collection))
        return JSONResponse({
            "ready": True, "model_id": s.model.model_id, "model_version": s.model_version,
            "collection": s.collection, "points": points, "modalities": list(s.model.graphs),
            "limits": limits, "auth": self.keys.enabled})

    # ---------------------------------------------------------------------------- media
    async def _media(self, request: Request) -> Response:
        searcher = self.service.ready()
        pid = request.path_params["id"]
        try:
            path = await run_in_threadpool(searcher.media_path, pid,
                                           self._media_roots.check_file)
        except SearchError as exc:
            raise ApiError(exc.status, exc.code, "no indexed local file for this point") \
                from exc
        except ItemError as exc:
            status, message = MEDIA_REFUSALS.get(exc.reason, (404, "the stored file is gone"))
            raise ApiError(status, exc.reason if status == 403 else "not_found", message) \
                from exc
        size = path.stat().st_size
        range_header = request.headers.get("range")
        if range_header is not None:
            _check_range(range_header, size)
        self.media_slots.take()
        return _SlotFileResponse(path, self.media_slots.give, headers={
            "Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})

    # ----------------------------------------------------------------------------- page
    async def _page(self, request: Request) -> Response:
        return self._file("index.html")

    async def _asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in WEB_FILES or name == "index.html":
            raise ApiError(404, "not_found", "no such file")
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response((self._web / name).read_bytes(), 200, dict(PAGE_HEADERS),
                        media_type=WEB_FILES[name])

    async def _openapi_doc(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = openapi_json(self.endpoints(), self.http)
        return Response(self._openapi, 200, media_type="application/json")


class _Asgi:
    """A plain ASGI app for `Route` (a bare function would be taken for a request handler)."""

    def __init__(self, call: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send)


def _code_of(response: Response) -> str:
    if response.status_code < 400 or not isinstance(response, JSONResponse):
        return "ok" if response.status_code < 400 else ""
    try:
        return str(json.loads(response.body).get("error", ""))
    except (ValueError, AttributeError):
        return ""


def _check_protocol(request: Request) -> None:
    """HTTP/1.0 or 1.1, and at most MAX_HEADER_BYTES of headers (h11 bounds only headers that
    arrive in pieces)."""
    if request.scope.get("http_version") not in ("1.0", "1.1"):
        raise ApiError(400, "bad_request", "HTTP/1.0 or HTTP/1.1 only")
    size = sum(len(k) + len(v) + 4 for k, v in request.scope["headers"])
    if size > MAX_HEADER_BYTES:
        raise ApiError(431, "headers_too_large", f"request headers over {MAX_HEADER_BYTES} "
                       "bytes")


def _check_range(header: str, size: int) -> None:
    """One `bytes=START-END` range inside the file, else 416 `bad_range` (what <video>
    seeking sends is always one range)."""
    match = RANGE.fullmatch(header.strip())
    refusal = ApiError(416, "bad_range", "send one bytes=START-END range inside the file",
                       {"Content-Range": f"bytes */{size}"})
    if match is None or match.groups() == ("", ""):
        raise refusal
    first, last = match.groups()
    if first and (int(first) >= size or (last and int(last) < int(first))):
        raise refusal
    if not first and int(last) == 0:
        raise refusal


class _SlotFileResponse(FileResponse):
    """A file (or a range of it) that gives its download slot back once sent, or abandoned."""

    def __init__(self, path: Path, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._release: Callable[[], None] | None = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
