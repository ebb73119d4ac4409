"""A small threaded HTTP server for /metrics, /healthz and /readyz.

Started first, before the model loads, so that an orchestrator gets "alive, not ready" answers
during a slow start (warm-up, Qdrant or the broker not reachable yet) instead of refused
connections that look like a crash.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from avindex.daemon.health import Health
from avindex.daemon.metrics import Metrics

__all__ = ["ProbeServer"]

log = logging.getLogger(__name__)


class ProbeServer:
    """Serves the probes in a background thread; `port` is the bound port (after start)."""

    def __init__(self, host: str, port: int, health: Health, metrics: Metrics) -> None:
        self.health, self.metrics = health, metrics
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    server._refresh_gauges()
                    self._send(200, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, detail = (server.health.liveness() if path == "/healthz"
                                  else server.health.readiness())
                    body = json.dumps({"ok": ok, **detail}, default=str).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args) -> None:  # probes every few seconds: quiet
                log.debug("http " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="probes",
                                        daemon=True)

    def _refresh_gauges(self) -> None:
        self.metrics.ready.set(1 if self.health.readiness()[0] else 0)
        self.metrics.healthy.set(1 if self.health.liveness()[0] else 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
