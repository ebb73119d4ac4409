"""The daemon's HTTP endpoints beyond the probes: search, the web page, media, OpenAPI.

`HttpApi` is mounted on the probe server (`avindex.daemon.http.server`) from the start and answers
503 `not_ready` until the daemon attaches a `Searcher` (model warmed up, collection checked).
Searches run in the server's request threads, never in the indexing loop, and at most
`http.search_concurrency` at once: more get 503 `overloaded` straight away instead of queueing
uploads in memory. Uploads are capped at `http.max_upload_bytes` before a byte is read.
`/media/<point id>` serves only indexed items whose `file://` uri lies inside
`media.allowed_roots` (checked again, symlinks and `..` resolved, on every request).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from avindex.daemon.http.multipart import FormPart, MultipartError, boundary_of, parse_form
from avindex.daemon.http.openapi import openapi_document
from avindex.daemon.http.server import Request, Response
from avindex.daemon.messages import Fetcher, ItemError
from avindex.daemon.metrics import Metrics
from avindex.daemon.search import Options, Searcher, SearchError
from avindex.daemon.settings import Settings

__all__ = ["WEB_FILES", "HttpApi"]

log = logging.getLogger(__name__)

WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript",
             "style.css": "text/css"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' "
    "data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16


class HttpApi:
    """Route callable for `ProbeServer`: answers its paths, None for any other."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.http = settings.http
        self._fetcher = Fetcher(settings.media.allowed_roots, [], settings.media.http_timeout_s,
                                settings.media.max_bytes)
        self._searcher: Searcher | None = None
        self._search_slots = threading.BoundedSemaphore(self.http.search_concurrency)
        self._media_slots = threading.BoundedSemaphore(self.http.media_concurrency)
        self._openapi = json.dumps(openapi_document(settings), indent=1).encode()
        self._web = resources.files("avindex.daemon.http") / "web"
        self._metrics = metrics
        get: dict[str, Callable[[Request], Response]] = {
            "/openapi.json": lambda r: Response(200, self._openapi, "application/json"),
            "/info": self._info,
        }
        if self.http.web_enabled:
            get.update({"/": lambda r: self._asset("index.html"),
                        "/index.html": lambda r: self._asset("index.html")})
            get.update({f"/web/{name}": (lambda r, n=name: self._asset(n)) for name in WEB_FILES})
        self._get = get

    def attach(self, searcher: Searcher) -> None:
        """The model and the collection are ready: start answering queries."""
        self._searcher = searcher

    def __call__(self, request: Request) -> Response | None:
        path, method = request.path, request.method
        if path == "/search":
            if method != "POST":
                return Response.error(405, "method_not_allowed", "use POST", Allow="POST")
            return self._search(request)
        if method not in ("GET", "HEAD"):
            known = path in self._get or path.startswith("/media/")
            return Response.error(405, "method_not_allowed", "use GET", Allow="GET, HEAD") \
                if known else None
        if path in self._get:
            return self._get[path](request)
        if path.startswith("/media/") and self.http.web_enabled:
            return self._media(request, path.removeprefix("/media/"))
        return None

    # ---------------------------------------------------------------------------- endpoints
    def _asset(self, name: str) -> Response:
        return Response(200, (self._web / name).read_bytes(), WEB_FILES[name], dict(PAGE_HEADERS))

    def _info(self, request: Request) -> Response:
        s = self._searcher
        limits = {"max_upload_bytes": self.http.max_upload_bytes, "max_top_k": self.http.max_top_k}
        if s is None:
            return Response.json(503, {"ready": False, "limits": limits})
        points = s.store.count(s.collection)
        return Response.json(200, {
            "ready": True, "model_id": s.model.model_id, "model_version": s.model_version,
            "collection": s.collection, "points": points, "modalities": list(s.model.graphs),
            "limits": limits})

    def _search(self, request: Request) -> Response:
        started = time.perf_counter()
        if self._searcher is None:
            response = Response.error(503, "not_ready", "the daemon is still starting (model "
                                      "warm-up, Qdrant); retry shortly", **{"Retry-After": "2"})
        elif not self._search_slots.acquire(blocking=False):
            response = Response.error(
                503, "overloaded", f"{self.http.search_concurrency} searches are running; "
                "retry shortly", **{"Retry-After": "1"})
        else:
            try:
                response = self._search_in_slot(request, self._searcher)
            finally:
                self._search_slots.release()
        code = json.loads(response.body).get("error", "ok") if response.status >= 400 else "ok"
        self._metrics.searches.labels(str(response.status), code).inc()
        self._metrics.search_seconds.observe(time.perf_counter() - started)
        return response

    def _search_in_slot(self, request: Request, searcher: Searcher) -> Response:
        try:
            form = self._read_form(request)
            options = Options(top_k=_int(form.get("top_k", "10"), "top_k"),
                              filters=tuple(form.getall("filter")),
                              fields=_fields(form.get("fields")))
            by, kind, media_id = form.get("by") or None, form.get("kind") or None, form.get("id")
            upload = form.file
            if upload is not None and upload.data:
                if kind is not None and kind not in ("audio", "video", "image"):
                    raise SearchError(400, "bad_request", "kind must be audio, video or image")
                answer = searcher.search_media(upload.data, kind or _kind_of(upload), by, options)
            elif media_id:
                answer = searcher.search_id(media_id, by, options)
            else:
                raise SearchError(400, "no_file", "send the query media as the multipart field "
                                  "'file' (non-empty), or an indexed media id as 'id'")
        except SearchError as exc:
            return Response.error(exc.status, exc.code, str(exc))
        return Response.json(200, answer)

    def _read_form(self, request: Request) -> _Form:
        boundary = boundary_of(request.header("Content-Type"))
        if boundary is None:
            raise SearchError(415, "unsupported_media_type", "send multipart/form-data")
        length = request.header("Content-Length")
        if not length.isdigit():
            raise SearchError(411, "length_required", "Content-Length is required (no chunked "
                              "uploads)")
        if int(length) > self.http.max_upload_bytes:
            raise SearchError(413, "too_large", f"upload is {length} bytes, the limit is "
                              f"{self.http.max_upload_bytes} (http.max_upload_bytes)")
        try:
            body = request.body.read(int(length))
        except TimeoutError as exc:
            raise SearchError(408, "timeout", "upload too slow") from exc
        if len(body) != int(length):
            raise SearchError(400, "bad_request", "upload ended before Content-Length")
        try:
            return _Form(parse_form(body, boundary))
        except MultipartError as exc:
            raise SearchError(400, "bad_request", f"malformed multipart body: {exc}") from exc

    def _media(self, request: Request, pid: str) -> Response:
        if self._searcher is None:
            return Response.error(503, "not_ready", "the daemon is still starting")
        try:
            path = self._searcher.media_path(pid, self._fetcher.check_file)
        except SearchError as exc:
            return Response.error(exc.status, exc.code, str(exc))
        except ItemError as exc:
            status = 403 if exc.reason in ("uri_not_allowed", "bad_uri") else 404
            return Response.error(status, exc.reason, str(exc))
        if not self._media_slots.acquire(blocking=False):
            return Response.error(503, "overloaded", "too many media downloads; retry shortly",
                                  **{"Retry-After": "1"})
        try:
            return _file_response(path, request.header("Range"), self._media_slots.release)
        except BaseException:
            self._media_slots.release()
            raise


class _Form:
    """Parsed form fields: the first part named 'file' and text fields by name."""

    def __init__(self, parts: list[FormPart]) -> None:
        self.file = next((p for p in parts if p.name == "file"), None)
        self._text = [(p.name, p.text) for p in parts if p.name != "file"]

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v.strip() for n, v in self._text if n == name), default)

    def getall(self, name: str) -> list[str]:
        return [v.strip() for n, v in self._text if n == name and v.strip()]


def _int(text: str | None, name: str) -> int:
    try:
        return int(text or "")
    except ValueError as exc:
        raise SearchError(400, "bad_request", f"{name} must be an integer") from exc


def _fields(text: str | None) -> tuple[str, ...] | None:
    return tuple(f.strip() for f in text.split(",") if f.strip()) if text else None


def _kind_of(part: FormPart) -> str | None:
    """audio/video/image from the part's content type or file name; None: decide by content."""
    guess = part.content_type or mimetypes.guess_type(part.filename or "")[0] or ""
    major = guess.split("/", 1)[0].lower()
    return major if major in ("audio", "video", "image") else None


def _file_response(path: Path, range_header: str, release: Callable[[], None]) -> Response:
    """The file, or one byte range of it (what <video> seeking asks for), streamed."""
    size = path.stat().st_size
    start, end, status = 0, size - 1, 200
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=300",
               "X-Content-Type-Options": "nosniff"}
    match = RANGE.match(range_header.strip()) if range_header else None
    if range_header and match is None:
        release()
        return Response.error(416, "bad_range", "only one bytes=START-END range is supported",
                              **{"Content-Range": f"bytes */{size}"})
    if match:
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        elif last:
            start = max(0, size - int(last))
        if start > end or start >= size:
            release()
            return Response.error(416, "bad_range", "range outside the file",
                                  **{"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Response(status, _FileBody(path, start, end - start + 1, release), content_type,
                    headers, length=end - start + 1)


class _FileBody:
    """A byte range of a file in chunks; `close()` (called by the server after sending, or
    when the request was HEAD) gives the download slot back exactly once."""

    def __init__(self, path: Path, start: int, length: int, release: Callable[[], None]) -> None:
        self.path, self.start, self.length = path, start, length
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        left = self.length
        with open(self.path, "rb") as handle:
            handle.seek(self.start)
            while left > 0 and (block := handle.read(min(CHUNK, left))):
                left -= len(block)
                yield block

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()
