"""The daemon's threaded HTTP server: /metrics, /healthz and /readyz, plus mounted routes.

Started first, before the model loads, so that an orchestrator gets "alive, not ready" answers
during a slow start (warm-up, Qdrant or the broker not reachable yet) instead of refused
connections that look like a crash. Other endpoints (search, the web page, media) are a route
callable (`avindex.daemon.http.api.HttpApi`) given a small `Request` and answering a `Response`,
or None for "not mine"; each request runs in its own thread, never in the indexing loop.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from avindex.daemon.health import Health
from avindex.daemon.metrics import Metrics

__all__ = ["ProbeServer", "Request", "Response", "Route"]

log = logging.getLogger(__name__)

PROBE_PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass
class Request:
    """What a route needs to know about a request; the body is read by the route (bounded)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: BinaryIO

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


@dataclass
class Response:
    """A status, headers and a body (bytes, or chunks with a known `length` for files)."""

    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None

    @classmethod
    def json(cls, status: int, value: Any, **headers: str) -> Response:
        return cls(status, json.dumps(value, default=str).encode(), "application/json",
                   dict(headers))

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> Response:
        """The one error shape of every endpoint: `{"error": code, "message": text}`."""
        return cls.json(status, {"error": code, "message": message}, **headers)


Route = Callable[[Request], Response | None]


class ProbeServer:
    """Serves the probes (and `routes`) in a background thread; `port` is the bound port."""

    def __init__(self, host: str, port: int, health: Health, metrics: Metrics,
                 routes: Route | None = None, request_timeout_s: float = 30.0) -> None:
        self.health, self.metrics = health, metrics
        self.routes = routes
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s  # a stalled client cannot hold a thread forever
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                parts = urllib.parse.urlsplit(self.path)
                if parts.path in PROBE_PATHS and method in ("GET", "HEAD"):
                    response = server._probe(parts.path)
                else:
                    request = Request(method, parts.path, urllib.parse.parse_qs(parts.query),
                                      self.headers, self.rfile)
                    response = server._route(request)
                self._send(response, head=method == "HEAD")

            def _send(self, response: Response, head: bool) -> None:
                body = response.body
                length = len(body) if isinstance(body, bytes) else response.length
                try:
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    if length is not None:
                        self.send_header("Content-Length", str(length))
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                    if response.status >= 400 and self.command == "POST":
                        # An unread request body would be taken for the next request.
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    if head:
                        return
                    if isinstance(body, bytes):
                        self.wfile.write(body)
                    else:
                        for chunk in body:
                            self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):  # the client went away
                    self.close_connection = True
                finally:
                    close = getattr(body, "close", None)
                    if close is not None:
                        close()

            def log_message(self, format, *args) -> None:  # probes every few seconds: quiet
                log.debug("http " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="probes",
                                        daemon=True)

    def _probe(self, path: str) -> Response:
        if path == "/metrics":
            self._refresh_gauges()
            return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        ok, detail = self.health.liveness() if path == "/healthz" else self.health.readiness()
        return Response.json(200 if ok else 503, {"ok": ok, **detail})

    def _route(self, request: Request) -> Response:
        response = None
        if self.routes is not None:
            try:
                response = self.routes(request)
            except Exception:  # a bug in one request must not kill the server thread
                log.exception("http %s %s failed", request.method, request.path)
                return Response.error(500, "internal_error", "unexpected error (see the log)")
        return response or Response(404, b"not found\n", "text/plain")

    def _refresh_gauges(self) -> None:
        self.metrics.ready.set(1 if self.health.readiness()[0] else 0)
        self.metrics.healthy.set(1 if self.health.liveness()[0] else 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
